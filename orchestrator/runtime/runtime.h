// The runtime drives sagas: it owns the sagas this replica runs (in memory, one actor per
// saga), feeds triggers (call results, timers, operator requests) to the engine, records each
// decision durably through the store before acting on it, then makes the calls the decision
// asks for. It claims due sagas (new, released, or abandoned by a dead replica) and keeps the
// leases of those it owns.
//
// Threads: a small executor runs engine decisions and command execution (a saga's triggers are
// handled one at a time, in order); a timer thread; a claim thread; a lease thread. Store
// commits and participant calls are asynchronous; their callbacks post back to the executor.
//
// Thread-safe: every public method may be called from any thread.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "nlohmann/json.hpp"
#include "orchestrator/common/clock.h"
#include "orchestrator/engine/engine.h"
#include "orchestrator/invoke/invoker.h"
#include "orchestrator/runtime/executor.h"
#include "orchestrator/runtime/registry.h"
#include "orchestrator/store/store.h"

namespace saga::runtime {

struct RuntimeOptions {
  // Unique per process; written as the owner of the sagas it runs.
  std::string owner_id;
  absl::Duration lease = absl::Seconds(10);
  absl::Duration renew_interval = absl::Seconds(3);
  // How often due sagas are looked for without a wake-up hint.
  absl::Duration poll_interval = absl::Seconds(1);
  // Sagas held in memory at most; beyond it, no more are claimed.
  int max_active = 20000;
  int claim_batch = 200;
  int workers = 2;
};

struct StartRequest {
  DefinitionPtr definition;
  nlohmann::json input;
  // Canonical JSON text of `input` and its hash.
  std::string input_json;
  std::string input_hash;
  std::string idempotency_key;
  std::string traceparent;
};

// Counters for metrics. Monotonic unless noted.
struct RuntimeStats {
  std::atomic<int64_t> sagas_started{0};
  std::atomic<int64_t> sagas_completed{0};
  std::atomic<int64_t> sagas_compensated{0};
  std::atomic<int64_t> sagas_failed{0};
  std::atomic<int64_t> calls{0};
  std::atomic<int64_t> call_failures{0};
  std::atomic<int64_t> compensations{0};
  std::atomic<int64_t> claims{0};
  std::atomic<int64_t> ownership_lost{0};
  std::atomic<int64_t> active{0};  // gauge
};

// ---- ops: metrics observer hook ----
// Told what happens, for metrics (server/ops_metrics.h implements it). Called on runtime and
// gRPC threads; every method must be thread-safe, quick and non-blocking.
class RuntimeObserver {
 public:
  enum class AttemptResult { kOk, kRetryable, kBusinessError };
  virtual ~RuntimeObserver() = default;
  // A new saga was durably recorded by this replica.
  virtual void OnSagaStarted(const definition::Definition& def) = 0;
  // A saga reached COMPLETED, COMPENSATED or FAILED; `age` is the time since it was created.
  virtual void OnSagaFinished(const definition::Definition& def, engine::SagaStatus status,
                              absl::Duration age) = 0;
  // A participant call (forward action or compensation) answered or failed.
  virtual void OnAttemptFinished(const definition::Definition& def,
                                 const definition::StepSpec& step, engine::CallKind call,
                                 AttemptResult result, absl::Duration latency) = 0;
  // The first attempt of a step's compensation is being sent.
  virtual void OnCompensationStarted(const definition::Definition& def,
                                     const definition::StepSpec& step) = 0;
  // Due sagas (with an expired or released lease) were claimed from the database.
  virtual void OnTakeovers(int count) = 0;
};
// ---- end ops

class Runtime {
 public:
  using EventListener =
      std::function<void(const std::string& saga_id, const std::vector<engine::Event>& events)>;

  Runtime(RuntimeOptions options, store::Store* store, invoke::Invoker* invoker,
          DefinitionRegistry* registry, const common::Clock* clock);
  ~Runtime();
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

  // Starts the background threads.
  void Start();
  // Stops claiming, lets calls in flight finish (up to `drain`), then gives up the leases so
  // that another replica resumes at once. Idempotent.
  void Stop(absl::Duration drain);

  // Creates a saga (or finds the one with the same idempotency key) and runs it. `done` runs
  // once the saga is durably recorded. kUnavailable while stopping.
  void StartSaga(StartRequest request,
                 absl::AnyInvocable<void(absl::StatusOr<store::StartResult>) &&> done);

  // An operator request (abort, retry) was recorded for this saga.
  void Poke(const std::string& saga_id);
  // Look for due sagas now.
  void Wake();

  // Called after events are committed (on a runtime thread; must not block).
  void SetEventListener(EventListener listener) { listener_ = std::move(listener); }
  // ops: metrics hook; set before Start(). May be null. Not owned.
  void SetObserver(RuntimeObserver* observer) { observer_ = observer; }

  // Whether the saga is held in this replica's memory: then every event it records is passed
  // to the event listener as it commits.
  bool RunsHere(const std::string& saga_id);

  bool accepting() const { return !stopping_.load(); }
  const RuntimeStats& stats() const { return stats_; }
  const RuntimeOptions& options() const { return options_; }

 private:
  struct Actor;
  using ActorPtr = std::shared_ptr<Actor>;

  void Post(const ActorPtr& actor, engine::Trigger trigger);
  void Drain(const ActorPtr& actor);
  void AfterCommit(const ActorPtr& actor, absl::Status status, engine::Decision decision,
                   bool release);
  void Execute(const ActorPtr& actor, const engine::Decision& decision);
  void Invoke(const ActorPtr& actor, const engine::Command& command);
  void Drop(const ActorPtr& actor, const absl::Status& why);
  void Adopt(store::ClaimedSaga claimed);
  ActorPtr Find(const std::string& id);
  void ScheduleTimer(const ActorPtr& actor, absl::Time at);

  void ClaimLoop();
  void LeaseLoop();
  void TimerLoop();

  RuntimeOptions options_;
  store::Store* store_;
  invoke::Invoker* invoker_;
  DefinitionRegistry* registry_;
  const common::Clock* clock_;
  EventListener listener_;
  RuntimeObserver* observer_ = nullptr;  // ops
  RuntimeStats stats_;

  std::mutex actors_mu_;
  absl::flat_hash_map<std::string, ActorPtr> actors_;
  std::vector<std::string> reclaim_;  // guarded by actors_mu_

  std::atomic<bool> stopping_{false};
  std::atomic<bool> draining_{false};
  std::atomic<bool> leases_stopped_{false};
  std::atomic<int64_t> calls_in_flight_{0};
  std::atomic<int64_t> commits_in_flight_{0};

  std::mutex wake_mu_;
  std::condition_variable wake_cv_;
  bool wake_ = false;

  std::mutex timer_mu_;
  std::condition_variable timer_cv_;
  std::multimap<absl::Time, std::weak_ptr<Actor>> timers_;

  bool started_ = false;
  bool stopped_ = false;
  std::unique_ptr<Executor> executor_;
  std::thread claim_thread_;
  std::thread lease_thread_;
  std::thread timer_thread_;
};

// A random UUID (version 4) as text.
std::string NewUuid();

// A time-ordered UUID (version 7) as text: saga ids. Ids made later sort later (to a fraction
// of a millisecond), so new sagas and their events are inserted at the right edge of the
// primary-key indexes instead of on random pages: fewer pages dirtied and written after each
// checkpoint, and the recent part of the indexes stays in memory however large they grow.
std::string NewTimeOrderedUuid();

}  // namespace saga::runtime
