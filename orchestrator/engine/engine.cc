#include "orchestrator/engine/engine.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>

#include "absl/random/distributions.h"
#include "absl/strings/str_cat.h"

namespace saga::engine {
namespace {

using definition::Definition;
using definition::RetryPolicy;
using definition::StepSpec;

const RetryPolicy& ActionPolicy(const StepSpec& step) { return step.action.retry; }

// Builds the events of one decision, applying each to a working copy of the state so that
// later choices in the same decision see the effect of earlier ones.
class Builder {
 public:
  Builder(const Definition& def, const SagaState& state, absl::Time now, absl::BitGenRef rng)
      : def_(def), state_(state), now_(now), rng_(rng) {}

  const SagaState& state() const { return state_; }
  Decision& decision() { return decision_; }

  void Emit(EventType type, int step = -1, int attempt = 0,
            nlohmann::json detail = nlohmann::json::object()) {
    Event event;
    event.seq = state_.last_seq + 1;
    event.type = type;
    event.step = step;
    event.attempt = attempt;
    event.detail = std::move(detail);
    Apply(def_, state_, event);
    decision_.events.push_back(std::move(event));
  }

  void Invoke(int step, CallKind call, int attempt) {
    decision_.commands.push_back(Command{Command::Kind::kInvoke, step, call, attempt});
  }

  void StartAction(int step, int attempt, nlohmann::json detail = nlohmann::json::object()) {
    Emit(EventType::kStepStarted, step, attempt, std::move(detail));
    Invoke(step, CallKind::kAction, attempt);
  }

  void StartCompensation(int step, int attempt, nlohmann::json detail = nlohmann::json::object()) {
    Emit(EventType::kCompensationStarted, step, attempt, std::move(detail));
    Invoke(step, CallKind::kCompensation, attempt);
  }

  void WakeAt(absl::Time t) { decision_.wake_at = std::min(decision_.wake_at, t); }

  void HandleTrigger(const Trigger& trigger);
  void Advance();

 private:
  void HandleResult(const Trigger& trigger);
  void Resume();
  bool AdvanceRunning();
  bool AdvanceCompensating();
  bool NeedsCompensation(int i) const;
  bool HasOutstandingDescendant(int i) const;

  const Definition& def_;
  SagaState state_;
  absl::Time now_;
  absl::BitGenRef rng_;
  Decision decision_;
};

void Builder::HandleTrigger(const Trigger& trigger) {
  switch (trigger.kind) {
    case Trigger::Kind::kStart:
      if (state_.last_seq == 0) Emit(EventType::kSagaStarted);
      break;
    case Trigger::Kind::kResume:
      Resume();
      break;
    case Trigger::Kind::kResult:
      HandleResult(trigger);
      break;
    case Trigger::Kind::kTimer:
      break;
    case Trigger::Kind::kAbort:
      if (state_.status == SagaStatus::kRunning && !state_.abort_requested) {
        Emit(EventType::kAbortRequested, -1, 0, {{"reason", trigger.reason}});
      }
      break;
    case Trigger::Kind::kRetry:
      if (state_.status == SagaStatus::kFailed) Emit(EventType::kRetryRequested);
      break;
  }
}

// After a restart or takeover, an attempt recorded without an outcome is sent again, as a new
// attempt with the same idempotency key, while the policy allows.
void Builder::Resume() {
  for (int i = 0; i < static_cast<int>(state_.steps.size()); ++i) {
    const StepState& st = state_.steps[static_cast<size_t>(i)];
    if (!st.in_flight) continue;
    const StepSpec& spec = def_.steps[static_cast<size_t>(i)];
    if (st.status == StepStatus::kRunning) {
      if (state_.status == SagaStatus::kRunning && !state_.abort_requested &&
          st.attempts < ActionPolicy(spec).max_attempts) {
        StartAction(i, st.attempts + 1, {{"resumed", true}});
      } else {
        Emit(EventType::kStepFailed, i, st.attempts,
             {{"code", "UNKNOWN"},
              {"message", "no answer was recorded before the orchestrator restarted"},
              {"unknown", true}});
      }
    } else if (st.status == StepStatus::kCompensating) {
      const auto& policy = spec.compensation->retry;
      if (st.compensation_attempts < policy.max_attempts) {
        StartCompensation(i, st.compensation_attempts + 1, {{"resumed", true}});
      } else {
        Emit(EventType::kCompensationFailed, i, st.compensation_attempts,
             {{"code", "UNKNOWN"},
              {"message", "no answer was recorded before the orchestrator restarted"}});
      }
    }
  }
}

void Builder::HandleResult(const Trigger& t) {
  if (t.step < 0 || t.step >= static_cast<int>(state_.steps.size())) return;
  const StepState& st = state_.steps[static_cast<size_t>(t.step)];
  const StepSpec& spec = def_.steps[static_cast<size_t>(t.step)];
  if (!st.in_flight) return;  // stale: the attempt was already settled
  const absl::StatusCode code = t.status.code();
  if (t.call == CallKind::kAction) {
    if (st.status != StepStatus::kRunning || st.attempts != t.attempt) return;
    const RetryPolicy& policy = ActionPolicy(spec);
    if (t.status.ok()) {
      Emit(EventType::kStepSucceeded, t.step, t.attempt, {{"output", t.output}});
      return;
    }
    const bool retryable = policy.IsRetryable(code);
    if (retryable && state_.status == SagaStatus::kRunning && !state_.abort_requested &&
        st.attempts < policy.max_attempts) {
      const absl::Time at = now_ + Backoff(policy, st.attempts + 1, rng_);
      Emit(EventType::kStepRetryScheduled, t.step, t.attempt,
           {{"code", absl::StatusCodeToString(code)},
            {"message", std::string(t.status.message())},
            {"retry_at_us", absl::ToUnixMicros(at)}});
      return;
    }
    Emit(EventType::kStepFailed, t.step, t.attempt,
         {{"code", absl::StatusCodeToString(code)},
          {"message", std::string(t.status.message())},
          {"unknown", retryable}});
    return;
  }
  // Compensation.
  if (st.status != StepStatus::kCompensating || st.compensation_attempts != t.attempt) return;
  const RetryPolicy& policy = spec.compensation->retry;
  if (t.status.ok()) {
    Emit(EventType::kCompensationSucceeded, t.step, t.attempt);
    return;
  }
  if (policy.IsRetryable(code) && st.compensation_attempts < policy.max_attempts) {
    const absl::Time at = now_ + Backoff(policy, st.compensation_attempts + 1, rng_);
    Emit(EventType::kCompensationRetryScheduled, t.step, t.attempt,
         {{"code", absl::StatusCodeToString(code)},
          {"message", std::string(t.status.message())},
          {"retry_at_us", absl::ToUnixMicros(at)}});
    return;
  }
  Emit(EventType::kCompensationFailed, t.step, t.attempt,
       {{"code", absl::StatusCodeToString(code)}, {"message", std::string(t.status.message())}});
}

void Builder::Advance() {
  for (;;) {
    bool changed = false;
    if (state_.status == SagaStatus::kRunning) {
      changed = AdvanceRunning();
    } else if (state_.status == SagaStatus::kCompensating) {
      changed = AdvanceCompensating();
    }
    if (!changed) return;
  }
}

// Returns true if it emitted a status change that needs another pass.
bool Builder::AdvanceRunning() {
  if (state_.abort_requested) {
    Emit(EventType::kSagaCompensating, -1, 0,
         {{"reason", absl::StrCat("aborted: ", state_.abort_reason)}});
    return true;
  }
  for (size_t i = 0; i < state_.steps.size(); ++i) {
    const StepState& st = state_.steps[i];
    if (st.status == StepStatus::kFailed) {
      Emit(EventType::kSagaCompensating, -1, 0,
           {{"reason", absl::StrCat("step '", def_.steps[i].name, "' failed: ", st.last_error)}});
      return true;
    }
  }
  bool all_succeeded = true;
  for (int i = 0; i < static_cast<int>(state_.steps.size()); ++i) {
    const StepState& st = state_.steps[static_cast<size_t>(i)];
    if (st.status != StepStatus::kSucceeded) all_succeeded = false;
    if (st.status == StepStatus::kPending) {
      bool ready = true;
      for (int dep : def_.steps[static_cast<size_t>(i)].after) {
        if (state_.steps[static_cast<size_t>(dep)].status != StepStatus::kSucceeded) {
          ready = false;
          break;
        }
      }
      if (ready) StartAction(i, 1);
    } else if (st.status == StepStatus::kRunning && !st.in_flight) {
      if (st.retry_at <= now_) {
        StartAction(i, st.attempts + 1);
      } else {
        WakeAt(st.retry_at);
      }
    }
  }
  if (all_succeeded) {
    Emit(EventType::kSagaCompleted);
    return false;
  }
  return false;
}

// A step is compensated if it succeeded, or if its outcome is unknown (it may have taken
// effect), and it declares a compensation. A definite business failure is not compensated.
bool Builder::NeedsCompensation(int i) const {
  const StepState& st = state_.steps[static_cast<size_t>(i)];
  if (!def_.steps[static_cast<size_t>(i)].compensation.has_value()) return false;
  return st.status == StepStatus::kSucceeded ||
         (st.status == StepStatus::kFailed && st.outcome_unknown);
}

// True while a step that runs after step i (directly or not) still has work that must finish
// before i may be compensated: a call in flight, or a compensation not yet done.
bool Builder::HasOutstandingDescendant(int i) const {
  std::vector<int> stack(def_.steps[static_cast<size_t>(i)].successors);
  std::vector<bool> seen(state_.steps.size(), false);
  while (!stack.empty()) {
    const int j = stack.back();
    stack.pop_back();
    if (seen[static_cast<size_t>(j)]) continue;
    seen[static_cast<size_t>(j)] = true;
    const StepState& st = state_.steps[static_cast<size_t>(j)];
    if (st.in_flight || st.status == StepStatus::kCompensating || NeedsCompensation(j) ||
        st.status == StepStatus::kCompensationFailed) {
      return true;
    }
    for (int k : def_.steps[static_cast<size_t>(j)].successors) stack.push_back(k);
  }
  return false;
}

bool Builder::AdvanceCompensating() {
  const int n = static_cast<int>(state_.steps.size());
  // Forward steps waiting for a retry are abandoned; they may have taken effect.
  for (int i = 0; i < n; ++i) {
    const StepState& st = state_.steps[static_cast<size_t>(i)];
    if (st.status == StepStatus::kRunning && !st.in_flight) {
      Emit(EventType::kStepFailed, i, st.attempts,
           {{"code", "ABORTED"},
            {"message", absl::StrCat("retry abandoned because the saga is compensating; last "
                                     "error: ",
                                     st.last_error)},
            {"unknown", true}});
    }
  }
  bool any_failed = false;
  bool busy = false;
  for (int i = 0; i < n; ++i) {
    const StepState& st = state_.steps[static_cast<size_t>(i)];
    if (st.status == StepStatus::kCompensationFailed) any_failed = true;
    if (st.in_flight) busy = true;
  }
  for (int i = n - 1; i >= 0; --i) {
    const StepState& st = state_.steps[static_cast<size_t>(i)];
    if (st.status == StepStatus::kCompensating && !st.in_flight) {
      // A compensation waiting for its retry (or resumed by an operator).
      if (st.retry_at <= now_) {
        StartCompensation(i, st.compensation_attempts + 1);
      } else {
        WakeAt(st.retry_at);
      }
      busy = true;
      continue;
    }
    if (any_failed || !NeedsCompensation(i) || st.in_flight) continue;
    if (HasOutstandingDescendant(i)) {
      busy = true;
      continue;
    }
    StartCompensation(i, 1);
    busy = true;
  }
  if (busy) return false;
  if (any_failed) {
    std::string reason;
    for (int i = 0; i < n; ++i) {
      const StepState& st = state_.steps[static_cast<size_t>(i)];
      if (st.status == StepStatus::kCompensationFailed) {
        reason = absl::StrCat("compensation of step '", def_.steps[static_cast<size_t>(i)].name,
                              "' failed: ", st.last_error);
        break;
      }
    }
    Emit(EventType::kSagaFailed, -1, 0, {{"reason", reason}});
    return false;
  }
  for (int i = 0; i < n; ++i) {
    if (NeedsCompensation(i)) return false;
  }
  Emit(EventType::kSagaCompensated);
  return false;
}

std::string DetailString(const nlohmann::json& detail, const char* key) {
  auto it = detail.find(key);
  if (it == detail.end() || !it->is_string()) return {};
  return it->get<std::string>();
}

std::string DetailError(const nlohmann::json& detail) {
  return absl::StrCat(DetailString(detail, "code"), ": ", DetailString(detail, "message"));
}

absl::Time DetailTime(const nlohmann::json& detail, const char* key) {
  auto it = detail.find(key);
  if (it == detail.end() || !it->is_number_integer()) return absl::InfinitePast();
  return absl::FromUnixMicros(it->get<int64_t>());
}

}  // namespace

SagaState NewState(const Definition& def) {
  SagaState state;
  state.steps.resize(def.steps.size());
  return state;
}

void Apply(const Definition& def, SagaState& state, const Event& event) {
  state.last_seq = event.seq;
  StepState* st = nullptr;
  if (event.step >= 0 && static_cast<size_t>(event.step) < state.steps.size()) {
    st = &state.steps[static_cast<size_t>(event.step)];
  }
  (void)def;
  switch (event.type) {
    case EventType::kSagaStarted:
      state.status = SagaStatus::kRunning;
      break;
    case EventType::kStepStarted:
      if (!st) break;
      st->status = StepStatus::kRunning;
      st->attempts = event.attempt;
      st->in_flight = true;
      st->retry_at = absl::InfinitePast();
      break;
    case EventType::kStepSucceeded:
      if (!st) break;
      st->status = StepStatus::kSucceeded;
      st->in_flight = false;
      st->outcome_unknown = false;
      if (auto it = event.detail.find("output"); it != event.detail.end()) st->output = *it;
      break;
    case EventType::kStepRetryScheduled:
      if (!st) break;
      st->in_flight = false;
      st->outcome_unknown = true;
      st->retry_at = DetailTime(event.detail, "retry_at_us");
      st->last_error = DetailError(event.detail);
      break;
    case EventType::kStepFailed:
      if (!st) break;
      st->status = StepStatus::kFailed;
      st->in_flight = false;
      st->outcome_unknown = event.detail.value("unknown", false);
      st->last_error = DetailError(event.detail);
      break;
    case EventType::kCompensationStarted:
      if (!st) break;
      st->status = StepStatus::kCompensating;
      st->compensation_attempts = event.attempt;
      st->in_flight = true;
      st->retry_at = absl::InfinitePast();
      break;
    case EventType::kCompensationSucceeded:
      if (!st) break;
      st->status = StepStatus::kCompensated;
      st->in_flight = false;
      break;
    case EventType::kCompensationRetryScheduled:
      if (!st) break;
      st->in_flight = false;
      st->retry_at = DetailTime(event.detail, "retry_at_us");
      st->last_error = DetailError(event.detail);
      break;
    case EventType::kCompensationFailed:
      if (!st) break;
      st->status = StepStatus::kCompensationFailed;
      st->in_flight = false;
      st->last_error = DetailError(event.detail);
      break;
    case EventType::kAbortRequested:
      state.abort_requested = true;
      state.abort_reason = DetailString(event.detail, "reason");
      break;
    case EventType::kRetryRequested:
      state.status = SagaStatus::kCompensating;
      state.error.clear();
      for (auto& s : state.steps) {
        if (s.status == StepStatus::kCompensationFailed) {
          s.status = StepStatus::kCompensating;
          s.in_flight = false;
          s.compensation_attempts = 0;
          s.retry_at = absl::InfinitePast();
        }
      }
      break;
    case EventType::kSagaCompleted:
      state.status = SagaStatus::kCompleted;
      break;
    case EventType::kSagaCompensating:
      state.status = SagaStatus::kCompensating;
      state.error = DetailString(event.detail, "reason");
      break;
    case EventType::kSagaCompensated:
      state.status = SagaStatus::kCompensated;
      break;
    case EventType::kSagaFailed:
      state.status = SagaStatus::kFailed;
      state.error = DetailString(event.detail, "reason");
      break;
  }
}

Decision Decide(const Definition& def, const SagaState& state, const Trigger& trigger,
                absl::Time now, absl::BitGenRef rng) {
  Builder builder(def, state, now, rng);
  builder.HandleTrigger(trigger);
  builder.Advance();
  return std::move(builder.decision());
}

absl::Duration Backoff(const RetryPolicy& policy, int next_attempt, absl::BitGenRef rng) {
  const int exponent = std::max(0, next_attempt - 2);
  double seconds = absl::ToDoubleSeconds(policy.initial_backoff) *
                   std::pow(std::max(1.0, policy.multiplier), exponent);
  if (policy.jitter > 0 && seconds > 0) {
    seconds *= 1.0 + absl::Uniform(rng, -policy.jitter, policy.jitter);
  }
  // max_backoff is a cap, jitter included.
  seconds = std::min(seconds, absl::ToDoubleSeconds(policy.max_backoff));
  if (!(seconds > 0)) return absl::ZeroDuration();
  return absl::Seconds(seconds);
}

}  // namespace saga::engine
