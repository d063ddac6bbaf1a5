// The saga state machine as pure logic: (state, trigger) -> (events, commands).
//
// Decide() never mutates the state it is given and reads no clock: `now` and the random source
// are arguments. The caller appends the returned events to the history (durably), folds them
// into the state with Apply(), and only then carries out the commands. Replaying a saga's
// history through Apply() rebuilds its state exactly.
//
// Semantics (README "Semantics"):
// - Steps start when every step they run after has succeeded; independent steps run at once.
// - A transient failure (a retryable code) is retried with exponential backoff and jitter until
//   the policy's attempts are spent; then the step fails for good with an unknown outcome.
// - When a forward step fails for good, or an abort is requested, in-flight calls are awaited,
//   then every step that succeeded or whose outcome is unknown is compensated, in reverse
//   dependency order. A step that failed with a definite business error is not compensated.
// - A compensation that cannot complete within its policy parks the saga in FAILED; a retry
//   request resumes it.
// Thread-compatible: free functions over values.
#pragma once

#include <vector>

#include "absl/random/bit_gen_ref.h"
#include "absl/status/status.h"
#include "absl/time/time.h"
#include "orchestrator/definition/model.h"
#include "orchestrator/engine/types.h"

namespace saga::engine {

struct Trigger {
  enum class Kind {
    kStart,   // a new saga
    kResume,  // a saga loaded from its history after a restart or takeover
    kResult,  // a call finished
    kTimer,   // a wake-up (a retry may be due)
    kAbort,
    kRetry,
  };
  Kind kind = Kind::kTimer;
  // kResult:
  int step = -1;
  CallKind call = CallKind::kAction;
  int attempt = 0;
  absl::Status status;
  nlohmann::json output;
  // kAbort:
  std::string reason;
};

struct Command {
  enum class Kind { kInvoke };
  Kind kind = Kind::kInvoke;
  int step = -1;
  CallKind call = CallKind::kAction;
  int attempt = 0;
};

struct Decision {
  std::vector<Event> events;
  std::vector<Command> commands;
  // The next time the saga needs a kTimer trigger; InfiniteFuture for none.
  absl::Time wake_at = absl::InfiniteFuture();
};

// A fresh state for `def` (every step pending).
SagaState NewState(const definition::Definition& def);

// Folds one event into the state.
void Apply(const definition::Definition& def, SagaState& state, const Event& event);

// Decides what happens next. Returned events carry seq numbers following state.last_seq.
Decision Decide(const definition::Definition& def, const SagaState& state, const Trigger& trigger,
                absl::Time now, absl::BitGenRef rng);

// The backoff before attempt `next_attempt` (>= 2) under `policy`, jitter applied.
absl::Duration Backoff(const definition::RetryPolicy& policy, int next_attempt,
                       absl::BitGenRef rng);

}  // namespace saga::engine
