// Sagas end to end through the public gRPC API, against the example shop participants and a
// real PostgreSQL.
#include <signal.h>
#include <sys/wait.h>

#include <atomic>
#include <set>
#include <thread>

#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "tests/integration/fixture.h"

namespace saga::testing {
namespace {

using ::testing::ElementsAre;

constexpr char kReserve[] = "shop.v1.Inventory/Reserve";
constexpr char kRelease[] = "shop.v1.Inventory/Release";
constexpr char kCharge[] = "shop.v1.Payment/Charge";
constexpr char kRefund[] = "shop.v1.Payment/Refund";
constexpr char kSchedule[] = "shop.v1.Shipping/Schedule";

nlohmann::json Order(const std::string& id, nlohmann::json behavior = nlohmann::json::object()) {
  return {{"order_id", id},       {"sku", "book-42"},       {"quantity", 2},
          {"amount_cents", 1999}, {"address", "1 Main St"}, {"behavior", std::move(behavior)}};
}

// The ledger's applied calls for an order, as "method" in order.
std::vector<std::string> Applied(const examples::ShopServer& shop, const std::string& order) {
  std::vector<std::string> out;
  for (const auto& e : shop.Ledger()) {
    if (e.order_id == order && e.applied) out.push_back(e.method);
  }
  return out;
}

// A WatchSaga stream read to its end: each event as "TYPE" or "TYPE(step)", checked to come in
// seq order from 1.
struct Watched {
  std::vector<std::string> types;
  grpc::Status status;
};
Watched WatchToEnd(saga::v1::SagaOrchestrator::Stub& stub, const std::string& id,
                   absl::Duration deadline) {
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + deadline));
  saga::v1::WatchSagaRequest req;
  req.set_saga_id(id);
  auto reader = stub.WatchSaga(&ctx, req);
  Watched out;
  saga::v1::SagaEvent e;
  int64_t expect = 1;
  while (reader->Read(&e)) {
    EXPECT_EQ(e.seq(), expect++);
    out.types.push_back(e.type() + (e.step().empty() ? "" : "(" + e.step() + ")"));
  }
  out.status = reader->Finish();
  return out;
}

TEST_F(SagaTest, HappyPathCompletesAndAppliesEachStepOnce) {
  StartServer();
  const std::string id = Start("order-fulfillment", Order("o-happy"), "order-o-happy");
  ASSERT_TRUE(WaitForStatus(id, saga::v1::SAGA_STATUS_COMPLETED));
  saga::v1::Saga saga = Get(id);
  ASSERT_EQ(saga.steps_size(), 3);
  for (const auto& step : saga.steps()) {
    EXPECT_EQ(step.status(), saga::v1::STEP_STATUS_SUCCEEDED) << step.name();
    EXPECT_EQ(step.attempts(), 1) << step.name();
  }
  EXPECT_THAT(saga.steps(0).output_json(), ::testing::HasSubstr("res-o-happy"));
  EXPECT_THAT(Applied(*shop_, "o-happy"), ElementsAre(kReserve, kCharge, kSchedule));
  // Keys are stable per step and action, and carry the saga id.
  for (const auto& e : shop_->Ledger()) {
    if (e.order_id != "o-happy") continue;
    EXPECT_EQ(e.saga_id, id);
    EXPECT_EQ(e.idempotency_key, id + "/" + e.step + "/action");
  }
  EXPECT_EQ(shop_->Stock("book-42"), 1000000 - 2);
  EXPECT_FALSE(shop_->LastTraceparent("o-happy").empty());
}

TEST_F(SagaTest, BusinessFailureAtSecondStepCompensatesTheFirstOnce) {
  StartServer();
  const std::string id =
      Start("order-fulfillment", Order("o-declined", {{"charge", {{"fail", "card declined"}}}}));
  ASSERT_TRUE(WaitForStatus(id, saga::v1::SAGA_STATUS_COMPENSATED));
  saga::v1::Saga saga = Get(id);
  EXPECT_EQ(saga.steps(0).status(), saga::v1::STEP_STATUS_COMPENSATED);
  EXPECT_EQ(saga.steps(1).status(), saga::v1::STEP_STATUS_FAILED);
  EXPECT_EQ(saga.steps(1).last_error(), "FAILED_PRECONDITION: card declined");
  EXPECT_FALSE(saga.steps(1).outcome_unknown());
  EXPECT_EQ(saga.steps(2).status(), saga::v1::STEP_STATUS_PENDING);
  EXPECT_THAT(saga.error(), ::testing::HasSubstr("card declined"));
  EXPECT_THAT(Applied(*shop_, "o-declined"), ElementsAre(kReserve, kRelease));
  EXPECT_EQ(shop_->CallCount(kRefund, "o-declined"), 0);
  EXPECT_EQ(shop_->Stock("book-42"), 1000000);
}

TEST_F(SagaTest, BusinessFailureAtLastStepCompensatesInReverseOrder) {
  StartServer();
  const std::string id =
      Start("order-fulfillment", Order("o-noship", {{"ship", {{"fail", "no courier"}}}}));
  ASSERT_TRUE(WaitForStatus(id, saga::v1::SAGA_STATUS_COMPENSATED));
  EXPECT_THAT(Applied(*shop_, "o-noship"), ElementsAre(kReserve, kCharge, kRefund, kRelease));
  EXPECT_EQ(shop_->ChargedTotal(), 0);
  EXPECT_EQ(shop_->Stock("book-42"), 1000000);
}

TEST_F(SagaTest, TransientFailuresAreRetriedWithBackoffThenSucceed) {
  StartServer();
  const std::string id =
      Start("order-fulfillment", Order("o-flaky", {{"charge", {{"transient_failures", 2}}}}));
  ASSERT_TRUE(WaitForStatus(id, saga::v1::SAGA_STATUS_COMPLETED));
  saga::v1::Saga saga = Get(id, /*history=*/true);
  EXPECT_EQ(saga.steps(1).attempts(), 3);
  EXPECT_EQ(shop_->CallCount(kCharge, "o-flaky"), 3);
  EXPECT_EQ(shop_->AppliedCount(kCharge, "o-flaky"), 1);
  int retries = 0;
  for (const auto& e : saga.history()) retries += e.type() == "STEP_RETRY_SCHEDULED";
  EXPECT_EQ(retries, 2);
}

TEST_F(SagaTest, TimeoutMeansUnknownOutcomeAndIsCompensated) {
  StartServer();
  // Every charge attempt answers after 1 s; the step's deadline is 300 ms (2 attempts).
  const std::string id = Start("order-fast", Order("o-slow", {{"charge", {{"delay_ms", 1000}}}}));
  ASSERT_TRUE(WaitForStatus(id, saga::v1::SAGA_STATUS_COMPENSATED));
  saga::v1::Saga saga = Get(id);
  EXPECT_TRUE(saga.steps(1).outcome_unknown());
  EXPECT_EQ(saga.steps(1).status(), saga::v1::STEP_STATUS_COMPENSATED);
  EXPECT_EQ(shop_->AppliedCount(kRefund, "o-slow"), 1);
  EXPECT_EQ(shop_->AppliedCount(kRelease, "o-slow"), 1);
  // Whatever order the late charge and the refund met in, no money is kept.
  absl::SleepFor(absl::Milliseconds(1200));
  EXPECT_EQ(shop_->ChargedTotal(), 0);
}

TEST_F(SagaTest, CompensationFailingBeyondPolicyParksThenRetrySagaCompletesIt) {
  StartServer();
  shop_->SetMethodFault(kRelease, absl::StatusCode::kUnavailable);
  const std::string id =
      Start("order-fast", Order("o-stuck", {{"charge", {{"fail", "declined"}}}}));
  ASSERT_TRUE(WaitForStatus(id, saga::v1::SAGA_STATUS_FAILED));
  saga::v1::Saga saga = Get(id);
  EXPECT_EQ(saga.steps(0).status(), saga::v1::STEP_STATUS_COMPENSATION_FAILED);
  EXPECT_THAT(saga.error(), ::testing::HasSubstr("compensation of step 'reserve' failed"));
  EXPECT_EQ(shop_->CallCount(kRelease, "o-stuck"), 3);

  shop_->ClearFaults();
  grpc::ClientContext ctx;
  saga::v1::RetrySagaRequest req;
  req.set_saga_id(id);
  saga::v1::RetrySagaResponse resp;
  ASSERT_TRUE(stub_->RetrySaga(&ctx, req, &resp).ok());
  ASSERT_TRUE(WaitForStatus(id, saga::v1::SAGA_STATUS_COMPENSATED));
  EXPECT_EQ(shop_->AppliedCount(kRelease, "o-stuck"), 1);

  grpc::ClientContext ctx2;
  EXPECT_EQ(stub_->RetrySaga(&ctx2, req, &resp).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
}

TEST_F(SagaTest, AbortDuringBackoffCompensatesWithoutWaitingForTheRetry) {
  StartServer();
  const std::string id =
      Start("order-slow-retry", Order("o-abort", {{"charge", {{"transient_failures", 1}}}}));
  // Wait for the first charge attempt to fail (the retry is 5 s away).
  const absl::Time deadline = absl::Now() + absl::Seconds(5);
  while (shop_->CallCount(kCharge, "o-abort") < 1 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  absl::SleepFor(absl::Milliseconds(100));
  const absl::Time aborted_at = absl::Now();
  grpc::ClientContext ctx;
  saga::v1::AbortSagaRequest req;
  req.set_saga_id(id);
  req.set_reason("customer cancelled");
  saga::v1::AbortSagaResponse resp;
  ASSERT_TRUE(stub_->AbortSaga(&ctx, req, &resp).ok());
  ASSERT_TRUE(WaitForStatus(id, saga::v1::SAGA_STATUS_COMPENSATED, absl::Seconds(4)));
  EXPECT_LT(absl::Now() - aborted_at, absl::Seconds(4));
  saga::v1::Saga saga = Get(id);
  EXPECT_EQ(saga.error(), "aborted: customer cancelled");
  EXPECT_EQ(shop_->CallCount(kCharge, "o-abort"), 1) << "no retry after the abort";
  EXPECT_EQ(shop_->AppliedCount(kRelease, "o-abort"), 1);

  grpc::ClientContext ctx2;
  EXPECT_EQ(stub_->AbortSaga(&ctx2, req, &resp).error_code(), grpc::StatusCode::FAILED_PRECONDITION)
      << "an ended saga cannot be aborted";
}

TEST_F(SagaTest, FiftyConcurrentStartsWithOneKeyMakeOneSaga) {
  StartServer();
  const std::string input = Order("o-dup").dump();
  std::vector<std::string> ids(50);
  std::atomic<int> created{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 50; ++i) {
    threads.emplace_back([&, i] {
      saga::v1::StartSagaResponse resp;
      grpc::Status s = TryStart("order-fulfillment", input, "order-o-dup", &resp);
      EXPECT_TRUE(s.ok()) << s.error_message();
      ids[static_cast<size_t>(i)] = resp.saga_id();
      if (resp.created()) created++;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(std::set<std::string>(ids.begin(), ids.end()).size(), 1u);
  EXPECT_EQ(created.load(), 1);
  ASSERT_TRUE(WaitForStatus(ids[0], saga::v1::SAGA_STATUS_COMPLETED));
  EXPECT_EQ(shop_->AppliedCount(kCharge, "o-dup"), 1);
  EXPECT_EQ(CountSagas(), 1);

  saga::v1::StartSagaResponse resp;
  grpc::Status s = TryStart("order-fulfillment", Order("o-other").dump(), "order-o-dup", &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::ALREADY_EXISTS) << s.error_message();
  EXPECT_EQ(CountSagas(), 1);
}

TEST_F(SagaTest, StartSagaWithWaitAnswersWithTheFinalStatus) {
  StartServer();
  auto start = [&](const nlohmann::json& input, const std::string& key) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
    saga::v1::StartSagaRequest req;
    req.set_definition("order-fulfillment");
    req.set_input_json(input.dump());
    req.set_idempotency_key(key);
    req.set_wait(true);
    saga::v1::StartSagaResponse resp;
    grpc::Status s = stub_->StartSaga(&ctx, req, &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return resp;
  };
  saga::v1::StartSagaResponse ok = start(Order("o-wait-1"), "wait-1");
  EXPECT_EQ(ok.status(), saga::v1::SAGA_STATUS_COMPLETED);
  EXPECT_EQ(Get(ok.saga_id()).status(), saga::v1::SAGA_STATUS_COMPLETED);
  saga::v1::StartSagaResponse bad =
      start(Order("o-wait-2", {{"charge", {{"fail", "card declined"}}}}), "wait-2");
  EXPECT_EQ(bad.status(), saga::v1::SAGA_STATUS_COMPENSATED);
  EXPECT_THAT(bad.error(), ::testing::HasSubstr("card declined"));
  // The same key again: the existing saga, already ended.
  saga::v1::StartSagaResponse again = start(Order("o-wait-1"), "wait-1");
  EXPECT_FALSE(again.created());
  EXPECT_EQ(again.saga_id(), ok.saga_id());
  EXPECT_EQ(again.status(), saga::v1::SAGA_STATUS_COMPLETED);
}

TEST_F(SagaTest, WatchSagaStreamsEveryEventInOrderAndEnds) {
  StartServer();
  const std::string id =
      Start("order-fulfillment", Order("o-watch", {{"ship", {{"delay_ms", 300}}}}));
  grpc::ClientContext ctx;
  saga::v1::WatchSagaRequest req;
  req.set_saga_id(id);
  auto reader = stub_->WatchSaga(&ctx, req);
  std::vector<std::string> types;
  saga::v1::SagaEvent e;
  int64_t expect = 1;
  while (reader->Read(&e)) {
    EXPECT_EQ(e.seq(), expect++);
    types.push_back(e.type() + (e.step().empty() ? "" : "(" + e.step() + ")"));
  }
  ASSERT_TRUE(reader->Finish().ok());
  EXPECT_THAT(types, ElementsAre("SAGA_STARTED", "STEP_STARTED(reserve)", "STEP_SUCCEEDED(reserve)",
                                 "STEP_STARTED(charge)", "STEP_SUCCEEDED(charge)",
                                 "STEP_STARTED(ship)", "STEP_SUCCEEDED(ship)", "SAGA_COMPLETED"));
  EXPECT_TRUE(e.terminal());
  EXPECT_EQ(e.status(), saga::v1::SAGA_STATUS_COMPLETED);

  // Watching an ended saga replays its history and ends.
  grpc::ClientContext ctx2;
  req.set_after_seq(6);
  auto again = stub_->WatchSaga(&ctx2, req);
  int n = 0;
  while (again->Read(&e)) ++n;
  EXPECT_TRUE(again->Finish().ok());
  EXPECT_EQ(n, 2);
}

TEST_F(SagaTest, WatchAndWaitFollowASagaThatAnotherReplicaRuns) {
  // Replica A (a child process) runs the saga; replica B (in this process) serves the calls
  // and only learns of the saga's events from the database.
  SpawnSagad("replica-a");
  const nlohmann::json input =
      Order("o-remote", {{"charge", {{"delay_ms", 600}}}, {"ship", {{"delay_ms", 600}}}});
  const std::string id = Start("order-fulfillment", input, "remote-1");
  StartServer();

  Watched watched;
  std::thread watcher([&] { watched = WatchToEnd(*stub_, id, absl::Seconds(20)); });

  // The same key with wait, on B: the existing saga's final status once A has finished it.
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
  saga::v1::StartSagaRequest req;
  req.set_definition("order-fulfillment");
  req.set_input_json(input.dump());
  req.set_idempotency_key("remote-1");
  req.set_wait(true);
  saga::v1::StartSagaResponse resp;
  grpc::Status s = stub_->StartSaga(&ctx, req, &resp);
  watcher.join();

  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_FALSE(resp.created());
  EXPECT_EQ(resp.saga_id(), id);
  EXPECT_EQ(resp.status(), saga::v1::SAGA_STATUS_COMPLETED);
  ASSERT_TRUE(watched.status.ok()) << watched.status.error_message();
  EXPECT_THAT(watched.types,
              ElementsAre("SAGA_STARTED", "STEP_STARTED(reserve)", "STEP_SUCCEEDED(reserve)",
                          "STEP_STARTED(charge)", "STEP_SUCCEEDED(charge)", "STEP_STARTED(ship)",
                          "STEP_SUCCEEDED(ship)", "SAGA_COMPLETED"));
  // A ran every step (B never took the saga over).
  EXPECT_EQ(Get(id, /*history=*/false).status(), saga::v1::SAGA_STATUS_COMPLETED);
  EXPECT_EQ(shop_->AppliedCount(kCharge, "o-remote"), 1);
}

TEST_F(SagaTest, WatchFollowsASagaThroughATakeover) {
  // Replica A runs the saga and dies in the middle of it; replica B, which serves the watch,
  // takes the saga over when A's lease runs out and finishes it. The stream sees every event
  // once, in order: A's from the database, then B's as it records them.
  StartServer();
  const std::string b = server_->address();
  const pid_t a = SpawnSagad("replica-a");
  const std::string id = Start("order-fulfillment",
                               Order("o-takeover", {{"charge", {{"delay_ms", 1500}}}}), "takeover");
  ConnectTo(b);
  Watched watched;
  std::thread watcher([&] { watched = WatchToEnd(*stub_, id, absl::Seconds(30)); });
  // A dies while it waits for the charge (1.5 s).
  const absl::Time give_up = absl::Now() + absl::Seconds(10);
  while (Get(id, /*history=*/true).history_size() < 4 && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  ASSERT_EQ(kill(a, SIGKILL), 0);
  waitpid(a, nullptr, 0);
  children_.clear();
  watcher.join();
  ASSERT_TRUE(watched.status.ok()) << watched.status.error_message();
  // The charge's outcome died with A: B calls it again (same idempotency key), then ships.
  EXPECT_THAT(watched.types,
              ElementsAre("SAGA_STARTED", "STEP_STARTED(reserve)", "STEP_SUCCEEDED(reserve)",
                          "STEP_STARTED(charge)", "STEP_STARTED(charge)", "STEP_SUCCEEDED(charge)",
                          "STEP_STARTED(ship)", "STEP_SUCCEEDED(ship)", "SAGA_COMPLETED"));
  EXPECT_EQ(shop_->AppliedCount(kCharge, "o-takeover"), 1);
}

TEST_F(SagaTest, ListSagasFiltersAndPages) {
  StartServer();
  std::vector<std::string> ids;
  for (int i = 0; i < 5; ++i) {
    ids.push_back(Start("order-fulfillment", Order("o-list-" + std::to_string(i))));
  }
  ids.push_back(
      Start("order-fulfillment", Order("o-list-fail", {{"charge", {{"fail", "declined"}}}})));
  for (size_t i = 0; i + 1 < ids.size(); ++i) {
    ASSERT_TRUE(WaitForStatus(ids[i], saga::v1::SAGA_STATUS_COMPLETED));
  }
  ASSERT_TRUE(WaitForStatus(ids.back(), saga::v1::SAGA_STATUS_COMPENSATED));
  std::set<std::string> seen;
  std::string token;
  int pages = 0;
  do {
    grpc::ClientContext ctx;
    saga::v1::ListSagasRequest req;
    req.set_page_size(2);
    req.set_page_token(token);
    saga::v1::ListSagasResponse resp;
    ASSERT_TRUE(stub_->ListSagas(&ctx, req, &resp).ok());
    for (const auto& s : resp.sagas()) EXPECT_TRUE(seen.insert(s.id()).second) << "duplicate";
    token = resp.next_page_token();
    ++pages;
  } while (!token.empty() && pages < 10);
  EXPECT_EQ(seen.size(), 6u);
  EXPECT_EQ(pages, 3);

  grpc::ClientContext ctx;
  saga::v1::ListSagasRequest req;
  req.set_status(saga::v1::SAGA_STATUS_COMPENSATED);
  saga::v1::ListSagasResponse resp;
  ASSERT_TRUE(stub_->ListSagas(&ctx, req, &resp).ok());
  ASSERT_EQ(resp.sagas_size(), 1);
  EXPECT_EQ(resp.sagas(0).id(), ids.back());
}

TEST_F(SagaTest, HealthIsServingAndDefinitionsFolderIsRegistered) {
  StartServer();
  auto health = grpc::health::v1::Health::NewStub(channel_);
  grpc::ClientContext hctx;
  grpc::health::v1::HealthCheckResponse hresp;
  ASSERT_TRUE(health->Check(&hctx, {}, &hresp).ok());
  EXPECT_EQ(hresp.status(), grpc::health::v1::HealthCheckResponse::SERVING);
  grpc::ClientContext ctx;
  saga::v1::ListDefinitionsResponse resp;
  ASSERT_TRUE(stub_->ListDefinitions(&ctx, {}, &resp).ok());
  EXPECT_EQ(resp.definitions_size(), 3);
}

TEST_F(SagaTest, KilledSagadResumesEverySagaAndAppliesEachKeyOnce) {
  SpawnSagad("replica-a");
  std::vector<std::string> ids;
  for (int i = 0; i < 10; ++i) {
    // Slow charges keep the sagas mid-flight when the process dies.
    ids.push_back(Start("order-fulfillment",
                        Order("o-kill-" + std::to_string(i), {{"charge", {{"delay_ms", 400}}}}),
                        "kill-" + std::to_string(i)));
  }
  absl::SleepFor(absl::Milliseconds(200));
  ASSERT_EQ(kill(children_.back(), SIGKILL), 0);
  waitpid(children_.back(), nullptr, 0);
  children_.pop_back();

  SpawnSagad("replica-b");
  for (const auto& id : ids) {
    ASSERT_TRUE(WaitForStatus(id, saga::v1::SAGA_STATUS_COMPLETED, absl::Seconds(30)));
  }
  for (int i = 0; i < 10; ++i) {
    const std::string order = "o-kill-" + std::to_string(i);
    EXPECT_EQ(shop_->AppliedCount(kReserve, order), 1) << order;
    EXPECT_EQ(shop_->AppliedCount(kCharge, order), 1) << order;
    EXPECT_EQ(shop_->AppliedCount(kSchedule, order), 1) << order;
    EXPECT_EQ(shop_->AppliedCount(kRelease, order), 0) << order;
  }
  // The restarted replica found the same sagas by key.
  saga::v1::StartSagaResponse resp;
  ASSERT_TRUE(TryStart("order-fulfillment",
                       Order("o-kill-0", {{"charge", {{"delay_ms", 400}}}}).dump(), "kill-0", &resp)
                  .ok());
  EXPECT_EQ(resp.saga_id(), ids[0]);
  EXPECT_FALSE(resp.created());
}

}  // namespace
}  // namespace saga::testing
