// The bank participant's state and rules, without gRPC: balances and holds per account, money
// in transit per transfer (escrow), the per-idempotency-key record of results, the seeded
// per-delivery fault plan and the ledger of every delivery. BankServer (bank_server.h) decides
// each call here and only delivers the answer.
//
// The participant contract (README.md, "The participant contract"):
//  * A call without `idempotency-key` metadata is INVALID_ARGUMENT.
//  * A key whose result is recorded gets that result again (`repeat`), nothing applied.
//  * `transient_failures: N` in the request answers UNAVAILABLE to the first N deliveries of
//    the key, before anything is decided.
//  * Otherwise the call is decided once and its result recorded for the key: an action whose
//    compensation already ran for (transfer, step) is refused with FAILED_PRECONDITION
//    (anti-hanging, `refused_late`); `fail` refuses with FAILED_PRECONDITION (a scripted
//    business failure); a compensation with nothing to undo succeeds and is recorded (`empty`);
//    else the effect is applied.
// Effects are matched by (transfer id, step) from the request body, idempotency by the key.
//
// Thread-safe: one mutex, held for short non-blocking sections.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "bank/v1/bank.pb.h"

namespace saga::fault {

enum class BankMethod : int {
  kReserve,
  kReleaseReserve,
  kDebit,
  kRevertDebit,
  kCredit,
  kRevertCredit,
  kFee,
  kRevertFee,
  kConfirm,
  kRevertConfirm,
};
std::string_view BankMethodName(BankMethod method);
bool IsCompensation(BankMethod method);

// The accounts every bank starts with: "acct-00" .. "acct-<n-1>" at `initial_balance`, and
// "fees" at 0.
std::vector<std::string> DefaultAccounts(int n);
inline constexpr char kFeeAccount[] = "fees";

struct CallMetadata {
  std::string idempotency_key;
  std::string saga_id;
  std::string step;
  std::string peer;
};

// What to do with one delivery, drawn from the seed.
struct DeliveryPlan {
  std::string fault;  // "", "unavailable", "drop", "late", "slow"
  int delivery = 0;   // index of this delivery for its key, from 1
  absl::Duration before_decide = absl::ZeroDuration();
  absl::Duration after_decide = absl::ZeroDuration();
};

struct Decision {
  absl::Status status;
  bank::v1::MoveReply reply;
};

class BankState {
 public:
  BankState(std::vector<std::string> accounts, int64_t initial_balance,
            bank::v1::FaultConfig faults);

  BankState(const BankState&) = delete;
  BankState& operator=(const BankState&) = delete;

  void Configure(const bank::v1::FaultConfig& faults);

  // Counts a delivery of `md.idempotency_key` and draws its faults. An "unavailable" plan is
  // recorded in the ledger at once (call Unavailable()).
  DeliveryPlan Plan(const CallMetadata& md, const bank::v1::MoveRequest& request);
  // Records the UNAVAILABLE answer of a planned "unavailable" delivery.
  Decision Unavailable(BankMethod method, const CallMetadata& md,
                       const bank::v1::MoveRequest& request, const DeliveryPlan& plan,
                       absl::Time received);
  // Decides the call (see the contract above) and records it in the ledger.
  Decision Decide(BankMethod method, const CallMetadata& md, const bank::v1::MoveRequest& request,
                  const DeliveryPlan& plan, absl::Time received);

  // Ledger entries with seq > after_seq, at most `limit`.
  std::vector<bank::v1::LedgerEntry> Export(int64_t after_seq, int limit) const;
  bank::v1::SnapshotReply Snapshot() const;

  void CallStarted() { in_flight_.fetch_add(1); }
  void CallFinished() { in_flight_.fetch_sub(1); }
  int64_t in_flight() const { return in_flight_.load(); }

 private:
  struct KeyRecord {
    int deliveries = 0;
    int transient_answered = 0;
    bool decided = false;
    absl::Status status;
    bank::v1::MoveReply reply;
    BankMethod method = BankMethod::kReserve;
  };
  struct Effect {
    std::string account;
    int64_t amount = 0;
    bool applied = false;      // the action's effect happened
    bool compensated = false;  // its compensation was decided (undo or empty)
  };
  struct AccountState {
    int64_t balance = 0;
    int64_t held = 0;
  };

  absl::Status ApplyLocked(BankMethod method, const bank::v1::MoveRequest& request,
                           bank::v1::MoveReply* reply) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void CheckLocked(const std::string& account, const std::string& transfer)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bank::v1::LedgerEntry& AppendLocked(BankMethod method, const CallMetadata& md,
                                      const bank::v1::MoveRequest& request,
                                      const DeliveryPlan& plan, absl::Time received)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  mutable absl::Mutex mu_;
  bank::v1::FaultConfig faults_ ABSL_GUARDED_BY(mu_);
  int64_t initial_total_ = 0;
  std::map<std::string, AccountState> accounts_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, int64_t> escrow_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, KeyRecord> keys_ ABSL_GUARDED_BY(mu_);
  // (transfer id, step) -> the action's effect and whether it was compensated.
  absl::flat_hash_map<std::pair<std::string, std::string>, Effect> effects_ ABSL_GUARDED_BY(mu_);
  std::vector<bank::v1::LedgerEntry> ledger_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> anomalies_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, int64_t> fault_counts_ ABSL_GUARDED_BY(mu_);
  std::atomic<int64_t> in_flight_{0};
};

// Deterministic 64-bit mix of (seed, text, n), for the fault draws and the workload.
uint64_t Mix(uint64_t seed, std::string_view text, uint64_t n);
// A uniform double in [0, 1) from Mix.
double Uniform01(uint64_t bits);

}  // namespace saga::fault
