// The saga simulator behind `sagactl simulate`: runs a compiled workflow through the real engine
// (engine::Decide / engine::Apply) against scripted participants and a virtual clock, with no
// server, database or network, and records what happened.
//
// - Script: per step, the outcomes of successive forward attempts and, separately, of
//   successive compensation attempts ("the first 2 attempts answer UNAVAILABLE, then OK").
//   Anything not scripted succeeds with a synthetic response built from the method's output
//   descriptor (strings "<field>-<step>-sim", numbers 1, bools true), rendered to JSON the way
//   the gRPC invoker renders real responses, so later templates resolve.
// - Every call renders its request template for real (saga id "sim-saga", idempotency keys
//   "sim-saga/<step>/action|compensation") and checks that it fits the method's input message,
//   so template mistakes surface as the runtime would see them: INVALID_ARGUMENT, no call made.
// - The virtual clock starts at the Unix epoch (so the engine's "retry_at_us" details read as
//   microseconds since the start). A call takes no time unless it is scripted to time out,
//   which takes the call's timeout and answers DEADLINE_EXCEEDED. Backoff jitter comes from a
//   std::mt19937_64 seeded with Options::seed: the same inputs give the same trace.
//
// Errors are INVALID_ARGUMENT with a one-line message naming the flag and value, e.g.
//   "--fail chrage=UNAVAILABLE: unknown step 'chrage' (did you mean 'charge'? steps: ...)".
// Thread-compatible: free functions over values; a Definition may be shared between threads.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "nlohmann/json.hpp"
#include "orchestrator/definition/model.h"
#include "orchestrator/engine/types.h"

namespace saga::sim {

inline constexpr std::string_view kSagaId = "sim-saga";
inline constexpr int kDefaultMaxEvents = 10'000;

// One scripted answer, used by `count` successive attempts (0: by every remaining attempt).
struct Outcome {
  enum class Kind {
    kFail,     // the participant answers `code` at once
    kTimeout,  // no answer: DEADLINE_EXCEEDED once the call's timeout has passed
  };
  Kind kind = Kind::kFail;
  absl::StatusCode code = absl::StatusCode::kUnknown;
  int count = 0;
  // The flag as written, e.g. "--fail charge=UNAVAILABLEx2", for notes and errors.
  std::string source;
};

// The scripted outcomes of one step's calls, consumed in order, one per attempt. When a list
// is used up, further attempts succeed.
struct StepScript {
  std::vector<Outcome> action;
  std::vector<Outcome> compensation;
};

struct Script {
  // By step name; steps not listed always succeed.
  std::map<std::string, StepScript, std::less<>> steps;
  // Non-empty: an abort request arrives right after this step's forward call succeeds.
  std::string abort_after;
};

// One scripting flag as written on the command line or in a scenario file.
struct ScriptFlag {
  enum class Kind {
    kFail,         // --fail STEP=CODE[xN]
    kTimeout,      // --timeout STEP[xN]
    kCompFail,     // --comp-fail STEP=CODE[xN]
    kCompTimeout,  // --comp-timeout STEP[xN]
    kAbortAfter,   // --abort-after STEP
  };
  Kind kind = Kind::kFail;
  std::string value;
};

// "--fail", "--timeout", ...
std::string_view FlagName(ScriptFlag::Kind kind);

// Parses a gRPC code name ("UNAVAILABLE", case-insensitive; "OK" is refused). False if unknown.
bool ParseCodeName(std::string_view name, absl::StatusCode* code);

// Builds a Script from flags, in the order given (a step's outcomes are consumed in that order).
// INVALID_ARGUMENT for an unknown step, a compensation flag on a step without compensation, an
// unknown or OK code, a bad count, an entry that can never be reached (it follows an entry that
// answers every attempt), or a second --abort-after.
absl::StatusOr<Script> BuildScript(const definition::Definition& def,
                                   const std::vector<ScriptFlag>& flags);

struct Options {
  // The saga input: a JSON object.
  nlohmann::json input = nlohmann::json::object();
  // The saga's business key (`${saga.idempotency_key}`); empty as when started without --key.
  std::string saga_key;
  Script script;
  uint64_t seed = 1;
  // The run stops (and says so) after this many events.
  int max_events = kDefaultMaxEvents;
};

// One recorded event and the virtual time it was recorded at.
struct TraceEvent {
  engine::Event event;
  absl::Duration at;
};

// One call the engine asked for (an attempt of a step's action or compensation).
struct SentCall {
  int64_t seq = 0;  // the STEP_STARTED / COMPENSATION_STARTED event that recorded it
  int step = -1;
  engine::CallKind call = engine::CallKind::kAction;
  int attempt = 0;
  std::string method;
  std::string idempotency_key;
  absl::Duration at;
  // The rendered request; null if it could not be built (then `error` says why).
  nlohmann::json request;
  std::string error;
  // What the script made of it: "OK", "UNAVAILABLE (scripted)", "timeout", "not sent".
  std::string outcome;
};

struct Result {
  std::vector<TraceEvent> events;
  std::vector<SentCall> calls;
  engine::SagaStatus status = engine::SagaStatus::kRunning;
  std::string error;  // why the saga compensated or failed
  int compensations = 0;
  absl::Duration elapsed;
  // True if the run was cut short (event limit, or nothing left to wait for).
  bool stopped = false;
  std::string stop_reason;
  // Remarks for the author: unused script entries, an abort that never came.
  std::vector<std::string> notes;
};

// Runs the saga to the end (COMPLETED, COMPENSATED or FAILED) or until stopped.
// INVALID_ARGUMENT if the input is not a JSON object.
absl::StatusOr<Result> Simulate(const definition::Definition& def, const Options& options);

// The synthetic successful response of `method`'s output message for `step` (exported for
// tests).
nlohmann::json SyntheticResponse(const google::protobuf::MethodDescriptor& method,
                                 std::string_view step);

// The human trace: one line per event at virtual time, then notes and a "final: ..." line.
std::string FormatTrace(const definition::Definition& def, const Result& result);

// The JSON document of `-o json`: events, calls (requests) and the final status.
nlohmann::json TraceJson(const definition::Definition& def, const Options& options,
                         const Result& result);

}  // namespace saga::sim
