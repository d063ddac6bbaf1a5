#include "orchestrator/engine/engine.h"

#include <random>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace saga::engine {
namespace {

using ::testing::ElementsAre;

const absl::Time kT0 = absl::FromUnixSeconds(1'700'000'000);

struct StepDef {
  std::string name;
  bool compensated = true;
  std::vector<int> after;  // empty + chain=true: previous step
  int max_attempts = 3;
  int compensation_attempts = 2;
};

// Builds a Definition by hand (the engine reads only names, graph and policies).
definition::Definition MakeDef(const std::vector<StepDef>& steps, bool chain = true) {
  definition::Definition def;
  def.name = "test";
  def.version = 1;
  for (size_t i = 0; i < steps.size(); ++i) {
    definition::StepSpec s;
    s.name = steps[i].name;
    s.index = static_cast<int>(i);
    s.action.retry.max_attempts = steps[i].max_attempts;
    s.action.retry.jitter = 0;
    s.action.retry.initial_backoff = absl::Milliseconds(100);
    if (steps[i].compensated) {
      definition::CallSpec c;
      c.retry.max_attempts = steps[i].compensation_attempts;
      c.retry.jitter = 0;
      s.compensation = c;
    }
    if (chain && i > 0) {
      s.after = {static_cast<int>(i) - 1};
    } else {
      s.after = steps[i].after;
    }
    def.step_index[s.name] = s.index;
    def.steps.push_back(std::move(s));
  }
  for (auto& s : def.steps) {
    for (int a : s.after) def.steps[static_cast<size_t>(a)].successors.push_back(s.index);
  }
  return def;
}

// Drives one saga through the engine, keeping the history like the runtime does.
class Driver {
 public:
  explicit Driver(definition::Definition def) : def_(std::move(def)), state_(NewState(def_)) {}

  Decision Fire(const Trigger& t) {
    Decision d = Decide(def_, state_, t, now_, rng_);
    for (const auto& e : d.events) {
      EXPECT_EQ(e.seq, state_.last_seq + 1);
      Apply(def_, state_, e);
      history_.push_back(e);
    }
    return d;
  }
  Decision Start() { return Fire({.kind = Trigger::Kind::kStart}); }
  Decision Result(int step, CallKind call, int attempt, absl::Status status,
                  nlohmann::json output = nlohmann::json::object()) {
    return Fire({.kind = Trigger::Kind::kResult,
                 .step = step,
                 .call = call,
                 .attempt = attempt,
                 .status = std::move(status),
                 .output = std::move(output)});
  }
  Decision Ok(int step, int attempt = 1) { return Result(step, CallKind::kAction, attempt, {}); }
  Decision CompOk(int step, int attempt = 1) {
    return Result(step, CallKind::kCompensation, attempt, {});
  }
  Decision Timer() { return Fire({.kind = Trigger::Kind::kTimer}); }

  void Advance(absl::Duration d) { now_ += d; }
  const SagaState& state() const { return state_; }
  const std::vector<Event>& history() const { return history_; }
  const definition::Definition& def() const { return def_; }

  std::vector<std::string> Types() const {
    std::vector<std::string> out;
    for (const auto& e : history_) {
      std::string s(EventTypeName(e.type));
      if (e.step >= 0) s += "(" + def_.steps[static_cast<size_t>(e.step)].name + ")";
      out.push_back(s);
    }
    return out;
  }

 private:
  definition::Definition def_;
  SagaState state_;
  std::vector<Event> history_;
  absl::Time now_ = kT0;
  std::mt19937_64 rng_{42};
};

std::vector<std::pair<int, CallKind>> Calls(const Decision& d) {
  std::vector<std::pair<int, CallKind>> out;
  for (const auto& c : d.commands) out.emplace_back(c.step, c.call);
  return out;
}

const std::vector<StepDef> kThree = {{"reserve"}, {"charge"}, {"ship", false}};

TEST(EngineTest, HappyPathRunsStepsInOrderAndCompletes) {
  Driver d(MakeDef(kThree));
  EXPECT_THAT(Calls(d.Start()), ElementsAre(std::pair(0, CallKind::kAction)));
  EXPECT_THAT(Calls(d.Ok(0)), ElementsAre(std::pair(1, CallKind::kAction)));
  EXPECT_THAT(Calls(d.Ok(1)), ElementsAre(std::pair(2, CallKind::kAction)));
  EXPECT_TRUE(Calls(d.Ok(2)).empty());
  EXPECT_EQ(d.state().status, SagaStatus::kCompleted);
  EXPECT_THAT(d.Types(),
              ElementsAre("SAGA_STARTED", "STEP_STARTED(reserve)", "STEP_SUCCEEDED(reserve)",
                          "STEP_STARTED(charge)", "STEP_SUCCEEDED(charge)", "STEP_STARTED(ship)",
                          "STEP_SUCCEEDED(ship)", "SAGA_COMPLETED"));
}

TEST(EngineTest, OutputIsKeptForLaterSteps) {
  Driver d(MakeDef(kThree));
  d.Start();
  d.Result(0, CallKind::kAction, 1, {}, {{"reservation_id", "r-1"}, {"big", 9007199254740993ULL}});
  EXPECT_EQ(d.state().steps[0].output["reservation_id"], "r-1");
  EXPECT_EQ(d.state().steps[0].output["big"].get<uint64_t>(), 9007199254740993ULL);
}

TEST(EngineTest, BusinessFailureAtSecondStepCompensatesOnlyTheFirst) {
  Driver d(MakeDef(kThree));
  d.Start();
  d.Ok(0);
  auto dec = d.Result(1, CallKind::kAction, 1, absl::FailedPreconditionError("card declined"));
  EXPECT_THAT(Calls(dec), ElementsAre(std::pair(0, CallKind::kCompensation)));
  EXPECT_EQ(d.state().status, SagaStatus::kCompensating);
  EXPECT_EQ(d.state().error, "step 'charge' failed: FAILED_PRECONDITION: card declined");
  EXPECT_TRUE(Calls(d.CompOk(0)).empty());
  EXPECT_EQ(d.state().status, SagaStatus::kCompensated);
  EXPECT_EQ(d.state().steps[1].status, StepStatus::kFailed);
  EXPECT_FALSE(d.state().steps[1].outcome_unknown);
  EXPECT_THAT(d.Types(),
              ElementsAre("SAGA_STARTED", "STEP_STARTED(reserve)", "STEP_SUCCEEDED(reserve)",
                          "STEP_STARTED(charge)", "STEP_FAILED(charge)", "SAGA_COMPENSATING",
                          "COMPENSATION_STARTED(reserve)", "COMPENSATION_SUCCEEDED(reserve)",
                          "SAGA_COMPENSATED"));
}

TEST(EngineTest, FailureAtLastStepCompensatesInReverseOrder) {
  Driver d(MakeDef(kThree));
  d.Start();
  d.Ok(0);
  d.Ok(1);
  auto dec = d.Result(2, CallKind::kAction, 1, absl::InvalidArgumentError("no such address"));
  EXPECT_THAT(Calls(dec), ElementsAre(std::pair(1, CallKind::kCompensation)));
  EXPECT_THAT(Calls(d.CompOk(1)), ElementsAre(std::pair(0, CallKind::kCompensation)));
  d.CompOk(0);
  EXPECT_EQ(d.state().status, SagaStatus::kCompensated);
}

TEST(EngineTest, TransientFailureIsRetriedAfterBackoff) {
  Driver d(MakeDef(kThree));
  d.Start();
  auto dec = d.Result(0, CallKind::kAction, 1, absl::UnavailableError("down"));
  EXPECT_TRUE(dec.commands.empty());
  EXPECT_EQ(dec.wake_at, kT0 + absl::Milliseconds(100));
  EXPECT_TRUE(d.Timer().commands.empty()) << "not due yet";
  d.Advance(absl::Milliseconds(100));
  dec = d.Timer();
  ASSERT_EQ(dec.commands.size(), 1u);
  EXPECT_EQ(dec.commands[0].attempt, 2);
  d.Ok(0, 2);
  EXPECT_EQ(d.state().steps[0].status, StepStatus::kSucceeded);
  EXPECT_EQ(d.state().steps[0].attempts, 2);
}

TEST(EngineTest, BackoffGrowsAndIsCapped) {
  definition::RetryPolicy p;
  p.initial_backoff = absl::Milliseconds(100);
  p.max_backoff = absl::Milliseconds(500);
  p.multiplier = 2;
  p.jitter = 0;
  std::mt19937_64 rng(1);
  EXPECT_EQ(Backoff(p, 2, rng), absl::Milliseconds(100));
  EXPECT_EQ(Backoff(p, 3, rng), absl::Milliseconds(200));
  EXPECT_EQ(Backoff(p, 4, rng), absl::Milliseconds(400));
  EXPECT_EQ(Backoff(p, 5, rng), absl::Milliseconds(500));
  p.jitter = 0.2;
  for (int i = 0; i < 100; ++i) {
    absl::Duration b = Backoff(p, 2, rng);
    EXPECT_GE(b, absl::Milliseconds(80));
    EXPECT_LE(b, absl::Milliseconds(120));
  }
}

TEST(EngineTest, ExhaustedRetriesFailWithUnknownOutcomeAndAreCompensated) {
  Driver d(MakeDef({{"a"}, {"b"}}));
  d.Start();
  d.Ok(0);
  for (int attempt = 1; attempt <= 3; ++attempt) {
    auto dec = d.Result(1, CallKind::kAction, attempt, absl::DeadlineExceededError("timeout"));
    d.Advance(absl::Seconds(20));
    if (attempt < 3) d.Timer();
  }
  EXPECT_EQ(d.state().steps[1].status, StepStatus::kCompensating);
  EXPECT_TRUE(d.state().steps[1].outcome_unknown);
  // b (unknown outcome) is compensated first, then a.
  EXPECT_THAT(Calls(d.CompOk(1)), ElementsAre(std::pair(0, CallKind::kCompensation)));
  d.CompOk(0);
  EXPECT_EQ(d.state().status, SagaStatus::kCompensated);
}

TEST(EngineTest, CompensationFailingBeyondPolicyParksThenRetryResumes) {
  Driver d(MakeDef(kThree));
  d.Start();
  d.Ok(0);
  d.Result(1, CallKind::kAction, 1, absl::FailedPreconditionError("declined"));
  d.Result(0, CallKind::kCompensation, 1, absl::UnavailableError("inventory down"));
  d.Advance(absl::Seconds(1));
  auto dec = d.Timer();
  ASSERT_EQ(dec.commands.size(), 1u);
  EXPECT_EQ(dec.commands[0].attempt, 2);
  d.Result(0, CallKind::kCompensation, 2, absl::UnavailableError("inventory down"));
  EXPECT_EQ(d.state().status, SagaStatus::kFailed);
  EXPECT_EQ(d.state().error, "compensation of step 'reserve' failed: UNAVAILABLE: inventory down");
  EXPECT_TRUE(d.Timer().events.empty()) << "parked: nothing happens by itself";

  dec = d.Fire({.kind = Trigger::Kind::kRetry});
  ASSERT_EQ(dec.commands.size(), 1u);
  EXPECT_EQ(dec.commands[0].call, CallKind::kCompensation);
  EXPECT_EQ(dec.commands[0].attempt, 1);
  d.CompOk(0);
  EXPECT_EQ(d.state().status, SagaStatus::kCompensated);
}

TEST(EngineTest, AbortDuringBackoffCompensatesTheStepInBackoff) {
  Driver d(MakeDef(kThree));
  d.Start();
  d.Ok(0);
  d.Result(1, CallKind::kAction, 1, absl::UnavailableError("payment down"));
  auto dec = d.Fire({.kind = Trigger::Kind::kAbort, .reason = "customer cancelled"});
  EXPECT_EQ(d.state().status, SagaStatus::kCompensating);
  EXPECT_EQ(d.state().error, "aborted: customer cancelled");
  // charge may have taken effect: it is compensated before reserve.
  EXPECT_THAT(Calls(dec), ElementsAre(std::pair(1, CallKind::kCompensation)));
  EXPECT_THAT(Calls(d.CompOk(1)), ElementsAre(std::pair(0, CallKind::kCompensation)));
  d.CompOk(0);
  EXPECT_EQ(d.state().status, SagaStatus::kCompensated);
}

TEST(EngineTest, AbortWaitsForTheCallInFlight) {
  Driver d(MakeDef(kThree));
  d.Start();
  d.Ok(0);
  auto dec = d.Fire({.kind = Trigger::Kind::kAbort, .reason = "stop"});
  EXPECT_TRUE(dec.commands.empty()) << "charge is in flight";
  dec = d.Ok(1);
  EXPECT_THAT(Calls(dec), ElementsAre(std::pair(1, CallKind::kCompensation)));
  d.CompOk(1);
  d.CompOk(0);
  EXPECT_EQ(d.state().status, SagaStatus::kCompensated);
  EXPECT_EQ(d.state().steps[2].status, StepStatus::kPending);
}

TEST(EngineTest, AbortAfterTheEndChangesNothing) {
  Driver d(MakeDef({{"a"}}));
  d.Start();
  d.Ok(0);
  EXPECT_TRUE(d.Fire({.kind = Trigger::Kind::kAbort, .reason = "late"}).events.empty());
  EXPECT_EQ(d.state().status, SagaStatus::kCompleted);
}

TEST(EngineTest, StaleAndDuplicateResultsAreIgnored) {
  Driver d(MakeDef(kThree));
  d.Start();
  d.Ok(0);
  EXPECT_TRUE(d.Ok(0).events.empty()) << "duplicate";
  EXPECT_TRUE(d.Ok(1, 7).events.empty()) << "wrong attempt";
  EXPECT_TRUE(d.CompOk(1).events.empty()) << "wrong kind";
  EXPECT_TRUE(d.Ok(99).events.empty()) << "no such step";
}

TEST(EngineTest, ResumeResendsTheAttemptInFlight) {
  Driver d(MakeDef(kThree));
  d.Start();
  auto dec = d.Fire({.kind = Trigger::Kind::kResume});
  ASSERT_EQ(dec.commands.size(), 1u);
  EXPECT_EQ(dec.commands[0].attempt, 2);
  EXPECT_EQ(dec.events[0].detail["resumed"], true);
}

TEST(EngineTest, ResumeAfterLastAttemptFailsTheStepAsUnknown) {
  Driver d(MakeDef({{"a", true, {}, 1}}));
  d.Start();
  d.Fire({.kind = Trigger::Kind::kResume});
  EXPECT_EQ(d.state().steps[0].status, StepStatus::kCompensating);
  EXPECT_TRUE(d.state().steps[0].outcome_unknown);
}

TEST(EngineTest, ReplayingTheHistoryRebuildsTheState) {
  Driver d(MakeDef(kThree));
  d.Start();
  d.Ok(0);
  d.Result(1, CallKind::kAction, 1, absl::UnavailableError("x"));
  d.Advance(absl::Seconds(1));
  d.Timer();
  d.Result(1, CallKind::kAction, 2, absl::FailedPreconditionError("declined"));
  SagaState replay = NewState(d.def());
  for (const auto& e : d.history()) Apply(d.def(), replay, e);
  EXPECT_EQ(replay.status, d.state().status);
  EXPECT_EQ(replay.last_seq, d.state().last_seq);
  EXPECT_EQ(replay.error, d.state().error);
  for (size_t i = 0; i < replay.steps.size(); ++i) {
    EXPECT_EQ(replay.steps[i].status, d.state().steps[i].status) << i;
    EXPECT_EQ(replay.steps[i].attempts, d.state().steps[i].attempts) << i;
    EXPECT_EQ(replay.steps[i].in_flight, d.state().steps[i].in_flight) << i;
    EXPECT_EQ(replay.steps[i].output, d.state().steps[i].output) << i;
  }
}

TEST(EngineTest, IndependentStepsRunTogetherAndCompensateAfterTheirDependents) {
  // a, b start together; c runs after both.
  Driver d(MakeDef({{"a", true, {}}, {"b", true, {}}, {"c", true, {0, 1}}}, /*chain=*/false));
  EXPECT_THAT(Calls(d.Start()),
              ElementsAre(std::pair(0, CallKind::kAction), std::pair(1, CallKind::kAction)));
  EXPECT_TRUE(d.Ok(0).commands.empty()) << "c waits for b";
  EXPECT_THAT(Calls(d.Ok(1)), ElementsAre(std::pair(2, CallKind::kAction)));
  auto dec = d.Result(2, CallKind::kAction, 1, absl::DeadlineExceededError("slow"));
  d.Advance(absl::Seconds(30));
  d.Timer();
  d.Result(2, CallKind::kAction, 2, absl::NotFoundError("gone"));
  // c failed definitely: a and b are compensated, in parallel.
  EXPECT_EQ(d.state().steps[0].status, StepStatus::kCompensating);
  EXPECT_EQ(d.state().steps[1].status, StepStatus::kCompensating);
  EXPECT_EQ(d.state().steps[2].status, StepStatus::kFailed);
}

TEST(EngineTest, ParallelFailureWaitsForTheSiblingInFlight) {
  Driver d(MakeDef({{"a", true, {}}, {"b", true, {}}}, /*chain=*/false));
  d.Start();
  auto dec = d.Result(0, CallKind::kAction, 1, absl::FailedPreconditionError("no"));
  EXPECT_TRUE(dec.commands.empty());
  EXPECT_EQ(d.state().status, SagaStatus::kCompensating);
  EXPECT_EQ(d.state().steps[1].status, StepStatus::kRunning);
  // b succeeds late; it is then compensated.
  EXPECT_THAT(Calls(d.Ok(1)), ElementsAre(std::pair(1, CallKind::kCompensation)));
  d.CompOk(1);
  EXPECT_EQ(d.state().status, SagaStatus::kCompensated);
}

TEST(EngineTest, RetryableErrorDuringCompensationIsNotRetriedForward) {
  Driver d(MakeDef({{"a", true, {}}, {"b", true, {}}}, /*chain=*/false));
  d.Start();
  d.Result(0, CallKind::kAction, 1, absl::FailedPreconditionError("no"));
  d.Result(1, CallKind::kAction, 1, absl::UnavailableError("flaky"));
  EXPECT_EQ(d.state().steps[1].status, StepStatus::kCompensating) << "unknown outcome";
}

TEST(EngineTest, StepWithoutCompensationIsSkipped) {
  Driver d(MakeDef({{"a"}, {"b", false}, {"c"}}));
  d.Start();
  d.Ok(0);
  d.Ok(1);
  auto dec = d.Result(2, CallKind::kAction, 1, absl::FailedPreconditionError("no"));
  EXPECT_THAT(Calls(dec), ElementsAre(std::pair(0, CallKind::kCompensation)));
  d.CompOk(0);
  EXPECT_EQ(d.state().status, SagaStatus::kCompensated);
}

}  // namespace
}  // namespace saga::engine
