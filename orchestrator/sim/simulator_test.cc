#include "orchestrator/sim/simulator.h"

#include <sys/wait.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "google/protobuf/descriptor.h"
#include "gtest/gtest.h"
#include "orchestrator/sim/scenario.h"

namespace saga::sim {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::StartsWith;

const std::string kSource = SAGA_SOURCE_DIR;
const std::string kOrderFile = kSource + "/saga-defs/order-fulfillment.yaml";
const std::string kProtoPath = kSource + "/examples/participants/proto";
const std::string kInput =
    R"({"order_id":"1001","sku":"book-42","quantity":1,"amount_cents":2599,"address":"1 Main St"})";

std::shared_ptr<definition::Definition> OrderDef() {
  static auto* def = [] {
    auto loaded = LoadDefinitionFile(kOrderFile, {kProtoPath});
    EXPECT_TRUE(loaded.ok()) << loaded.status();
    return new std::shared_ptr<definition::Definition>(loaded.ok() ? *loaded : nullptr);
  }();
  return *def;
}

absl::StatusOr<Script> Build(std::vector<ScriptFlag> flags) {
  return BuildScript(*OrderDef(), flags);
}

std::string ErrorOf(std::vector<ScriptFlag> flags) {
  auto s = Build(std::move(flags));
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  return std::string(s.status().message());
}

Result Sim(std::vector<ScriptFlag> flags, std::string input = kInput, uint64_t seed = 1) {
  Options options;
  options.input = nlohmann::json::parse(input);
  auto script = Build(std::move(flags));
  EXPECT_TRUE(script.ok()) << script.status();
  if (script.ok()) options.script = *script;
  options.seed = seed;
  auto result = Simulate(*OrderDef(), options);
  EXPECT_TRUE(result.ok()) << result.status();
  return result.ok() ? *result : Result{};
}

using K = ScriptFlag::Kind;

// --- flag parsing ----------------------------------------------------------------------------

TEST(BuildScriptTest, CountedFailureThenSuccess) {
  auto s = Build({{K::kFail, "charge=UNAVAILABLEx2"}});
  ASSERT_TRUE(s.ok()) << s.status();
  const auto& list = s->steps.at("charge").action;
  ASSERT_EQ(list.size(), 1u);
  EXPECT_EQ(list[0].kind, Outcome::Kind::kFail);
  EXPECT_EQ(list[0].code, absl::StatusCode::kUnavailable);
  EXPECT_EQ(list[0].count, 2);
  EXPECT_EQ(list[0].source, "--fail charge=UNAVAILABLEx2");
  EXPECT_TRUE(s->steps.at("charge").compensation.empty());
}

TEST(BuildScriptTest, UncountedFailureAnswersEveryAttemptAndCodesAreCaseInsensitive) {
  auto s = Build({{K::kFail, "charge=failed_precondition"}});
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->steps.at("charge").action[0].code, absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(s->steps.at("charge").action[0].count, 0);
}

TEST(BuildScriptTest, CodesContainingXAreNotCounts) {
  auto s =
      Build({{K::kFail, "ship=DEADLINE_EXCEEDED"}, {K::kFail, "reserve=RESOURCE_EXHAUSTEDx3"}});
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->steps.at("ship").action[0].code, absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(s->steps.at("ship").action[0].count, 0);
  EXPECT_EQ(s->steps.at("reserve").action[0].code, absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(s->steps.at("reserve").action[0].count, 3);
}

TEST(BuildScriptTest, TimeoutsCompensationsAndAbortInOrder) {
  auto s = Build({{K::kTimeout, "chargex1"},
                  {K::kFail, "charge=UNAVAILABLE"},
                  {K::kCompFail, "reserve=INTERNALx4"},
                  {K::kCompTimeout, "charge"},
                  {K::kAbortAfter, "reserve"}});
  ASSERT_TRUE(s.ok()) << s.status();
  const auto& charge = s->steps.at("charge");
  ASSERT_EQ(charge.action.size(), 2u);
  EXPECT_EQ(charge.action[0].kind, Outcome::Kind::kTimeout);
  EXPECT_EQ(charge.action[0].count, 1);
  EXPECT_EQ(charge.action[1].kind, Outcome::Kind::kFail);
  ASSERT_EQ(charge.compensation.size(), 1u);
  EXPECT_EQ(charge.compensation[0].kind, Outcome::Kind::kTimeout);
  EXPECT_EQ(charge.compensation[0].count, 0);
  EXPECT_EQ(s->steps.at("reserve").compensation[0].code, absl::StatusCode::kInternal);
  EXPECT_EQ(s->abort_after, "reserve");
}

TEST(BuildScriptTest, UnknownStepIsNamedWithASuggestion) {
  EXPECT_EQ(ErrorOf({{K::kFail, "chrage=UNAVAILABLE"}}),
            "--fail chrage=UNAVAILABLE: unknown step 'chrage' (did you mean 'charge'? steps: "
            "reserve, charge, ship)");
  EXPECT_EQ(ErrorOf({{K::kTimeout, "payx2"}}),
            "--timeout payx2: unknown step 'payx2' (steps: reserve, charge, ship)");
  EXPECT_EQ(ErrorOf({{K::kAbortAfter, "reserv"}}),
            "--abort-after reserv: unknown step 'reserv' (did you mean 'reserve'? steps: "
            "reserve, charge, ship)");
}

TEST(BuildScriptTest, BadCodesAndCountsArePrecise) {
  EXPECT_THAT(
      ErrorOf({{K::kFail, "charge=UNAVAILBLE"}}),
      StartsWith("--fail charge=UNAVAILBLE: unknown code 'UNAVAILBLE' (codes: CANCELLED, "));
  EXPECT_EQ(ErrorOf({{K::kFail, "charge=OK"}}),
            "--fail charge=OK: OK is not a failure: attempts that are not scripted succeed");
  EXPECT_EQ(ErrorOf({{K::kFail, "charge=UNAVAILABLEx0"}}),
            "--fail charge=UNAVAILABLEx0: the count after 'x' must be 1..1000, got '0'");
  EXPECT_EQ(ErrorOf({{K::kFail, "charge"}}),
            "--fail charge: expected STEP=CODE[xN], e.g. charge=UNAVAILABLEx2");
  EXPECT_EQ(ErrorOf({{K::kFail, "=UNAVAILABLE"}}),
            "--fail =UNAVAILABLE: expected STEP=CODE[xN], e.g. charge=UNAVAILABLEx2");
}

TEST(BuildScriptTest, CompensationFlagsNeedACompensation) {
  EXPECT_EQ(ErrorOf({{K::kCompFail, "ship=UNAVAILABLE"}}),
            "--comp-fail ship=UNAVAILABLE: step 'ship' has no compensation");
  EXPECT_EQ(ErrorOf({{K::kCompTimeout, "ship"}}),
            "--comp-timeout ship: step 'ship' has no compensation");
}

TEST(BuildScriptTest, EntriesThatCanNeverApplyAreRefused) {
  EXPECT_EQ(ErrorOf({{K::kFail, "charge=UNAVAILABLE"}, {K::kFail, "charge=INTERNAL"}}),
            "--fail charge=INTERNAL: never used: '--fail charge=UNAVAILABLE' already answers "
            "every attempt (add xN to it)");
  EXPECT_EQ(ErrorOf({{K::kAbortAfter, "reserve"}, {K::kAbortAfter, "charge"}}),
            "--abort-after charge: only one --abort-after is allowed (already 'reserve')");
}

// --- simulation ------------------------------------------------------------------------------

TEST(SimulateTest, TransientFailuresAreRetriedWithBackoffThenSucceed) {
  Result r = Sim({{K::kFail, "charge=UNAVAILABLEx2"}});
  EXPECT_EQ(r.status, engine::SagaStatus::kCompleted);
  EXPECT_THAT(
      EventSummary(*OrderDef(), r),
      ElementsAre("SAGA_STARTED", "STEP_STARTED reserve", "STEP_SUCCEEDED reserve",
                  "STEP_STARTED charge", "STEP_RETRY_SCHEDULED charge", "STEP_STARTED charge",
                  "STEP_RETRY_SCHEDULED charge", "STEP_STARTED charge", "STEP_SUCCEEDED charge",
                  "STEP_STARTED ship", "STEP_SUCCEEDED ship", "SAGA_COMPLETED"));
  EXPECT_EQ(r.calls.size(), 5u);
  EXPECT_EQ(r.compensations, 0);
  // Backoffs of 100ms and 200ms, each with up to 20% jitter.
  EXPECT_GE(r.elapsed, absl::Milliseconds(240));
  EXPECT_LE(r.elapsed, absl::Milliseconds(360));
  EXPECT_TRUE(r.notes.empty());
}

TEST(SimulateTest, TimeoutTakesTheStepTimeoutAndLeavesTheOutcomeUnknown) {
  Result r = Sim({{K::kTimeout, "ship"}});
  EXPECT_EQ(r.status, engine::SagaStatus::kCompensated);
  // Four attempts of 2s each, plus backoffs of about 0.1 + 0.2 + 0.4s.
  EXPECT_GE(r.elapsed, absl::Milliseconds(8000 + 560));
  EXPECT_LE(r.elapsed, absl::Milliseconds(8000 + 840));
  const engine::Event* failed = nullptr;
  for (const auto& te : r.events) {
    if (te.event.type == engine::EventType::kStepFailed) failed = &te.event;
  }
  ASSERT_NE(failed, nullptr);
  EXPECT_EQ(failed->attempt, 4);
  EXPECT_EQ(failed->detail["code"], "DEADLINE_EXCEEDED");
  EXPECT_EQ(failed->detail["unknown"], true);
  EXPECT_EQ(r.error, "step 'ship' failed: DEADLINE_EXCEEDED: scripted: no answer within 2s");
}

TEST(SimulateTest, RequestsAreRenderedWithRealTemplatesAndKeys) {
  Result r = Sim({{K::kFail, "ship=FAILED_PRECONDITION"}});
  ASSERT_EQ(r.calls.size(), 5u);
  EXPECT_EQ(r.calls[0].idempotency_key, "sim-saga/reserve/action");
  EXPECT_EQ(r.calls[0].method, "shop.v1.Inventory/Reserve");
  EXPECT_EQ(r.calls[0].request,
            nlohmann::json::parse(R"({"order_id":"1001","sku":"book-42","quantity":1})"));
  // Refund, then release, each using the synthetic output of its step.
  EXPECT_EQ(r.calls[3].idempotency_key, "sim-saga/charge/compensation");
  EXPECT_EQ(r.calls[3].request["payment_id"], "payment_id-charge-sim");
  EXPECT_EQ(r.calls[4].idempotency_key, "sim-saga/reserve/compensation");
  EXPECT_EQ(r.calls[4].request["reservation_id"], "reservation_id-reserve-sim");
  EXPECT_EQ(r.compensations, 2);
}

TEST(SimulateTest, TemplateErrorsFailTheStepAsTheRuntimeWould) {
  // No "sku": the reserve request cannot be built.
  Result r = Sim({}, R"({"order_id":"1","quantity":1,"amount_cents":5,"address":"x"})");
  EXPECT_EQ(r.status, engine::SagaStatus::kCompensated);
  ASSERT_EQ(r.calls.size(), 1u);
  EXPECT_EQ(r.calls[0].outcome, "not sent");
  EXPECT_THAT(r.error, StartsWith("step 'reserve' failed: INVALID_ARGUMENT: cannot build the "
                                  "request: "));
  EXPECT_THAT(r.error, HasSubstr("${input.sku}"));
}

TEST(SimulateTest, RequestsThatDoNotFitTheMessageAreRefused) {
  Result r =
      Sim({}, R"({"order_id":"1","sku":"s","quantity":"lots","amount_cents":5,"address":"x"})");
  EXPECT_EQ(r.status, engine::SagaStatus::kCompensated);
  EXPECT_THAT(r.error, StartsWith("step 'reserve' failed: INVALID_ARGUMENT: request does not "
                                  "fit shop.v1.ReserveRequest: "));
}

TEST(SimulateTest, AbortAfterAStepCompensatesWhatWasDone) {
  Result r = Sim({{K::kAbortAfter, "charge"}});
  EXPECT_EQ(r.status, engine::SagaStatus::kCompensated);
  EXPECT_EQ(r.error, "aborted: scripted: --abort-after charge");
}

TEST(SimulateTest, UnusedScriptEntriesAreNoted) {
  Result r = Sim({{K::kFail, "reserve=FAILED_PRECONDITION"},
                  {K::kFail, "ship=UNAVAILABLE"},
                  {K::kFail, "charge=UNAVAILABLEx9"}});
  EXPECT_THAT(r.notes, ElementsAre("--fail charge=UNAVAILABLEx9: never used; step 'charge' made 0 "
                                   "forward attempts",
                                   "--fail ship=UNAVAILABLE: never used; step 'ship' made 0 "
                                   "forward attempts"));
  r = Sim({{K::kFail, "charge=UNAVAILABLEx9"}});
  EXPECT_THAT(r.notes, ElementsAre("--fail charge=UNAVAILABLEx9: used 4 of 9 times; step "
                                   "'charge' made 4 forward attempts"));
}

TEST(SimulateTest, SameSeedSameTraceOtherSeedOtherJitter) {
  const std::vector<ScriptFlag> flags = {{K::kFail, "charge=UNAVAILABLE"},
                                         {K::kCompFail, "reserve=UNAVAILABLEx3"}};
  Result a = Sim(flags, kInput, 7);
  Result b = Sim(flags, kInput, 7);
  Result c = Sim(flags, kInput, 8);
  EXPECT_EQ(FormatTrace(*OrderDef(), a), FormatTrace(*OrderDef(), b));
  Options options;
  EXPECT_EQ(TraceJson(*OrderDef(), options, a).dump(), TraceJson(*OrderDef(), options, b).dump());
  EXPECT_NE(a.elapsed, c.elapsed);
  EXPECT_EQ(EventSummary(*OrderDef(), a), EventSummary(*OrderDef(), c));
}

TEST(SimulateTest, StopsAfterTheEventLimit) {
  Options options;
  options.input = nlohmann::json::parse(kInput);
  options.max_events = 5;
  auto r = Simulate(*OrderDef(), options);
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->stopped);
  EXPECT_EQ(r->status, engine::SagaStatus::kRunning);
  EXPECT_EQ(r->stop_reason, "stopped after 5 events (limit 5)");
  EXPECT_THAT(FormatTrace(*OrderDef(), *r),
              HasSubstr("final: RUNNING (stopped after 5 events (limit 5))"));
}

TEST(SimulateTest, InputMustBeAnObject) {
  Options options;
  options.input = nlohmann::json::array();
  EXPECT_EQ(Simulate(*OrderDef(), options).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseInput("[1]").status().message(), "--input: the saga input must be a JSON object");
  EXPECT_EQ(ParseInput("{").status().message(), "--input: not valid JSON");
}

TEST(SyntheticResponseTest, FieldsGetPlausibleValuesAsTheInvokerRendersThem) {
  const auto* charge = OrderDef()->FindStep("charge");
  ASSERT_NE(charge, nullptr);
  // int64 is a string in proto3 JSON, exactly as the gRPC invoker hands responses to templates.
  EXPECT_EQ(SyntheticResponse(*charge->action.method, "charge"),
            nlohmann::json::parse(R"({"payment_id":"payment_id-charge-sim","charged_cents":"1"})"));
  EXPECT_EQ(SyntheticResponse(*charge->compensation->method, "charge"),
            nlohmann::json::parse(R"({"refunded":true})"));
}

TEST(FormatTest, HumanTraceLinesAndFinalLine) {
  Result r = Sim({{K::kFail, "charge=UNAVAILABLEx1"}, {K::kFail, "ship=FAILED_PRECONDITION"}});
  const std::string trace = FormatTrace(*OrderDef(), r);
  EXPECT_THAT(trace, HasSubstr("+0.000s  SAGA_STARTED\n"));
  EXPECT_THAT(trace, HasSubstr("STEP_STARTED            reserve  #1  -> shop.v1.Inventory/Reserve "
                               "{\"order_id\":\"1001\",\"quantity\":1,\"sku\":\"book-42\"}\n"));
  EXPECT_THAT(trace, HasSubstr("STEP_RETRY_SCHEDULED    charge   #1  UNAVAILABLE (scripted); "
                               "retry in 0."));
  EXPECT_THAT(trace, HasSubstr("STEP_FAILED             ship     #1  FAILED_PRECONDITION "
                               "(scripted)\n"));
  EXPECT_THAT(trace, HasSubstr("final: COMPENSATED (step 'ship' failed: FAILED_PRECONDITION: "
                               "scripted)  calls: 6  compensations: 2  virtual time: 0."));
}

// --- golden scenarios ------------------------------------------------------------------------

std::vector<std::string> ScenarioFiles() {
  std::vector<std::string> out;
  for (const auto& entry : std::filesystem::directory_iterator(kSource + "/saga-defs/testdata")) {
    if (entry.path().extension() == ".yaml") out.push_back(entry.path().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

class GoldenScenarioTest : public ::testing::TestWithParam<std::string> {};

TEST_P(GoldenScenarioTest, MatchesExpectedEventsAndFinalStatus) {
  auto scenario = LoadScenario(GetParam());
  ASSERT_TRUE(scenario.ok()) << scenario.status();
  auto run = RunScenario(*scenario);
  ASSERT_TRUE(run.ok()) << run.status();
  const std::string trace = FormatTrace(*run->def, run->result);
  EXPECT_FALSE(run->result.stopped) << trace;
  EXPECT_EQ(EventSummary(*run->def, run->result), scenario->expect) << trace;
  EXPECT_EQ(engine::SagaStatusName(run->result.status), scenario->final_status) << trace;
  EXPECT_TRUE(run->result.notes.empty()) << trace;
}

INSTANTIATE_TEST_SUITE_P(SagaDefs, GoldenScenarioTest, ::testing::ValuesIn(ScenarioFiles()),
                         [](const ::testing::TestParamInfo<std::string>& param) {
                           std::string name = std::filesystem::path(param.param).stem().string();
                           for (char& ch : name) {
                             if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           }
                           return name;
                         });

TEST(GoldenScenarioFilesTest, CoverTheExampleSaga) { EXPECT_GE(ScenarioFiles().size(), 7u); }

// --- the sagactl binary ----------------------------------------------------------------------

struct Exec {
  int code = -1;
  std::string out;
};

Exec RunSagactl(const std::string& args) {
  const std::string command = std::string(SAGACTL_PATH) + " " + args + " 2>&1";
  Exec e;
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return e;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), pipe)) > 0) e.out.append(buf.data(), n);
  const int status = pclose(pipe);
  e.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return e;
}

std::string LastLine(const std::string& text) {
  std::string s = text;
  while (!s.empty() && s.back() == '\n') s.pop_back();
  const size_t nl = s.rfind('\n');
  return nl == std::string::npos ? s : s.substr(nl + 1);
}

const std::string kCliArgs = "simulate " + kOrderFile + " --proto-path " + kProtoPath +
                             " --input '" + kInput + "' --fail charge=FAILED_PRECONDITION";

TEST(SagactlSimulateTest, HumanOutputEndsWithTheFinalLine) {
  Exec e = RunSagactl(kCliArgs);
  EXPECT_EQ(e.code, 0) << e.out;
  EXPECT_EQ(LastLine(e.out),
            "final: COMPENSATED (step 'charge' failed: FAILED_PRECONDITION: scripted)  calls: 3  "
            "compensations: 1  virtual time: 0.000s");
}

TEST(SagactlSimulateTest, JsonOutputParses) {
  Exec e = RunSagactl(kCliArgs + " -o json");
  ASSERT_EQ(e.code, 0) << e.out;
  nlohmann::json doc = nlohmann::json::parse(e.out, nullptr, false);
  ASSERT_FALSE(doc.is_discarded()) << e.out;
  EXPECT_EQ(doc["final"]["status"], "COMPENSATED");
  EXPECT_EQ(doc["events"].size(), 9u);
  EXPECT_EQ(doc["events"][0]["type"], "SAGA_STARTED");
  EXPECT_EQ(doc["requests"][0]["idempotency_key"], "sim-saga/reserve/action");
  EXPECT_EQ(doc["requests"][2]["call"], "compensation");
}

TEST(SagactlSimulateTest, FlagsApplyInCommandLineOrder) {
  Exec e = RunSagactl("simulate " + kOrderFile + " --proto-path " + kProtoPath + " --input '" +
                      kInput + "' --timeout chargex1 --fail charge=INTERNAL -o json");
  ASSERT_EQ(e.code, 0) << e.out;
  nlohmann::json doc = nlohmann::json::parse(e.out, nullptr, false);
  ASSERT_FALSE(doc.is_discarded()) << e.out;
  EXPECT_EQ(doc["final"]["error"], "step 'charge' failed: INTERNAL: scripted");
  EXPECT_EQ(doc["requests"][1]["outcome"], "timeout");
  EXPECT_EQ(doc["requests"][2]["outcome"], "INTERNAL (scripted)");
}

TEST(SagactlSimulateTest, BadFlagsExitOneWithOneLine) {
  Exec e = RunSagactl("simulate " + kOrderFile + " --proto-path " + kProtoPath +
                      " --fail chrage=UNAVAILABLE");
  EXPECT_EQ(e.code, 1);
  EXPECT_EQ(e.out,
            "sagactl: --fail chrage=UNAVAILABLE: unknown step 'chrage' (did you mean 'charge'? "
            "steps: reserve, charge, ship)\n");
  e = RunSagactl("simulate " + kSource + "/no/such.yaml");
  EXPECT_EQ(e.code, 1);
  EXPECT_EQ(e.out, "sagactl: cannot read " + kSource + "/no/such.yaml\n");
}

}  // namespace
}  // namespace saga::sim
