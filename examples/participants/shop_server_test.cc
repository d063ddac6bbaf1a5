// Integration tests of the example shop participants: a real gRPC client (generated stubs of
// shop.proto and admin.proto) against an in-process ShopServer on a free port.
#include "examples/participants/shop_server.h"

#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "shop/v1/admin.grpc.pb.h"
#include "shop/v1/shop.grpc.pb.h"

namespace saga::examples {
namespace {

using ::shop::v1::ChargeReply;
using ::shop::v1::ChargeRequest;
using ::shop::v1::RefundReply;
using ::shop::v1::RefundRequest;
using ::shop::v1::ReleaseReply;
using ::shop::v1::ReleaseRequest;
using ::shop::v1::ReserveReply;
using ::shop::v1::ReserveRequest;
using ::shop::v1::ScheduleReply;
using ::shop::v1::ScheduleRequest;
using ::testing::HasSubstr;

constexpr int64_t kStock = 1000000;

// A client context carrying the saga metadata; an empty key sends no idempotency-key.
std::unique_ptr<grpc::ClientContext> Context(const std::string& key,
                                             absl::Duration timeout = absl::Seconds(5),
                                             const std::string& saga_id = "saga-1",
                                             const std::string& step = "step") {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  if (!saga_id.empty()) context->AddMetadata("saga-id", saga_id);
  if (!step.empty()) context->AddMetadata("saga-step", step);
  if (!key.empty()) context->AddMetadata("idempotency-key", key);
  return context;
}

class ShopServerTest : public ::testing::Test {
 protected:
  void SetUp() override { StartServer(ShopServerOptions{}); }

  void StartServer(ShopServerOptions options) {
    auto server = ShopServer::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    channel_ = grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials());
    inventory_ = shop::v1::Inventory::NewStub(channel_);
    payment_ = shop::v1::Payment::NewStub(channel_);
    shipping_ = shop::v1::Shipping::NewStub(channel_);
    admin_ = shop::v1::ShopAdmin::NewStub(channel_);
  }

  grpc::Status Reserve(const std::string& key, const ReserveRequest& request, ReserveReply* reply,
                       absl::Duration timeout = absl::Seconds(5)) {
    return inventory_->Reserve(Context(key, timeout, "saga-1", "reserve").get(), request, reply);
  }
  grpc::Status Release(const std::string& key, const ReleaseRequest& request, ReleaseReply* reply) {
    return inventory_->Release(Context(key, absl::Seconds(5), "saga-1", "reserve").get(), request,
                               reply);
  }
  grpc::Status Charge(const std::string& key, const ChargeRequest& request, ChargeReply* reply,
                      absl::Duration timeout = absl::Seconds(5)) {
    return payment_->Charge(Context(key, timeout, "saga-1", "charge").get(), request, reply);
  }
  grpc::Status Refund(const std::string& key, const RefundRequest& request, RefundReply* reply) {
    return payment_->Refund(Context(key, absl::Seconds(5), "saga-1", "charge").get(), request,
                            reply);
  }

  // Waits (up to 5 s) until the server has decided `calls` calls of the method for the order.
  void WaitForCalls(std::string_view method, const std::string& order, int calls) {
    const absl::Time give_up = absl::Now() + absl::Seconds(5);
    while (server_->CallCount(method, order) < calls && absl::Now() < give_up) {
      absl::SleepFor(absl::Milliseconds(2));
    }
  }

  static ReserveRequest MakeReserve(const std::string& order, int quantity,
                                    const std::string& sku = "sku-1") {
    ReserveRequest request;
    request.set_order_id(order);
    request.set_sku(sku);
    request.set_quantity(quantity);
    return request;
  }
  static ReleaseRequest MakeRelease(const std::string& order) {
    ReleaseRequest request;
    request.set_order_id(order);
    request.set_reservation_id(absl::StrCat("res-", order));
    return request;
  }
  static ChargeRequest MakeCharge(const std::string& order, int64_t cents) {
    ChargeRequest request;
    request.set_order_id(order);
    request.set_amount_cents(cents);
    request.set_currency("EUR");
    return request;
  }
  static RefundRequest MakeRefund(const std::string& order, int64_t cents) {
    RefundRequest request;
    request.set_order_id(order);
    request.set_payment_id(absl::StrCat("pay-", order));
    request.set_amount_cents(cents);
    return request;
  }

  std::unique_ptr<ShopServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<shop::v1::Inventory::Stub> inventory_;
  std::unique_ptr<shop::v1::Payment::Stub> payment_;
  std::unique_ptr<shop::v1::Shipping::Stub> shipping_;
  std::unique_ptr<shop::v1::ShopAdmin::Stub> admin_;
};

TEST_F(ShopServerTest, RepeatReturnsFirstResultAndAppliesOnce) {
  ReserveReply first;
  ASSERT_TRUE(Reserve("s1/reserve/action", MakeReserve("o-1", 3), &first).ok());
  EXPECT_EQ(first.reservation_id(), "res-o-1");
  ReserveReply second;
  ASSERT_TRUE(Reserve("s1/reserve/action", MakeReserve("o-1", 3), &second).ok());
  EXPECT_EQ(second.reservation_id(), "res-o-1");

  EXPECT_EQ(server_->Stock("sku-1"), kStock - 3);
  EXPECT_EQ(server_->AppliedCount(kReserveMethod, "o-1"), 1);
  EXPECT_EQ(server_->CallCount(kReserveMethod, "o-1"), 2);
  const std::vector<LedgerEntry> ledger = server_->Ledger();
  ASSERT_EQ(ledger.size(), 2u);
  EXPECT_EQ(ledger[0].method, "shop.v1.Inventory/Reserve");
  EXPECT_EQ(ledger[0].idempotency_key, "s1/reserve/action");
  EXPECT_EQ(ledger[0].saga_id, "saga-1");
  EXPECT_EQ(ledger[0].step, "reserve");
  EXPECT_EQ(ledger[0].order_id, "o-1");
  EXPECT_TRUE(ledger[0].applied);
  EXPECT_EQ(ledger[0].outcome, "OK");
  EXPECT_FALSE(ledger[1].applied);
  EXPECT_EQ(ledger[1].outcome, "OK");
  EXPECT_LE(ledger[0].at, ledger[1].at);

  // The same order under a new key (another saga) is a new action.
  ChargeReply charge;
  ASSERT_TRUE(Charge("s1/charge/action", MakeCharge("o-1", 500), &charge).ok());
  EXPECT_EQ(charge.payment_id(), "pay-o-1");
  EXPECT_EQ(charge.charged_cents(), 500);
  ASSERT_TRUE(Charge("s1/charge/action", MakeCharge("o-1", 500), &charge).ok());
  EXPECT_EQ(server_->ChargedTotal(), 500);

  ScheduleRequest schedule;
  schedule.set_order_id("o-1");
  schedule.set_address("1 Main St");
  ScheduleReply shipped;
  ASSERT_TRUE(shipping_->Schedule(Context("s1/ship/action").get(), schedule, &shipped).ok());
  EXPECT_EQ(shipped.tracking_id(), "trk-o-1");
  EXPECT_EQ(server_->AppliedCount(kScheduleMethod, "o-1"), 1);
}

TEST_F(ShopServerTest, BusinessFailureIsRecordedAndRepeated) {
  ChargeRequest request = MakeCharge("o-2", 700);
  request.mutable_behavior()->set_fail("card declined");
  ChargeReply reply;
  grpc::Status status = Charge("s2/charge/action", request, &reply);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(status.error_message(), "card declined");

  // The repeat gets the recorded failure even without the behavior.
  status = Charge("s2/charge/action", MakeCharge("o-2", 700), &reply);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(status.error_message(), "card declined");
  EXPECT_EQ(server_->ChargedTotal(), 0);
  EXPECT_EQ(server_->AppliedCount(kChargeMethod, "o-2"), 0);
  EXPECT_EQ(server_->CallCount(kChargeMethod, "o-2"), 2);
  EXPECT_EQ(server_->Ledger().back().outcome, "FAILED_PRECONDITION");
}

TEST_F(ShopServerTest, InvalidRequestsAndOutOfStock) {
  ReserveReply reply;
  EXPECT_EQ(Reserve("k-zero", MakeReserve("o-3", 0), &reply).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Reserve("k-negative", MakeReserve("o-3", -2), &reply).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  const grpc::Status status = Reserve("k-huge", MakeReserve("o-3", kStock + 1), &reply);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(status.error_message(), HasSubstr("out of stock"));
  EXPECT_EQ(server_->Stock("sku-1"), kStock);
  EXPECT_EQ(server_->AppliedCount(kReserveMethod, "o-3"), 0);
  ASSERT_TRUE(Reserve("k-all", MakeReserve("o-3", kStock), &reply).ok());
  EXPECT_EQ(server_->Stock("sku-1"), 0);
  EXPECT_EQ(server_->Stock("sku-2"), kStock);
}

TEST_F(ShopServerTest, TransientFailuresThenSuccessAppliedOnce) {
  ReserveRequest request = MakeReserve("o-4", 2);
  request.mutable_behavior()->set_transient_failures(2);
  ReserveReply reply;
  EXPECT_EQ(Reserve("s4/reserve/action", request, &reply).error_code(),
            grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(Reserve("s4/reserve/action", request, &reply).error_code(),
            grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(server_->Stock("sku-1"), kStock);
  ASSERT_TRUE(Reserve("s4/reserve/action", request, &reply).ok());
  EXPECT_EQ(reply.reservation_id(), "res-o-4");
  ASSERT_TRUE(Reserve("s4/reserve/action", request, &reply).ok());
  EXPECT_EQ(server_->Stock("sku-1"), kStock - 2);
  EXPECT_EQ(server_->AppliedCount(kReserveMethod, "o-4"), 1);
  EXPECT_EQ(server_->CallCount(kReserveMethod, "o-4"), 4);
  EXPECT_EQ(server_->Ledger()[0].outcome, "UNAVAILABLE");
}

TEST_F(ShopServerTest, DelayHoldsTheReplyWithoutBlockingOthers) {
  ReserveRequest slow = MakeReserve("o-5", 1);
  slow.mutable_behavior()->set_delay_ms(1000);
  ReserveReply slow_reply;
  grpc::ClientContext slow_context;
  slow_context.AddMetadata("idempotency-key", "s5/reserve/action");
  absl::Notification slow_done;
  grpc::Status slow_status;
  const absl::Time start = absl::Now();
  absl::Time slow_end;
  inventory_->async()->Reserve(&slow_context, &slow, &slow_reply, [&](grpc::Status status) {
    slow_status = std::move(status);
    slow_end = absl::Now();
    slow_done.Notify();
  });
  WaitForCalls(kReserveMethod, "o-5", 1);
  // The effect is applied at once; only the answer waits.
  EXPECT_EQ(server_->Stock("sku-1"), kStock - 1);

  // Other calls are answered meanwhile.
  ChargeReply charge;
  for (int i = 0; i < 20; ++i) {
    ASSERT_TRUE(
        Charge(absl::StrCat("fast-", i), MakeCharge(absl::StrCat("f-", i), 1), &charge).ok());
  }
  EXPECT_FALSE(slow_done.HasBeenNotified());

  ASSERT_TRUE(slow_done.WaitForNotificationWithTimeout(absl::Seconds(10)));
  ASSERT_TRUE(slow_status.ok()) << slow_status.error_message();
  EXPECT_GE(slow_end - start, absl::Milliseconds(1000));
  EXPECT_EQ(slow_reply.reservation_id(), "res-o-5");
}

TEST_F(ShopServerTest, DropReplyAppliesThenRepeatAnswersAtOnce) {
  ChargeRequest request = MakeCharge("o-6", 1234);
  request.mutable_behavior()->set_drop_reply(true);  // held back for the default 30 s
  ChargeReply reply;
  grpc::Status status = Charge("s6/charge/action", request, &reply, absl::Milliseconds(200));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  WaitForCalls(kChargeMethod, "o-6", 1);
  EXPECT_EQ(server_->ChargedTotal(), 1234);
  EXPECT_EQ(server_->AppliedCount(kChargeMethod, "o-6"), 1);

  // The repeat is answered at once (well within its 200 ms deadline).
  status = Charge("s6/charge/action", request, &reply, absl::Milliseconds(200));
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(reply.payment_id(), "pay-o-6");
  EXPECT_EQ(reply.charged_cents(), 1234);
  EXPECT_EQ(server_->ChargedTotal(), 1234);
  EXPECT_EQ(server_->AppliedCount(kChargeMethod, "o-6"), 1);
  EXPECT_EQ(server_->CallCount(kChargeMethod, "o-6"), 2);
}

TEST_F(ShopServerTest, ShutdownDoesNotWaitForHeldReplies) {
  ChargeRequest request = MakeCharge("o-7", 1);
  request.mutable_behavior()->set_drop_reply(true);
  request.mutable_behavior()->set_drop_reply_ms(60000);
  ChargeReply reply;
  grpc::ClientContext context;
  context.AddMetadata("idempotency-key", "s7/charge/action");
  absl::Notification done;
  payment_->async()->Charge(&context, &request, &reply, [&](grpc::Status) { done.Notify(); });
  // Wait until the call has been decided and is held back.
  WaitForCalls(kChargeMethod, "o-7", 1);
  ASSERT_EQ(server_->AppliedCount(kChargeMethod, "o-7"), 1);

  const absl::Time start = absl::Now();
  server_->Shutdown();
  server_->Shutdown();  // idempotent
  EXPECT_LT(absl::Now() - start, absl::Milliseconds(1500));
  EXPECT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(5)));
  EXPECT_EQ(server_->ChargedTotal(), 1);  // state is still readable
}

TEST_F(ShopServerTest, EmptyCompensationThenLateActionRefused) {
  // Release arrives for a reserve that was never applied (its outcome unknown to the caller).
  ReleaseReply released;
  ASSERT_TRUE(Release("s8/reserve/compensation", MakeRelease("o-8"), &released).ok());
  EXPECT_FALSE(released.released());
  EXPECT_EQ(server_->AppliedCount(kReleaseMethod, "o-8"), 1);
  EXPECT_TRUE(server_->Ledger().back().empty_compensation);
  EXPECT_EQ(server_->Stock("sku-1"), kStock);

  // The late reserve is refused (anti-hanging), and so is its repeat.
  ReserveReply reserved;
  grpc::Status status = Reserve("s8/reserve/action", MakeReserve("o-8", 5), &reserved);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(status.error_message(), HasSubstr("anti-hanging"));
  status = Reserve("s8/reserve/action", MakeReserve("o-8", 5), &reserved);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(server_->Stock("sku-1"), kStock);
  EXPECT_EQ(server_->AppliedCount(kReserveMethod, "o-8"), 0);

  // The same for the payment.
  RefundReply refunded;
  ASSERT_TRUE(Refund("s8/charge/compensation", MakeRefund("o-8", 900), &refunded).ok());
  EXPECT_FALSE(refunded.refunded());
  ChargeReply charged;
  EXPECT_EQ(Charge("s8/charge/action", MakeCharge("o-8", 900), &charged).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(server_->ChargedTotal(), 0);

  // Compensations are per order and service: another order is unaffected.
  ASSERT_TRUE(Reserve("s9/reserve/action", MakeReserve("o-9", 5), &reserved).ok());
}

TEST_F(ShopServerTest, CompensationAppliedOnceAndConserves) {
  ReserveReply reserved;
  ASSERT_TRUE(Reserve("s10/reserve/action", MakeReserve("o-10", 7, "sku-a"), &reserved).ok());
  ChargeReply charged;
  ASSERT_TRUE(Charge("s10/charge/action", MakeCharge("o-10", 2500), &charged).ok());
  ASSERT_TRUE(Reserve("s11/reserve/action", MakeReserve("o-11", 4, "sku-a"), &reserved).ok());
  ASSERT_TRUE(Charge("s11/charge/action", MakeCharge("o-11", 100), &charged).ok());
  EXPECT_EQ(server_->Stock("sku-a"), kStock - 11);
  EXPECT_EQ(server_->ChargedTotal(), 2600);

  for (int i = 0; i < 3; ++i) {
    RefundReply refunded;
    ASSERT_TRUE(Refund("s10/charge/compensation", MakeRefund("o-10", 2500), &refunded).ok());
    EXPECT_TRUE(refunded.refunded());  // the repeat returns the first reply
    ReleaseReply released;
    ASSERT_TRUE(Release("s10/reserve/compensation", MakeRelease("o-10"), &released).ok());
    EXPECT_TRUE(released.released());
  }
  EXPECT_EQ(server_->Stock("sku-a"), kStock - 4);
  EXPECT_EQ(server_->ChargedTotal(), 100);
  EXPECT_EQ(server_->AppliedCount(kRefundMethod, "o-10"), 1);
  EXPECT_EQ(server_->AppliedCount(kReleaseMethod, "o-10"), 1);
  EXPECT_EQ(server_->CallCount(kReleaseMethod, "o-10"), 3);

  RefundReply refunded;
  ASSERT_TRUE(Refund("s11/charge/compensation", MakeRefund("o-11", 100), &refunded).ok());
  ReleaseReply released;
  ASSERT_TRUE(Release("s11/reserve/compensation", MakeRelease("o-11"), &released).ok());
  EXPECT_EQ(server_->Stock("sku-a"), kStock);
  EXPECT_EQ(server_->ChargedTotal(), 0);

  // A retry of the applied action after its compensation returns its recorded result.
  ASSERT_TRUE(Reserve("s10/reserve/action", MakeReserve("o-10", 7, "sku-a"), &reserved).ok());
  EXPECT_EQ(server_->Stock("sku-a"), kStock);
}

TEST_F(ShopServerTest, MissingKeyIsInvalidArgument) {
  ReserveReply reply;
  const grpc::Status status = Reserve("", MakeReserve("o-12", 1), &reply);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("idempotency-key"));
  EXPECT_EQ(server_->Stock("sku-1"), kStock);
  EXPECT_EQ(server_->CallCount(kReserveMethod, "o-12"), 1);
  EXPECT_EQ(server_->AppliedCount(kReserveMethod, "o-12"), 0);
}

TEST_F(ShopServerTest, MethodFaultOnAndOff) {
  server_->SetMethodFault("shop.v1.Payment/Charge", absl::StatusCode::kUnavailable);
  ChargeReply charged;
  for (int i = 0; i < 3; ++i) {
    const grpc::Status status = Charge("s13/charge/action", MakeCharge("o-13", 50), &charged);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);
  }
  ReserveReply reserved;
  EXPECT_TRUE(Reserve("s13/reserve/action", MakeReserve("o-13", 1), &reserved).ok());
  EXPECT_EQ(server_->ChargedTotal(), 0);

  server_->ClearFaults();
  ASSERT_TRUE(Charge("s13/charge/action", MakeCharge("o-13", 50), &charged).ok());
  EXPECT_EQ(server_->ChargedTotal(), 50);
  EXPECT_EQ(server_->AppliedCount(kChargeMethod, "o-13"), 1);
  EXPECT_EQ(server_->CallCount(kChargeMethod, "o-13"), 4);

  // kOk clears one method's fault.
  server_->SetMethodFault("/shop.v1.Inventory/Release", absl::StatusCode::kInternal);
  ReleaseReply released;
  EXPECT_EQ(Release("s13/reserve/compensation", MakeRelease("o-13"), &released).error_code(),
            grpc::StatusCode::INTERNAL);
  server_->SetMethodFault("shop.v1.Inventory/Release", absl::StatusCode::kOk);
  EXPECT_TRUE(Release("s13/reserve/compensation", MakeRelease("o-13"), &released).ok());
  EXPECT_EQ(server_->Stock("sku-1"), kStock);
}

TEST_F(ShopServerTest, RecordsTraceparentPerOrder) {
  const std::string traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
  auto context = Context("s14/reserve/action");
  context->AddMetadata("traceparent", traceparent);
  ReserveReply reply;
  ASSERT_TRUE(inventory_->Reserve(context.get(), MakeReserve("o-14", 1), &reply).ok());
  EXPECT_EQ(server_->LastTraceparent("o-14"), traceparent);
  EXPECT_EQ(server_->LastTraceparent("o-unknown"), "");
}

TEST_F(ShopServerTest, AdminService) {
  grpc::ClientContext fault_context;
  shop::v1::SetFaultRequest fault;
  fault.set_method("shop.v1.Shipping/Schedule");
  fault.set_code("unavailable");
  shop::v1::SetFaultReply fault_reply;
  ASSERT_TRUE(admin_->SetFault(&fault_context, fault, &fault_reply).ok());

  ScheduleRequest schedule;
  schedule.set_order_id("o-15");
  ScheduleReply shipped;
  EXPECT_EQ(shipping_->Schedule(Context("s15/ship/action").get(), schedule, &shipped).error_code(),
            grpc::StatusCode::UNAVAILABLE);

  grpc::ClientContext clear_context;
  shop::v1::ClearFaultsReply clear_reply;
  ASSERT_TRUE(admin_->ClearFaults(&clear_context, {}, &clear_reply).ok());
  ASSERT_TRUE(shipping_->Schedule(Context("s15/ship/action").get(), schedule, &shipped).ok());

  grpc::ClientContext counts_context;
  shop::v1::GetCountsRequest counts_request;
  counts_request.set_order_id("o-15");
  counts_request.set_sku("sku-1");
  shop::v1::GetCountsReply counts;
  ASSERT_TRUE(admin_->GetCounts(&counts_context, counts_request, &counts).ok());
  ASSERT_EQ(counts.counts_size(), 5);
  for (const shop::v1::MethodCount& count : counts.counts()) {
    if (count.method() == kScheduleMethod) {
      EXPECT_EQ(count.calls(), 2);
      EXPECT_EQ(count.applied(), 1);
    } else {
      EXPECT_EQ(count.calls(), 0);
    }
  }
  EXPECT_EQ(counts.stock(), kStock);

  grpc::ClientContext ledger_context;
  shop::v1::GetLedgerRequest ledger_request;
  ledger_request.set_order_id("o-15");
  shop::v1::GetLedgerReply ledger;
  ASSERT_TRUE(admin_->GetLedger(&ledger_context, ledger_request, &ledger).ok());
  ASSERT_EQ(ledger.entries_size(), 2);
  EXPECT_EQ(ledger.entries(0).outcome(), "UNAVAILABLE");
  EXPECT_EQ(ledger.entries(1).outcome(), "OK");
  EXPECT_TRUE(ledger.entries(1).applied());
  EXPECT_EQ(ledger.entries(1).idempotency_key(), "s15/ship/action");

  grpc::ClientContext bad_context;
  fault.set_method("shop.v1.Nope/Nothing");
  EXPECT_EQ(admin_->SetFault(&bad_context, fault, &fault_reply).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  grpc::ClientContext bad_code_context;
  fault.set_method("shop.v1.Payment/Charge");
  fault.set_code("SOMETIMES");
  EXPECT_EQ(admin_->SetFault(&bad_code_context, fault, &fault_reply).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);

  grpc::ClientContext reset_context;
  shop::v1::ResetReply reset_reply;
  ASSERT_TRUE(admin_->Reset(&reset_context, {}, &reset_reply).ok());
  EXPECT_TRUE(server_->Ledger().empty());
  EXPECT_EQ(server_->CallCount(kScheduleMethod, "o-15"), 0);
}

TEST_F(ShopServerTest, ResetForgetsEverything) {
  ReserveReply reserved;
  ASSERT_TRUE(Reserve("s16/reserve/action", MakeReserve("o-16", 10), &reserved).ok());
  server_->SetMethodFault(kChargeMethod, absl::StatusCode::kUnavailable);
  server_->Reset();
  EXPECT_EQ(server_->Stock("sku-1"), kStock);
  EXPECT_TRUE(server_->Ledger().empty());
  ChargeReply charged;
  EXPECT_TRUE(Charge("s16/charge/action", MakeCharge("o-16", 1), &charged).ok());
  // The key is forgotten too: the same key applies again.
  ASSERT_TRUE(Reserve("s16/reserve/action", MakeReserve("o-16", 10), &reserved).ok());
  EXPECT_EQ(server_->AppliedCount(kReserveMethod, "o-16"), 1);
  EXPECT_EQ(server_->Stock("sku-1"), kStock - 10);
}

TEST_F(ShopServerTest, TwoHundredConcurrentCalls) {
  constexpr int kCalls = 200;
  struct Call {
    grpc::ClientContext context;
    ReserveRequest request;
    ReserveReply reply;
    grpc::Status status;
  };
  std::vector<std::unique_ptr<Call>> calls;
  std::atomic<int> remaining{kCalls};
  absl::Notification all_done;
  for (int i = 0; i < kCalls; ++i) {
    auto call = std::make_unique<Call>();
    // Every order twice, under the same key: 100 orders, each applied once.
    const int order = i / 2;
    call->context.AddMetadata("idempotency-key", absl::StrCat("c", order, "/reserve/action"));
    call->context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    call->request = MakeReserve(absl::StrCat("c-", order), 1 + order % 3, "sku-c");
    if (order % 10 == 0) call->request.mutable_behavior()->set_delay_ms(50);
    calls.push_back(std::move(call));
  }
  for (auto& call : calls) {
    Call* raw = call.get();
    inventory_->async()->Reserve(&raw->context, &raw->request, &raw->reply,
                                 [raw, &remaining, &all_done](grpc::Status status) {
                                   raw->status = std::move(status);
                                   if (--remaining == 0) all_done.Notify();
                                 });
  }
  ASSERT_TRUE(all_done.WaitForNotificationWithTimeout(absl::Seconds(10)));
  int64_t expected_taken = 0;
  for (int i = 0; i < kCalls; ++i) {
    const int order = i / 2;
    EXPECT_TRUE(calls[i]->status.ok()) << calls[i]->status.error_message();
    EXPECT_EQ(calls[i]->reply.reservation_id(), absl::StrCat("res-c-", order));
    if (i % 2 == 0) expected_taken += 1 + order % 3;
  }
  EXPECT_EQ(server_->Stock("sku-c"), kStock - expected_taken);
  for (int order = 0; order < kCalls / 2; ++order) {
    EXPECT_EQ(server_->AppliedCount(kReserveMethod, absl::StrCat("c-", order)), 1);
    EXPECT_EQ(server_->CallCount(kReserveMethod, absl::StrCat("c-", order)), 2);
  }
}

TEST(ShopServerStartTest, ConfigurableStockAndBusyPort) {
  ShopServerOptions options;
  options.initial_stock = 5;
  auto server = ShopServer::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_GT((*server)->port(), 0);
  EXPECT_EQ((*server)->address(), absl::StrCat("localhost:", (*server)->port()));
  EXPECT_EQ((*server)->Stock("anything"), 5);

  ShopServerOptions same_port;
  same_port.listen = absl::StrCat("localhost:", (*server)->port());
  auto second = ShopServer::Start(same_port);
  EXPECT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace saga::examples
