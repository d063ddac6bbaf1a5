// The bank participant's rules (bank_state.h): the participant contract, the money moves and
// the seeded fault plan. No network.
#include "tests/fault/bank/bank_state.h"

#include <map>

#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace saga::fault {
namespace {

class BankStateTest : public ::testing::Test {
 protected:
  BankStateTest() : state_(DefaultAccounts(2), 1000, {}) {}

  Decision Call(BankMethod method, const std::string& step, int64_t amount,
                const std::string& account = "acct-00", bool fail = false, int transient = 0,
                const std::string& saga = "s1") {
    CallMetadata md;
    md.saga_id = saga;
    md.step = step;
    md.idempotency_key = saga + "/" + step + (IsCompensation(method) ? "/compensation" : "/action");
    bank::v1::MoveRequest req;
    req.set_transfer_id(saga);
    req.set_step(step);
    req.set_account(account);
    req.set_amount(amount);
    req.set_fail(fail);
    req.set_transient_failures(transient);
    DeliveryPlan plan = state_.Plan(md, req);
    return state_.Decide(method, md, req, plan, absl::Now());
  }

  std::map<std::string, std::pair<int64_t, int64_t>> Accounts() {
    std::map<std::string, std::pair<int64_t, int64_t>> out;
    const bank::v1::SnapshotReply snap = state_.Snapshot();
    for (const auto& a : snap.accounts()) out[a.name()] = {a.balance(), a.held()};
    return out;
  }

  BankState state_;
};

TEST_F(BankStateTest, ARepeatGetsTheFirstResultAndAppliesNothing) {
  EXPECT_TRUE(Call(BankMethod::kReserve, "reserve", 100).status.ok());
  EXPECT_TRUE(Call(BankMethod::kReserve, "reserve", 100).status.ok());
  EXPECT_EQ(Accounts()["acct-00"].second, 100);
  const auto ledger = state_.Export(0, 10);
  ASSERT_EQ(ledger.size(), 2u);
  EXPECT_TRUE(ledger[0].applied());
  EXPECT_FALSE(ledger[1].applied());
  EXPECT_TRUE(ledger[1].repeat());
  EXPECT_EQ(ledger[1].delivery(), 2);
}

TEST_F(BankStateTest, EmptyCompensationThenTheLateActionIsRefused) {
  Decision c = Call(BankMethod::kReleaseReserve, "reserve", 100);
  EXPECT_TRUE(c.status.ok());
  EXPECT_TRUE(c.reply.empty());
  Decision a = Call(BankMethod::kReserve, "reserve", 100);
  EXPECT_EQ(a.status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Accounts()["acct-00"].second, 0);
  EXPECT_TRUE(state_.Export(1, 1)[0].refused_late());
}

TEST_F(BankStateTest, ScriptedTransientFailuresThenApplied) {
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(Call(BankMethod::kReleaseReserve, "reserve", 1, "acct-00", false, 2).status.code(),
              absl::StatusCode::kUnavailable);
  }
  EXPECT_TRUE(Call(BankMethod::kReleaseReserve, "reserve", 1, "acct-00", false, 2).status.ok());
}

TEST_F(BankStateTest, ScriptedBusinessFailureIsRecordedForTheKey) {
  EXPECT_EQ(Call(BankMethod::kCredit, "credit", 5, "acct-01", true).status.code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Call(BankMethod::kCredit, "credit", 5, "acct-01", false).status.code(),
            absl::StatusCode::kFailedPrecondition);  // the first result, even without `fail`
  EXPECT_EQ(Accounts()["acct-01"].first, 1000);
}

TEST_F(BankStateTest, ATransferAndItsReverseCompensationConserveMoney) {
  Call(BankMethod::kReserve, "reserve", 110);
  Call(BankMethod::kDebit, "debit", 110);
  Call(BankMethod::kCredit, "credit", 100, "acct-01");
  Call(BankMethod::kFee, "fee", 10);
  Call(BankMethod::kConfirm, "confirm", 100, "acct-01");
  auto acc = Accounts();
  EXPECT_EQ(acc["acct-00"], std::make_pair(int64_t{890}, int64_t{0}));
  EXPECT_EQ(acc["acct-01"].first, 1100);
  EXPECT_EQ(acc["fees"].first, 10);
  EXPECT_EQ(state_.Snapshot().total(), int64_t{2000});
  for (auto m : {BankMethod::kRevertConfirm, BankMethod::kRevertFee, BankMethod::kRevertCredit,
                 BankMethod::kRevertDebit, BankMethod::kReleaseReserve}) {
    const char* step = m == BankMethod::kRevertConfirm  ? "confirm"
                       : m == BankMethod::kRevertFee    ? "fee"
                       : m == BankMethod::kRevertCredit ? "credit"
                       : m == BankMethod::kRevertDebit  ? "debit"
                                                        : "reserve";
    EXPECT_TRUE(Call(m, step, 0).status.ok());
  }
  acc = Accounts();
  EXPECT_EQ(acc["acct-00"], std::make_pair(int64_t{1000}, int64_t{0}));
  EXPECT_EQ(acc["acct-01"].first, 1000);
  EXPECT_EQ(acc["fees"].first, 0);
  const bank::v1::SnapshotReply snap = state_.Snapshot();
  EXPECT_EQ(snap.escrow_size(), 0);
  EXPECT_EQ(snap.anomalies_size(), 0);
}

TEST_F(BankStateTest, CompensationsInTheWrongOrderAreSeen) {
  Call(BankMethod::kReserve, "reserve", 110);
  Call(BankMethod::kDebit, "debit", 110);
  Call(BankMethod::kCredit, "credit", 100, "acct-01");
  Call(BankMethod::kRevertDebit, "debit", 0);  // before RevertCredit: escrow goes negative
  const bank::v1::SnapshotReply snap = state_.Snapshot();
  EXPECT_GT(snap.anomalies_size(), 0);
}

TEST(BankFaultPlanTest, TheSeedDecidesEachDeliveryAndTheSharesHold) {
  bank::v1::FaultConfig f;
  f.set_seed(7);
  f.set_unavailable(0.05);
  f.set_drop_reply(0.03);
  f.set_late_apply(0.01);
  f.set_hold_ms(1500);
  BankState a(DefaultAccounts(1), 1, f), b(DefaultAccounts(1), 1, f);
  std::map<std::string, int> counts;
  const int n = 20000;
  for (int i = 0; i < n; ++i) {
    CallMetadata md;
    md.idempotency_key = "k" + std::to_string(i);
    bank::v1::MoveRequest req;
    const DeliveryPlan pa = a.Plan(md, req);
    const DeliveryPlan pb = b.Plan(md, req);
    EXPECT_EQ(pa.fault, pb.fault);
    ++counts[pa.fault];
  }
  EXPECT_NEAR(counts["unavailable"] / double{n}, 0.05, 0.01);
  EXPECT_NEAR(counts["drop"] / double{n}, 0.03, 0.01);
  EXPECT_NEAR(counts["late"] / double{n}, 0.01, 0.005);
}

}  // namespace
}  // namespace saga::fault
