#include "orchestrator/runtime/runtime.h"

#include <deque>
#include <utility>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "orchestrator/common/crash_point.h"
#include "orchestrator/common/failure_log.h"
#include "orchestrator/common/logging.h"  // ops
#include "spdlog/spdlog.h"

namespace saga::runtime {
namespace {

absl::BitGen& ThreadRng() {
  thread_local absl::BitGen rng;
  return rng;
}

std::string RandomHex(int bytes) {
  std::string out;
  out.reserve(static_cast<size_t>(bytes) * 2);
  for (int i = 0; i < bytes; ++i) {
    absl::StrAppendFormat(&out, "%02x", absl::Uniform<unsigned>(ThreadRng(), 0u, 256u));
  }
  return out;
}

// A new span of the saga's trace for one participant call (W3C trace context).
std::string ChildTraceparent(const std::string& parent) {
  // parent is "00-<32 hex trace id>-<16 hex span id>-<2 hex flags>", validated by the API.
  if (parent.size() != 55) return {};
  return absl::StrCat(parent.substr(0, 36), RandomHex(8), parent.substr(52));
}

// The text form of the UUID whose first and last 64 bits are `hi` (with the version) and `lo`
// (random); sets the variant bits (10).
std::string FormatUuid(uint64_t hi, uint64_t lo) {
  lo = (lo & 0x3fffffffffffffffULL) | 0x8000000000000000ULL;
  return absl::StrFormat("%08x-%04x-%04x-%04x-%012x", hi >> 32, (hi >> 16) & 0xffff, hi & 0xffff,
                         lo >> 48, lo & 0xffffffffffffULL);
}

}  // namespace

std::string NewUuid() {
  const uint64_t hi = absl::Uniform<uint64_t>(ThreadRng());
  return FormatUuid((hi & 0xffffffffffff0fffULL) | 0x0000000000004000ULL,  // version 4
                    absl::Uniform<uint64_t>(ThreadRng()));
}

std::string NewTimeOrderedUuid() {
  // RFC 9562 version 7: 48 bits of Unix milliseconds, then 12 bits of the fraction of the
  // millisecond (the RFC's "increased clock precision" method), then 62 random bits.
  const int64_t now_ns = absl::ToUnixNanos(absl::Now());
  const uint64_t ms = static_cast<uint64_t>(now_ns / 1'000'000);
  const uint64_t sub_ms = static_cast<uint64_t>(now_ns % 1'000'000) * 4096 / 1'000'000;
  return FormatUuid((ms << 16) | 0x7000ULL | (sub_ms & 0x0fffULL),
                    absl::Uniform<uint64_t>(ThreadRng()));
}

struct Runtime::Actor {
  std::string id;
  DefinitionPtr def;
  int64_t fence = 0;
  nlohmann::json input;
  std::string idempotency_key;
  std::string traceparent;
  absl::Time created_at = absl::Now();  // ops: for saga_duration_seconds
  engine::SagaState state;              // touched only by the thread draining the actor

  std::mutex mu;
  std::deque<engine::Trigger> queue;  // guarded by mu
  bool busy = false;                  // guarded by mu: a thread drains, or a commit is pending
  bool dead = false;                  // guarded by mu: ownership lost or saga settled
  bool clear_requests = false;        // the next commit consumes the operator request flags
  absl::Time timer_at = absl::InfiniteFuture();  // guarded by Runtime::timer_mu_
};

Runtime::Runtime(RuntimeOptions options, store::Store* store, invoke::Invoker* invoker,
                 DefinitionRegistry* registry, const common::Clock* clock)
    : options_(std::move(options)),
      store_(store),
      invoker_(invoker),
      registry_(registry),
      clock_(clock) {}

Runtime::~Runtime() { Stop(absl::ZeroDuration()); }

void Runtime::Start() {
  if (started_) return;
  started_ = true;
  executor_ = std::make_unique<Executor>(options_.workers);
  claim_thread_ = std::thread([this] { ClaimLoop(); });
  lease_thread_ = std::thread([this] { LeaseLoop(); });
  timer_thread_ = std::thread([this] { TimerLoop(); });
}

void Runtime::Stop(absl::Duration drain) {
  if (!started_ || stopped_) return;
  stopped_ = true;
  stopping_ = true;
  draining_ = true;
  Wake();
  const absl::Time deadline = absl::Now() + drain;
  while (absl::Now() < deadline && (calls_in_flight_.load() > 0 || commits_in_flight_.load() > 0)) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  {
    std::lock_guard<std::mutex> lock(timer_mu_);
    timers_.clear();
  }
  timer_cv_.notify_all();
  {
    std::lock_guard<std::mutex> lock(wake_mu_);
    leases_stopped_ = true;
  }
  wake_cv_.notify_all();
  claim_thread_.join();
  lease_thread_.join();
  timer_thread_.join();
  {
    std::lock_guard<std::mutex> lock(actors_mu_);
    for (auto& [id, actor] : actors_) {
      std::lock_guard<std::mutex> alock(actor->mu);
      actor->dead = true;
    }
    actors_.clear();
  }
  // Wait for commits already sent so that their callbacks do not outlive us.
  const absl::Time commit_deadline = absl::Now() + absl::Seconds(10);
  while (commits_in_flight_.load() > 0 && absl::Now() < commit_deadline) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  if (absl::Status s = store_->ReleaseAll(options_.owner_id); !s.ok()) {
    spdlog::warn("could not release leases at shutdown: {}", s.ToString());
  }
  executor_->Shutdown();
}

void Runtime::Wake() {
  {
    std::lock_guard<std::mutex> lock(wake_mu_);
    wake_ = true;
  }
  wake_cv_.notify_all();
}

bool Runtime::RunsHere(const std::string& saga_id) { return Find(saga_id) != nullptr; }

Runtime::ActorPtr Runtime::Find(const std::string& id) {
  std::lock_guard<std::mutex> lock(actors_mu_);
  auto it = actors_.find(id);
  return it == actors_.end() ? nullptr : it->second;
}

void Runtime::StartSaga(StartRequest request,
                        absl::AnyInvocable<void(absl::StatusOr<store::StartResult>) &&> done) {
  if (stopping_.load()) {
    std::move(done)(absl::UnavailableError("sagad is shutting down"));
    return;
  }
  auto actor = std::make_shared<Actor>();
  actor->id = NewTimeOrderedUuid();
  actor->def = request.definition;
  actor->input = std::move(request.input);
  actor->idempotency_key = request.idempotency_key;
  actor->traceparent = request.traceparent;
  actor->state = engine::NewState(*actor->def);
  actor->busy = true;  // nothing runs before the start is committed
  engine::Decision decision =
      engine::Decide(*actor->def, actor->state, {.kind = engine::Trigger::Kind::kStart},
                     clock_->Now(), ThreadRng());
  for (const auto& e : decision.events) engine::Apply(*actor->def, actor->state, e);

  store::NewSaga saga;
  saga.id = actor->id;
  saga.definition_name = actor->def->name;
  saga.definition_version = actor->def->version;
  saga.input_json = std::move(request.input_json);
  saga.input_hash = std::move(request.input_hash);
  saga.idempotency_key = std::move(request.idempotency_key);
  saga.traceparent = std::move(request.traceparent);
  saga.owner = options_.owner_id;
  saga.lease = options_.lease;
  saga.status = actor->state.status;
  saga.events = decision.events;
  // The only saga: the store may write it on this thread (nothing else waits for it).
  saga.write_on_caller = stats_.active.load() == 0 && commits_in_flight_.load() == 0;
  commits_in_flight_++;
  store_->StartSaga(std::move(saga),
                    [this, actor, decision = std::move(decision),
                     done = std::move(done)](absl::StatusOr<store::StartResult> result) mutable {
                      // Runs on the store's thread: the first calls go out without another thread
                      // hop.
                      {
                        if (result.ok() && result->created) {
                          actor->fence = result->fence;
                          stats_.sagas_started++;
                          if (observer_ != nullptr) observer_->OnSagaStarted(*actor->def);  // ops
                          stats_.active++;
                          {
                            std::lock_guard<std::mutex> lock(actors_mu_);
                            actors_[actor->id] = actor;
                          }
                          if (listener_) listener_(actor->id, decision.events);
                          std::move(done)(result);
                          commits_in_flight_--;
                          Execute(actor, decision);
                          Drain(actor);
                          return;
                        }
                        commits_in_flight_--;
                        std::move(done)(std::move(result));
                      }
                    });
}

void Runtime::Post(const ActorPtr& actor, engine::Trigger trigger) {
  {
    std::lock_guard<std::mutex> lock(actor->mu);
    if (actor->dead) return;
    actor->queue.push_back(std::move(trigger));
    if (actor->busy) return;
    actor->busy = true;
  }
  // Decisions take microseconds and never block: run them on the calling thread (a gRPC
  // callback, the timer or the claim thread) rather than paying for a thread hop.
  Drain(actor);
}

// Handles the actor's queued triggers one by one, on whichever thread set `busy`; leaves
// `busy` set while a commit is pending (AfterCommit resumes draining). Never blocks.
void Runtime::Drain(const ActorPtr& actor) {
  common::ScopedLogContext log_ctx(actor->id, {}, common::TraceIdOf(actor->traceparent));  // ops
  for (;;) {
    engine::Trigger trigger;
    {
      std::lock_guard<std::mutex> lock(actor->mu);
      if (actor->dead || actor->queue.empty()) {
        actor->busy = false;
        return;
      }
      trigger = std::move(actor->queue.front());
      actor->queue.pop_front();
    }
    engine::Decision decision =
        engine::Decide(*actor->def, actor->state, trigger, clock_->Now(), ThreadRng());
    if (decision.events.empty()) {
      Execute(actor, decision);
      continue;
    }
    for (const auto& e : decision.events) engine::Apply(*actor->def, actor->state, e);
    store::Transition t;
    t.saga_id = actor->id;
    t.owner = options_.owner_id;
    t.fence = actor->fence;
    t.events = decision.events;
    t.status = actor->state.status;
    t.error = actor->state.error;
    const bool release = actor->state.status != engine::SagaStatus::kRunning &&
                         actor->state.status != engine::SagaStatus::kCompensating;
    t.release = release;
    t.clear_requests = actor->clear_requests;
    actor->clear_requests = false;
    common::CrashPoint("before_commit");
    t.write_on_caller = stats_.active.load() == 1 && commits_in_flight_.load() == 0;
    commits_in_flight_++;
    store_->Commit(std::move(t), [this, actor, decision = std::move(decision),
                                  release](absl::Status status) mutable {
      // Runs on the store's thread after COMMIT: the next calls go out from here.
      AfterCommit(actor, std::move(status), std::move(decision), release);
      commits_in_flight_--;
    });
    return;
  }
}

void Runtime::AfterCommit(const ActorPtr& actor, absl::Status status, engine::Decision decision,
                          bool release) {
  common::ScopedLogContext log_ctx(actor->id, {}, common::TraceIdOf(actor->traceparent));  // ops
  if (!status.ok()) {
    Drop(actor, status);
    return;
  }
  if (listener_) listener_(actor->id, decision.events);
  if (release) {
    switch (actor->state.status) {
      case engine::SagaStatus::kCompleted:
        stats_.sagas_completed++;
        break;
      case engine::SagaStatus::kCompensated:
        stats_.sagas_compensated++;
        break;
      case engine::SagaStatus::kFailed:
        stats_.sagas_failed++;
        break;
      default:
        break;
    }
    if (observer_ != nullptr) {  // ops
      observer_->OnSagaFinished(*actor->def, actor->state.status, absl::Now() - actor->created_at);
    }
    // Completions are routine (debug); compensations are worth seeing; FAILED needs an operator.
    const auto level = actor->state.status == engine::SagaStatus::kFailed ? spdlog::level::warn
                       : actor->state.status == engine::SagaStatus::kCompensated
                           ? spdlog::level::info
                           : spdlog::level::debug;
    spdlog::log(level, "saga {} {}{}", actor->id, engine::SagaStatusName(actor->state.status),
                actor->state.error.empty() ? "" : ": " + actor->state.error);
    {
      std::lock_guard<std::mutex> lock(actor->mu);
      actor->dead = true;
      actor->busy = false;
    }
    std::lock_guard<std::mutex> lock(actors_mu_);
    if (auto it = actors_.find(actor->id); it != actors_.end() && it->second == actor) {
      // Only this actor: a newer one may hold the saga after a reclaim.
      actors_.erase(it);
      stats_.active--;
    }
    return;
  }
  Execute(actor, decision);
  Drain(actor);
}

void Runtime::Execute(const ActorPtr& actor, const engine::Decision& decision) {
  if (!draining_.load()) {
    if (!decision.commands.empty()) common::CrashPoint("after_commit_before_call");
    for (const auto& command : decision.commands) Invoke(actor, command);
  }
  if (decision.wake_at != absl::InfiniteFuture()) ScheduleTimer(actor, decision.wake_at);
}

void Runtime::Invoke(const ActorPtr& actor, const engine::Command& command) {
  const definition::StepSpec& step = actor->def->steps[static_cast<size_t>(command.step)];
  const bool compensation = command.call == engine::CallKind::kCompensation;
  const definition::CallSpec& call = compensation ? *step.compensation : step.action;
  std::string key =
      absl::StrCat(actor->id, "/", step.name, compensation ? "/compensation" : "/action");
  // ops: log lines about this call carry the saga, the step and the trace.
  common::ScopedLogContext log_ctx(actor->id, step.name, common::TraceIdOf(actor->traceparent));

  definition::RenderContext ctx;
  ctx.input = &actor->input;
  const Actor* a = actor.get();
  ctx.step_output = [a](std::string_view name) -> const nlohmann::json* {
    const definition::StepSpec* s = a->def->FindStep(name);
    if (s == nullptr) return nullptr;
    const nlohmann::json& out = a->state.steps[static_cast<size_t>(s->index)].output;
    return out.is_null() ? nullptr : &out;
  };
  ctx.saga_id = actor->id;
  ctx.saga_key = actor->idempotency_key;
  ctx.step_name = step.name;
  ctx.step_key = key;
  absl::StatusOr<nlohmann::json> request = call.request.Render(ctx);

  engine::Trigger result{.kind = engine::Trigger::Kind::kResult,
                         .step = command.step,
                         .call = command.call,
                         .attempt = command.attempt};
  if (!request.ok()) {
    result.status = absl::InvalidArgumentError(
        absl::StrCat("cannot build the request: ", request.status().message()));
    Post(actor, std::move(result));
    return;
  }
  invoke::CallRequest req;
  req.target = step.target;
  req.method = call.method;
  req.keep_alive = actor->def;
  req.request_json = request->is_null() ? "{}" : request->dump();
  req.timeout = call.timeout;
  req.metadata = {{"saga-id", actor->id}, {"saga-step", step.name}, {"idempotency-key", key}};
  if (std::string tp = ChildTraceparent(actor->traceparent); !tp.empty()) {
    req.metadata.emplace_back("traceparent", std::move(tp));
  }
  stats_.calls++;
  if (compensation) stats_.compensations++;
  if (observer_ != nullptr && compensation && command.attempt == 1) {  // ops
    observer_->OnCompensationStarted(*actor->def, step);
  }
  calls_in_flight_++;
  invoker_->Call(std::move(req), [this, actor, result = std::move(result), step_spec = &step,
                                  call_spec = &call, sent = absl::Now()](  // ops: last 2 lines
                                     invoke::CallResult r) mutable {
    common::CrashPoint("after_answer_before_commit");
    result.status = std::move(r.status);
    if (observer_ != nullptr) {  // ops
      using R = RuntimeObserver::AttemptResult;
      const R outcome = result.status.ok()                                   ? R::kOk
                        : call_spec->retry.IsRetryable(result.status.code()) ? R::kRetryable
                                                                             : R::kBusinessError;
      observer_->OnAttemptFinished(*actor->def, *step_spec, result.call, outcome,
                                   absl::Now() - sent);
    }
    if (result.status.ok()) {
      result.output = nlohmann::json::parse(r.response_json, nullptr, /*allow_exceptions=*/false);
      if (result.output.is_discarded()) result.output = nlohmann::json::object();
    } else {
      stats_.call_failures++;
    }
    Post(actor, std::move(result));
    calls_in_flight_--;
  });
}

void Runtime::Drop(const ActorPtr& actor, const absl::Status& why) {
  common::ScopedLogContext log_ctx(actor->id, {}, common::TraceIdOf(actor->traceparent));  // ops
  {
    std::lock_guard<std::mutex> lock(actor->mu);
    actor->dead = true;
    actor->busy = false;
  }
  stats_.ownership_lost++;
  std::lock_guard<std::mutex> lock(actors_mu_);
  if (auto it = actors_.find(actor->id); it != actors_.end() && it->second == actor) {
    // Only this actor: a newer one may hold the saga after a reclaim.
    actors_.erase(it);
    stats_.active--;
  }
  if (why.code() == absl::StatusCode::kAborted) {
    spdlog::warn("saga {}: another replica owns it now ({})", actor->id,
                 std::string(why.message()));
  } else {
    // The write may or may not have been recorded: take the saga back from the database.
    spdlog::warn("saga {}: write failed, will reload it: {}", actor->id, why.ToString());
    reclaim_.push_back(actor->id);
  }
}

void Runtime::Poke(const std::string& saga_id) {
  ActorPtr actor = Find(saga_id);
  if (actor == nullptr) {
    Wake();
    return;
  }
  executor_->Post([this, actor] {
    absl::StatusOr<store::SagaRow> row = store_->GetSaga(actor->id);
    if (!row.ok() || !row->abort_requested) return;
    {
      std::lock_guard<std::mutex> lock(actor->mu);
      actor->clear_requests = true;
    }
    Post(actor, {.kind = engine::Trigger::Kind::kAbort, .reason = row->abort_reason});
  });
}

void Runtime::Adopt(store::ClaimedSaga claimed) {
  absl::StatusOr<DefinitionPtr> def =
      registry_->Get(claimed.row.definition_name, claimed.row.definition_version);
  if (!def.ok()) {
    spdlog::error("saga {}: cannot load definition {} v{}: {}", claimed.row.id,
                  claimed.row.definition_name, claimed.row.definition_version,
                  def.status().ToString());
    return;
  }
  auto actor = std::make_shared<Actor>();
  actor->id = claimed.row.id;
  actor->def = *def;
  actor->fence = claimed.row.fence;
  actor->input = nlohmann::json::parse(claimed.row.input_json, nullptr, false);
  if (actor->input.is_discarded()) actor->input = nlohmann::json::object();
  actor->idempotency_key = claimed.row.idempotency_key;
  actor->traceparent = claimed.row.traceparent;
  actor->created_at = claimed.row.created_at;  // ops
  actor->state = engine::NewState(**def);
  for (const auto& e : claimed.events) engine::Apply(**def, actor->state, e);
  actor->clear_requests = claimed.row.abort_requested || claimed.row.retry_requested;
  {
    std::lock_guard<std::mutex> lock(actors_mu_);
    if (auto it = actors_.find(actor->id); it != actors_.end()) {
      // We claimed a saga we still hold in memory (our lease ran out, e.g. during a database
      // outage): the claim bumped the fence, so the old actor can no longer write. Replace it;
      // the new one resumes from the recorded history with the new fence.
      {
        std::lock_guard<std::mutex> alock(it->second->mu);
        it->second->dead = true;
      }
      it->second = actor;
    } else {
      actors_[actor->id] = actor;
      stats_.active++;
    }
  }
  stats_.claims++;
  common::ScopedLogContext log_ctx(actor->id, {}, common::TraceIdOf(actor->traceparent));  // ops
  spdlog::info("saga {}: resumed at event {} ({})", actor->id, actor->state.last_seq,
               engine::SagaStatusName(actor->state.status));
  // From now on this replica passes every event of the saga to the listener as it commits;
  // the history recorded before (by the replica that ran it, up to the claim that fenced it
  // off) goes first, so that a listener that was polling the database for it misses nothing.
  if (listener_ && !claimed.events.empty()) listener_(actor->id, claimed.events);
  Post(actor, {.kind = engine::Trigger::Kind::kResume});
  if (claimed.row.retry_requested) Post(actor, {.kind = engine::Trigger::Kind::kRetry});
  if (claimed.row.abort_requested) {
    Post(actor, {.kind = engine::Trigger::Kind::kAbort, .reason = claimed.row.abort_reason});
  }
}

void Runtime::ScheduleTimer(const ActorPtr& actor, absl::Time at) {
  {
    std::lock_guard<std::mutex> lock(timer_mu_);
    if (actor->timer_at <= at) return;  // an earlier wake-up is already set
    actor->timer_at = at;
    timers_.emplace(at, actor);
  }
  timer_cv_.notify_all();
}

void Runtime::TimerLoop() {
  std::unique_lock<std::mutex> lock(timer_mu_);
  while (!stopping_.load()) {
    if (timers_.empty()) {
      timer_cv_.wait_for(lock, std::chrono::milliseconds(200));
      continue;
    }
    auto it = timers_.begin();
    const absl::Time now = clock_->Now();
    if (it->first > now) {
      const absl::Duration wait = std::min(it->first - now, absl::Milliseconds(200));
      timer_cv_.wait_for(lock, absl::ToChronoNanoseconds(wait));
      continue;
    }
    ActorPtr actor = it->second.lock();
    const absl::Time at = it->first;
    timers_.erase(it);
    if (actor == nullptr) continue;
    if (actor->timer_at == at) actor->timer_at = absl::InfiniteFuture();
    lock.unlock();
    Post(actor, {.kind = engine::Trigger::Kind::kTimer});
    lock.lock();
  }
}

// Repeated failures of the claim and lease loops (a database outage) are logged at most once
// per interval, with a count.
constexpr absl::Duration kFailureLogInterval = absl::Seconds(30);

void Runtime::ClaimLoop() {
  // While the database is down every poll fails: a few lines, not one per poll.
  common::FailureLog failure_log(kFailureLogInterval);
  while (!stopping_.load()) {
    {
      std::unique_lock<std::mutex> lock(wake_mu_);
      wake_cv_.wait_for(lock, absl::ToChronoNanoseconds(options_.poll_interval),
                        [this] { return wake_ || stopping_.load(); });
      wake_ = false;
    }
    if (stopping_.load()) return;
    std::vector<std::string> reclaim;
    {
      std::lock_guard<std::mutex> lock(actors_mu_);
      reclaim.swap(reclaim_);
    }
    if (!reclaim.empty()) {
      absl::StatusOr<std::vector<store::ClaimedSaga>> back =
          store_->Reclaim(options_.owner_id, options_.lease, reclaim);
      if (back.ok()) {
        for (auto& c : *back) Adopt(std::move(c));
      } else {
        std::lock_guard<std::mutex> lock(actors_mu_);
        reclaim_.insert(reclaim_.end(), reclaim.begin(), reclaim.end());
      }
    }
    for (;;) {
      const int free = options_.max_active - static_cast<int>(stats_.active.load());
      if (free <= 0 || stopping_.load()) break;
      const int limit = std::min(free, options_.claim_batch);
      absl::StatusOr<std::vector<store::ClaimedSaga>> claimed =
          store_->ClaimDue(options_.owner_id, options_.lease, limit);
      if (!claimed.ok()) {
        if (const int64_t n = failure_log.Failed(absl::Now()); n > 0) {
          spdlog::warn("claiming due sagas failed ({} time(s) since the last message): {}", n,
                       claimed.status().ToString());
        }
        break;
      }
      if (const int64_t n = failure_log.Succeeded(); n > 0) {
        spdlog::info("claiming due sagas works again after {} failed attempt(s)", n);
      }
      const size_t n = claimed->size();
      if (observer_ != nullptr) {  // ops: retries requested by an operator are not takeovers
        int takeovers = 0;
        for (const auto& c : *claimed) takeovers += c.row.retry_requested ? 0 : 1;
        if (takeovers > 0) observer_->OnTakeovers(takeovers);
      }
      for (auto& c : *claimed) Adopt(std::move(c));
      if (n < static_cast<size_t>(limit)) break;
    }
  }
}

void Runtime::LeaseLoop() {
  // Leases are renewed while draining too, so that calls in flight keep their sagas.
  common::FailureLog failure_log(kFailureLogInterval);
  while (!leases_stopped_.load()) {
    {
      std::unique_lock<std::mutex> lock(wake_mu_);
      wake_cv_.wait_for(lock, absl::ToChronoNanoseconds(options_.renew_interval),
                        [this] { return leases_stopped_.load(); });
    }
    if (leases_stopped_.load()) return;
    std::vector<std::string> before;
    {
      std::lock_guard<std::mutex> lock(actors_mu_);
      before.reserve(actors_.size());
      for (const auto& [id, actor] : actors_) before.push_back(id);
    }
    absl::StatusOr<std::vector<store::OwnedSaga>> owned =
        store_->RenewLeases(options_.owner_id, options_.lease);
    if (!owned.ok()) {
      if (const int64_t n = failure_log.Failed(absl::Now()); n > 0) {
        spdlog::warn("renewing leases failed ({} time(s) since the last message): {}", n,
                     owned.status().ToString());
      }
      continue;
    }
    if (const int64_t n = failure_log.Succeeded(); n > 0) {
      spdlog::info("renewing leases works again after {} failed attempt(s)", n);
    }
    absl::flat_hash_map<std::string, bool> held;
    for (const auto& o : *owned) held[o.id] = o.abort_requested;
    for (const auto& id : before) {
      auto it = held.find(id);
      ActorPtr actor = Find(id);
      if (actor == nullptr) continue;
      if (it == held.end()) {
        // Settled meanwhile, or taken over by another replica after our lease expired.
        bool busy;
        {
          std::lock_guard<std::mutex> lock(actor->mu);
          busy = actor->busy;
        }
        if (!busy) Drop(actor, absl::AbortedError("lease lost"));
      } else if (it->second) {
        Poke(id);
      }
    }
  }
}

}  // namespace saga::runtime
