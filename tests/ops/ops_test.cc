// Operations tests: metrics, tracing, JSON logs, shutdown and dev mode, through the real sagad
// binary (child processes) or an in-process server, with the example shop participants.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "orchestrator/server/dev_postgres.h"
#include "tests/integration/fixture.h"
#include "tests/ops/ops_util.h"

namespace saga::testing {
namespace {

constexpr char kTraceId[] = "4bf92f3577b34da6a3ce929d0e0e4736";
constexpr char kParentSpan[] = "00f067aa0ba902b7";

nlohmann::json Order(const std::string& id, nlohmann::json behavior = nullptr) {
  nlohmann::json input = {{"order_id", id},
                          {"sku", "book-42"},
                          {"quantity", 1},
                          {"amount_cents", 2599},
                          {"address", "1 Main St"}};
  if (!behavior.is_null()) input["behavior"] = std::move(behavior);
  return input;
}

// Every line of `log` is a JSON object with ts, level and msg.
::testing::AssertionResult AllJsonLines(const std::string& log,
                                        std::vector<nlohmann::json>* lines) {
  int n = 0;
  for (absl::string_view line : absl::StrSplit(log, '\n', absl::SkipEmpty())) {
    ++n;
    auto j = nlohmann::json::parse(std::string(line), nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object() || !j.contains("ts") || !j.contains("level") ||
        !j.contains("msg")) {
      return ::testing::AssertionFailure() << "line " << n << " is not a JSON log line: " << line;
    }
    lines->push_back(std::move(j));
  }
  if (n == 0) return ::testing::AssertionFailure() << "no log lines";
  return ::testing::AssertionSuccess();
}

class OpsTest : public SagaTest {
 protected:
  void SetUp() override {
    SagaTest::SetUp();
    tmp_ = (std::filesystem::temp_directory_path() /
            absl::StrCat("sagad-ops-", getpid(), "-", FreeLoopbackPort()))
               .string();
    std::filesystem::create_directories(tmp_);
  }
  void TearDown() override {
    SagaTest::TearDown();
    std::error_code ec;
    std::filesystem::remove_all(tmp_, ec);
  }

  // An in-process server with metrics on a free loopback port.
  void StartServerWithMetrics() {
    server::Config config;
    config.listen = "127.0.0.1:0";
    config.database_url = db_->url();
    config.definitions_dir = defs_dir_;
    config.proto_path = {proto_dir_};
    config.lease = absl::Seconds(3);
    config.renew_interval = absl::Seconds(1);
    config.poll_interval = absl::Milliseconds(200);
    config.metrics_listen = "127.0.0.1:0";
    auto server = server::Server::Start(config);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    ASSERT_GT(server_->metrics_port(), 0);
    ConnectTo(server_->address());
  }

  // Flags for a child sagad on the test database.
  std::vector<std::string> ChildArgs(const std::string& owner, int port, int metrics_port,
                                     const std::string& drain = "5s") {
    return {"--listen",         absl::StrCat("127.0.0.1:", port),
            "--database-url",   db_->url(),
            "--definitions",    defs_dir_,
            "--proto-path",     proto_dir_,
            "--owner-id",       owner,
            "--lease",          "2s",
            "--poll-interval",  "200ms",
            "--drain-timeout",  drain,
            "--metrics-listen", metrics_port > 0 ? absl::StrCat("127.0.0.1:", metrics_port) : "",
            "--log-format",     "json"};
  }

  std::map<std::string, double> Metrics(int port) {
    absl::StatusOr<std::string> text = Scrape(port);
    EXPECT_TRUE(text.ok()) << text.status();
    if (!text.ok()) return {};
    absl::StatusOr<std::map<std::string, double>> parsed = ParsePrometheusText(*text);
    EXPECT_TRUE(parsed.ok()) << parsed.status() << "\n" << *text;
    return parsed.ok() ? *parsed : std::map<std::string, double>{};
  }

  grpc::Status StartTraced(const std::string& definition, const nlohmann::json& input,
                           const std::string& traceparent, std::string* id) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    saga::v1::StartSagaRequest req;
    req.set_definition(definition);
    req.set_input_json(input.dump());
    req.set_traceparent(traceparent);
    saga::v1::StartSagaResponse resp;
    grpc::Status s = stub_->StartSaga(&ctx, req, &resp);
    *id = resp.saga_id();
    return s;
  }

  bool WaitForCall(const std::string& method, const std::string& order, absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    while (absl::Now() < deadline) {
      if (shop_->CallCount(method, order) > 0) return true;
      absl::SleepFor(absl::Milliseconds(20));
    }
    return false;
  }

  std::string tmp_;
};

double Value(const std::map<std::string, double>& m, const std::string& key) {
  auto it = m.find(key);
  return it == m.end() ? -1 : it->second;
}

TEST_F(OpsTest, MetricsCountWhatHappened) {
  StartServerWithMetrics();
  const std::string ok = Start("order-fast", Order("m1"));
  const std::string retried =
      Start("order-fast", Order("m2", {{"charge", {{"transient_failures", 1}}}}));
  const std::string declined =
      Start("order-fast", Order("m3", {{"charge", {{"fail", "declined"}}}}));
  EXPECT_TRUE(WaitForStatus(ok, saga::v1::SAGA_STATUS_COMPLETED));
  EXPECT_TRUE(WaitForStatus(retried, saga::v1::SAGA_STATUS_COMPLETED));
  EXPECT_TRUE(WaitForStatus(declined, saga::v1::SAGA_STATUS_COMPENSATED));
  {  // One failing RPC.
    grpc::ClientContext ctx;
    saga::v1::GetSagaRequest req;
    req.set_saga_id("not-a-uuid");
    saga::v1::Saga saga;
    EXPECT_EQ(stub_->GetSaga(&ctx, req, &saga).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  }
  const std::string def = "order-fast";
  std::map<std::string, double> m;
  // The finish is counted right after the commit that GetSaga sees: poll briefly.
  for (int i = 0; i < 100; ++i) {
    m = Metrics(server_->metrics_port());
    if (Value(m, SampleKey("saga_running")) == 0) break;
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_EQ(Value(m, SampleKey("saga_build_info", {{"version", std::string(server::Version())}})),
            1);
  EXPECT_EQ(Value(m, SampleKey("saga_started_total", {{"definition", def}})), 3);
  EXPECT_EQ(
      Value(m, SampleKey("saga_finished_total", {{"definition", def}, {"status", "completed"}})),
      2);
  EXPECT_EQ(
      Value(m, SampleKey("saga_finished_total", {{"definition", def}, {"status", "compensated"}})),
      1);
  EXPECT_EQ(Value(m, SampleKey("saga_running")), 0);
  EXPECT_EQ(Value(m, SampleKey("saga_duration_seconds_count",
                               {{"definition", def}, {"status", "completed"}})),
            2);
  auto attempts = [&](const std::string& step, const std::string& result) {
    return Value(m, SampleKey("saga_step_attempts_total",
                              {{"definition", def}, {"step", step}, {"result", result}}));
  };
  // What the participants saw.
  EXPECT_EQ(shop_->CallCount("shop.v1.Inventory/Reserve", "m1") +
                shop_->CallCount("shop.v1.Inventory/Reserve", "m2") +
                shop_->CallCount("shop.v1.Inventory/Reserve", "m3"),
            3);
  EXPECT_EQ(shop_->CallCount("shop.v1.Payment/Charge", "m2"), 2);
  EXPECT_EQ(attempts("reserve", "ok"), 3);
  EXPECT_EQ(attempts("charge", "ok"), 2);
  EXPECT_EQ(attempts("charge", "retryable"), 1);
  EXPECT_EQ(attempts("charge", "business_error"), 1);
  EXPECT_EQ(attempts("ship", "ok"), 2);
  EXPECT_EQ(attempts("ship", "retryable"), -1);  // never happened: no series
  EXPECT_EQ(Value(m, SampleKey("saga_step_duration_seconds_count",
                               {{"definition", def}, {"step", "charge"}})),
            4);
  EXPECT_EQ(Value(m, SampleKey("saga_step_duration_seconds_bucket",
                               {{"definition", def}, {"step", "charge"}, {"le", "+Inf"}})),
            4);
  EXPECT_GT(Value(m, SampleKey("saga_step_duration_seconds_sum",
                               {{"definition", def}, {"step", "charge"}})),
            0);
  EXPECT_EQ(
      Value(m, SampleKey("saga_compensations_total", {{"definition", def}, {"step", "reserve"}})),
      1);
  EXPECT_EQ(
      Value(m, SampleKey("saga_compensations_total", {{"definition", def}, {"step", "charge"}})),
      -1);  // a definite business error is not compensated
  EXPECT_EQ(Value(m, SampleKey("saga_lease_takeovers_total")), 0);
  EXPECT_EQ(Value(m, SampleKey("saga_fenced_writes_total")), 0);
  EXPECT_GT(Value(m, SampleKey("saga_db_commits_total")), 0);
  EXPECT_GE(Value(m, SampleKey("saga_db_committed_ops_total")),
            Value(m, SampleKey("saga_db_commits_total")));
  EXPECT_GE(Value(m, SampleKey("saga_db_pool_in_use")), 0);
  EXPECT_EQ(Value(m, SampleKey("saga_grpc_server_handled_total",
                               {{"grpc_method", "saga.v1.SagaOrchestrator/StartSaga"},
                                {"grpc_code", "OK"}})),
            3);
  EXPECT_EQ(Value(m, SampleKey("saga_grpc_server_handled_total",
                               {{"grpc_method", "saga.v1.SagaOrchestrator/GetSaga"},
                                {"grpc_code", "INVALID_ARGUMENT"}})),
            1);
  // No saga ids anywhere in the labels.
  for (const auto& [key, value] : m) {
    EXPECT_EQ(key.find(ok), std::string::npos) << key;
  }
}

TEST_F(OpsTest, AWaitingStartThatTheClientGivesUpOnIsDroppedAtOnce) {
  StartServerWithMetrics();
  const nlohmann::json input = Order("w1", {{"charge", {{"delay_ms", 1500}}}});
  auto start_and_wait = [&](absl::Duration deadline, saga::v1::StartSagaResponse* resp) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + deadline));
    saga::v1::StartSagaRequest req;
    req.set_definition("order-fulfillment");
    req.set_input_json(input.dump());
    req.set_idempotency_key("w1");
    req.set_wait(true);
    return stub_->StartSaga(&ctx, req, resp);
  };
  auto watchers = [&] {
    return Value(Metrics(server_->metrics_port()), SampleKey("saga_watchers"));
  };
  // Three clients give up long before the saga ends (its charge takes 1.5 s).
  for (int i = 0; i < 3; ++i) {
    saga::v1::StartSagaResponse resp;
    EXPECT_EQ(start_and_wait(absl::Milliseconds(200), &resp).error_code(),
              grpc::StatusCode::DEADLINE_EXCEEDED);
  }
  // Their calls and subscriptions are gone while the saga still runs.
  double left = -1;
  for (int i = 0; i < 50 && left != 0; ++i) {
    left = watchers();
    if (left != 0) absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_EQ(left, 0);
  EXPECT_EQ(shop_->CallCount("shop.v1.Shipping/Schedule", "w1"), 0);  // still running
  // A client that waits long enough gets the end, and the saga ran once.
  saga::v1::StartSagaResponse resp;
  grpc::Status s = start_and_wait(absl::Seconds(10), &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_FALSE(resp.created());
  EXPECT_EQ(resp.status(), saga::v1::SAGA_STATUS_COMPLETED);
  EXPECT_EQ(shop_->CallCount("shop.v1.Payment/Charge", "w1"), 1);
  EXPECT_EQ(watchers(), 0);
}

TEST_F(OpsTest, FinishedSagasAreDeletedAfterTheRetentionAndFailedOnesKept) {
  const int port = FreeLoopbackPort();
  const int metrics_port = FreeLoopbackPort();
  const std::string address = absl::StrCat("127.0.0.1:", port);
  std::vector<std::string> args = ChildArgs("keeper", port, metrics_port);
  args.insert(args.end(), {"--retention", "2s", "--purge-interval", "200ms"});
  SagadProcess p(args, tmp_ + "/retention.log");
  ASSERT_TRUE(WaitServing(address, absl::Seconds(20))) << p.Log();
  ConnectTo(address);

  const std::string completed = Start("order-fast", Order("r1"), "r1");
  const std::string compensated =
      Start("order-fast", Order("r2", {{"charge", {{"fail", "declined"}}}}), "r2");
  ASSERT_TRUE(WaitForStatus(completed, saga::v1::SAGA_STATUS_COMPLETED));
  ASSERT_TRUE(WaitForStatus(compensated, saga::v1::SAGA_STATUS_COMPENSATED));
  // A saga whose compensation fails beyond its policy: FAILED, left for an operator.
  shop_->SetMethodFault("shop.v1.Inventory/Release", absl::StatusCode::kUnavailable);
  const std::string failed =
      Start("order-fast", Order("r3", {{"charge", {{"fail", "declined"}}}}), "r3");
  ASSERT_TRUE(WaitForStatus(failed, saga::v1::SAGA_STATUS_FAILED));
  const absl::Time failed_at = absl::Now();

  auto gone = [&](const std::string& id) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
    saga::v1::GetSagaRequest req;
    req.set_saga_id(id);
    saga::v1::Saga saga;
    return stub_->GetSaga(&ctx, req, &saga).error_code() == grpc::StatusCode::NOT_FOUND;
  };
  const absl::Time deadline = absl::Now() + absl::Seconds(15);
  while ((!gone(completed) || !gone(compensated)) && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_TRUE(gone(completed)) << p.Log();
  EXPECT_TRUE(gone(compensated)) << p.Log();
  // The FAILED saga outlives its retention by several purges.
  absl::SleepFor(failed_at + absl::Seconds(3) - absl::Now());
  EXPECT_EQ(Get(failed).status(), saga::v1::SAGA_STATUS_FAILED);
  EXPECT_EQ(Value(Metrics(metrics_port), SampleKey("saga_purged_total")), 2);

  // The deleted saga's key starts a new saga; the kept one's still names its saga.
  saga::v1::StartSagaResponse resp;
  grpc::Status s = TryStart("order-fast", Order("r1").dump(), "r1", &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_TRUE(resp.created());
  EXPECT_NE(resp.saga_id(), completed);
  s = TryStart("order-fast", Order("r3", {{"charge", {{"fail", "declined"}}}}).dump(), "r3", &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_FALSE(resp.created());
  EXPECT_EQ(resp.saga_id(), failed);
}

TEST_F(OpsTest, ATakenMetricsAddressFailsStartUnlessOptional) {
  const ListeningLoopbackSocket taken;
  ASSERT_NE(taken.port(), 0);
  server::Config config;
  config.listen = "127.0.0.1:0";
  config.database_url = db_->url();
  config.metrics_listen = absl::StrCat("127.0.0.1:", taken.port());
  auto failed = server::Server::Start(config);
  EXPECT_EQ(failed.status().code(), absl::StatusCode::kUnavailable) << failed.status();
  config.metrics_optional = true;
  auto started = server::Server::Start(config);
  ASSERT_TRUE(started.ok()) << started.status();
  EXPECT_EQ((*started)->metrics_port(), 0);
  (*started)->Shutdown(absl::ZeroDuration());
}

TEST_F(OpsTest, TraceContextReachesParticipantsAndSurvivesRestart) {
  const int port = FreeLoopbackPort();
  const int metrics_a = FreeLoopbackPort();
  const std::string address = absl::StrCat("127.0.0.1:", port);
  const std::string traceparent = absl::StrCat("00-", kTraceId, "-", kParentSpan, "-01");
  std::string id;
  {
    SagadProcess a(ChildArgs("replica-a", port, metrics_a, "0s"), tmp_ + "/a.log");
    ASSERT_TRUE(WaitServing(address, absl::Seconds(20))) << a.Log();
    ConnectTo(address);
    // The charge answers after 1.5 s: replica a stops while it is in flight.
    grpc::Status s = StartTraced("order-fulfillment",
                                 Order("t1", {{"charge", {{"delay_ms", 1500}}}}), traceparent, &id);
    ASSERT_TRUE(s.ok()) << s.error_message();
    ASSERT_TRUE(WaitForCall("shop.v1.Payment/Charge", "t1", absl::Seconds(10))) << a.Log();
    const std::string first = shop_->LastTraceparent("t1");
    ASSERT_EQ(first.size(), 55u) << first;
    EXPECT_EQ(first.substr(0, 3), "00-");
    EXPECT_EQ(first.substr(3, 32), kTraceId);
    EXPECT_NE(first.substr(36, 16), kParentSpan) << "each call is a new span";
    EXPECT_EQ(first.substr(52), "-01");
    a.Signal(SIGTERM);  // drain 0 s: the lease is released at once
    EXPECT_EQ(a.WaitExit(absl::Seconds(10)), 0) << a.Log();
    std::vector<nlohmann::json> lines;
    EXPECT_TRUE(AllJsonLines(a.Log(), &lines));
  }
  const int metrics_b = FreeLoopbackPort();
  std::vector<std::string> b_args = ChildArgs("replica-b", port, metrics_b);
  b_args.insert(b_args.end(), {"--log-level", "debug"});
  SagadProcess b(b_args, tmp_ + "/b.log");
  ASSERT_TRUE(WaitServing(address, absl::Seconds(20))) << b.Log();
  ConnectTo(address);
  ASSERT_TRUE(WaitForStatus(id, saga::v1::SAGA_STATUS_COMPLETED)) << b.Log();
  // The ship call was made by replica b, from the stored traceparent.
  const std::string last = shop_->LastTraceparent("t1");
  EXPECT_EQ(shop_->CallCount("shop.v1.Shipping/Schedule", "t1"), 1);
  EXPECT_EQ(last.substr(3, 32), kTraceId) << last;
  EXPECT_NE(last.substr(36, 16), kParentSpan);
  EXPECT_EQ(shop_->AppliedCount("shop.v1.Payment/Charge", "t1"), 1);
  auto m = Metrics(metrics_b);
  EXPECT_EQ(Value(m, SampleKey("saga_lease_takeovers_total")), 1);
  EXPECT_EQ(Value(m, SampleKey("saga_started_total", {{"definition", "order-fulfillment"}})), -1);
  EXPECT_EQ(Value(m, SampleKey("saga_finished_total",
                               {{"definition", "order-fulfillment"}, {"status", "completed"}})),
            1);
  b.Signal(SIGTERM);
  EXPECT_EQ(b.WaitExit(absl::Seconds(10)), 0) << b.Log();
  std::vector<nlohmann::json> lines;
  ASSERT_TRUE(AllJsonLines(b.Log(), &lines));
  bool resumed = false, completed = false;
  for (const auto& j : lines) {
    if (j.value("saga_id", "") != id) continue;
    EXPECT_EQ(j.value("trace_id", ""), kTraceId) << j.dump();
    const std::string msg = j.value("msg", "");
    if (absl::StrContains(msg, "resumed")) resumed = true;
    if (absl::StrContains(msg, "COMPLETED")) completed = true;
  }
  EXPECT_TRUE(resumed) << b.Log();
  EXPECT_TRUE(completed) << b.Log();
}

TEST_F(OpsTest, JsonLogsStayValidWithHostileStrings) {
  const int port = FreeLoopbackPort();
  const std::string address = absl::StrCat("127.0.0.1:", port);
  std::vector<std::string> args = ChildArgs("hostile", port, 0);
  args.insert(args.end(), {"--log-level", "debug"});  // saga outcomes are logged at debug
  SagadProcess p(args, tmp_ + "/hostile.log");
  ASSERT_TRUE(WaitServing(address, absl::Seconds(20))) << p.Log();
  ConnectTo(address);
  const std::string hostile =
      "it's \"quoted\" \\ back\\slash\nnew line\ttab \x01\x1b[31m '; DROP TABLE sagas; -- "
      "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80 {\"json\":1}";
  nlohmann::json input = Order("h1", {{"charge", {{"fail", hostile}}}});
  input["note"] = hostile;
  const std::string declined = Start("order-fast", input);
  ASSERT_TRUE(WaitForStatus(declined, saga::v1::SAGA_STATUS_COMPENSATED)) << p.Log();
  // An abort with a hostile reason, during a slow reserve.
  const std::string aborted =
      Start("order-fulfillment", Order("h2", {{"reserve", {{"delay_ms", 1000}}}}));
  {
    grpc::ClientContext ctx;
    saga::v1::AbortSagaRequest req;
    req.set_saga_id(aborted);
    req.set_reason(hostile);
    saga::v1::AbortSagaResponse resp;
    grpc::Status s = stub_->AbortSaga(&ctx, req, &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
  }
  EXPECT_TRUE(WaitForStatus(aborted, saga::v1::SAGA_STATUS_COMPENSATED, absl::Seconds(10)));
  p.Signal(SIGTERM);
  EXPECT_EQ(p.WaitExit(absl::Seconds(10)), 0);
  std::vector<nlohmann::json> lines;
  ASSERT_TRUE(AllJsonLines(p.Log(), &lines)) << p.Log();
  std::set<std::string> sagas;  // whose lines carry the hostile string verbatim
  for (const auto& j : lines) {
    const std::string msg = j.value("msg", "");
    if (msg.find(hostile) != std::string::npos) {
      sagas.insert(j.value("saga_id", ""));
      EXPECT_EQ(j.value("trace_id", "").size(), 32u) << j.dump();
    }
  }
  EXPECT_TRUE(sagas.contains(declined)) << "the business error, verbatim:\n" << p.Log();
  EXPECT_TRUE(sagas.contains(aborted)) << "the abort reason, verbatim:\n" << p.Log();
}

TEST_F(OpsTest, SigtermDrainsCallsInFlightAndExitsZero) {
  const int port = FreeLoopbackPort();
  const std::string address = absl::StrCat("127.0.0.1:", port);
  SagadProcess p(ChildArgs("drainer", port, 0, "5s"), tmp_ + "/drain.log");
  ASSERT_TRUE(WaitServing(address, absl::Seconds(20))) << p.Log();
  ConnectTo(address);
  const std::string id =
      Start("order-fulfillment", Order("s1", {{"reserve", {{"delay_ms", 1500}}}}));
  ASSERT_TRUE(WaitForCall("shop.v1.Inventory/Reserve", "s1", absl::Seconds(10)));
  const absl::Time sent = absl::Now();
  p.Signal(SIGTERM);
  // NOT_SERVING at once, while the call is still in flight.
  std::string health;
  for (int i = 0; i < 20; ++i) {
    health = HealthStatus(address, absl::Milliseconds(200));
    if (health == "NOT_SERVING") break;
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_EQ(health, "NOT_SERVING");
  EXPECT_LT(absl::Now() - sent, absl::Milliseconds(1000));
  {  // New starts are refused while draining.
    saga::v1::StartSagaResponse resp;
    grpc::Status s = TryStart("order-fulfillment", Order("s2").dump(), "", &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();
  }
  const std::optional<int> code = p.WaitExit(absl::Seconds(5 + 2));
  const absl::Duration took = absl::Now() - sent;
  ASSERT_TRUE(code.has_value()) << "still running after drain + 2 s\n" << p.Log();
  EXPECT_EQ(*code, 0) << p.Log();
  EXPECT_GE(took, absl::Milliseconds(1000)) << "the call in flight was not awaited";
  // Another replica finishes the saga; the reserve was applied once.
  StartServer();
  EXPECT_TRUE(WaitForStatus(id, saga::v1::SAGA_STATUS_COMPLETED));
  EXPECT_EQ(shop_->AppliedCount("shop.v1.Inventory/Reserve", "s1"), 1);
}

TEST_F(OpsTest, SecondSignalExitsAtOnce) {
  const int port = FreeLoopbackPort();
  const std::string address = absl::StrCat("127.0.0.1:", port);
  SagadProcess p(ChildArgs("impatient", port, 0, "30s"), tmp_ + "/second.log");
  ASSERT_TRUE(WaitServing(address, absl::Seconds(20))) << p.Log();
  ConnectTo(address);
  Start("order-fulfillment", Order("x1", {{"reserve", {{"delay_ms", 1900}}}}));
  ASSERT_TRUE(WaitForCall("shop.v1.Inventory/Reserve", "x1", absl::Seconds(10)));
  p.Signal(SIGTERM);
  absl::SleepFor(absl::Milliseconds(200));
  EXPECT_FALSE(p.WaitExit(absl::ZeroDuration()).has_value()) << "draining should take a while";
  const absl::Time second = absl::Now();
  p.Signal(SIGINT);
  const std::optional<int> code = p.WaitExit(absl::Seconds(1));
  ASSERT_TRUE(code.has_value()) << p.Log();
  EXPECT_EQ(*code, 1);
  EXPECT_LT(absl::Now() - second, absl::Seconds(1));
  EXPECT_TRUE(absl::StrContains(p.Log(), "second signal")) << p.Log();
}

TEST_F(OpsTest, DevModeRunsAndStopsItsOwnPostgres) {
  const std::string dir = tmp_ + "/dev";
  const std::string pgdata = dir + "/pgdata";
  const int port = FreeLoopbackPort();
  const std::string address = absl::StrCat("127.0.0.1:", port);
  const std::vector<std::string> args = {"--dev",   "--dev-data-dir",   dir,        "--listen",
                                         address,   "--metrics-listen", "",         "--definitions",
                                         defs_dir_, "--proto-path",     proto_dir_, "--log-format",
                                         "json"};
  auto no_postgres_left = [&]() -> ::testing::AssertionResult {
    if (std::filesystem::exists(pgdata + "/postmaster.pid")) {
      return ::testing::AssertionFailure() << "postmaster.pid is still there";
    }
    if (ProcessWithArgumentExists(pgdata)) {
      return ::testing::AssertionFailure() << "a process still runs on " << pgdata;
    }
    absl::StatusOr<std::string> bin = server::FindPostgresBinDir();
    if (!bin.ok()) return ::testing::AssertionFailure() << bin.status();
    // pg_ctl refuses root: ask as the user the cluster belongs to.
    const char* user = getpwnam("postgres") != nullptr ? "postgres" : "nobody";
    const std::string status_cmd =
        absl::StrCat(geteuid() == 0 ? absl::StrCat("runuser -u ", user, " -- ") : "", *bin,
                     "/pg_ctl status -D '", pgdata, "' >/dev/null 2>&1");
    const int rc = std::system(status_cmd.c_str());
    if (!WIFEXITED(rc) || WEXITSTATUS(rc) != 3) {
      return ::testing::AssertionFailure() << "pg_ctl status exit " << WEXITSTATUS(rc);
    }
    return ::testing::AssertionSuccess();
  };
  std::string id;
  {
    SagadProcess p(args, tmp_ + "/dev1.log");
    ASSERT_TRUE(WaitServing(address, absl::Seconds(90))) << p.Log();
    EXPECT_TRUE(std::filesystem::exists(pgdata + "/postmaster.pid"));
    EXPECT_TRUE(absl::StrContains(p.Log(), "dev mode: PostgreSQL")) << p.Log();
    ConnectTo(address);
    id = Start("order-fulfillment", Order("d1"));
    EXPECT_TRUE(WaitForStatus(id, saga::v1::SAGA_STATUS_COMPLETED)) << p.Log();
    p.Signal(SIGTERM);
    EXPECT_EQ(p.WaitExit(absl::Seconds(30)), 0) << p.Log();
    EXPECT_TRUE(no_postgres_left()) << p.Log();
  }
  {  // The data survives a restart; SIGINT (Ctrl-C) stops everything too.
    SagadProcess p(args, tmp_ + "/dev2.log");
    ASSERT_TRUE(WaitServing(address, absl::Seconds(60))) << p.Log();
    ConnectTo(address);
    EXPECT_EQ(Get(id).status(), saga::v1::SAGA_STATUS_COMPLETED);
    p.Signal(SIGINT);
    EXPECT_EQ(p.WaitExit(absl::Seconds(30)), 0) << p.Log();
    EXPECT_TRUE(no_postgres_left()) << p.Log();
  }
}

}  // namespace
}  // namespace saga::testing
