// The state and rules of the example shop participants, without any gRPC plumbing: stock per
// sku, charges per order, shipments, the per-idempotency-key record of results, server-wide
// injected faults and the call ledger. ShopServer decides every call here and only delivers
// the answer.
//
// The participant contract (see README.md):
//  * A call without `idempotency-key` metadata is INVALID_ARGUMENT.
//  * An injected fault for the method answers every call with its code, before anything else.
//  * A key whose result is recorded gets that result again (reply or error), nothing applied.
//  * `behavior.transient_failures: N` answers UNAVAILABLE to the first N calls with a key.
//  * Otherwise the call is decided once and its result recorded for the key:
//    `behavior.fail` refuses with FAILED_PRECONDITION; an invalid request is INVALID_ARGUMENT;
//    an action whose compensation already ran for the order is refused with
//    FAILED_PRECONDITION (anti-hanging); a compensation with nothing to undo succeeds and is
//    recorded (empty compensation); else the effect is applied.
// Actions and compensations are matched by order id and service (Reserve/Release on the
// inventory, Charge/Refund on the payment).
//
// Thread-safe: every method may be called from any thread; state is guarded by one mutex held
// only for short, non-blocking sections.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "shop/v1/shop.pb.h"

namespace saga::examples {

// Full names of the shop methods, as used by the ledger, counters and faults.
inline constexpr std::string_view kReserveMethod = "shop.v1.Inventory/Reserve";
inline constexpr std::string_view kReleaseMethod = "shop.v1.Inventory/Release";
inline constexpr std::string_view kChargeMethod = "shop.v1.Payment/Charge";
inline constexpr std::string_view kRefundMethod = "shop.v1.Payment/Refund";
inline constexpr std::string_view kScheduleMethod = "shop.v1.Shipping/Schedule";
inline constexpr std::string_view kShopMethods[] = {kReserveMethod, kReleaseMethod, kChargeMethod,
                                                    kRefundMethod, kScheduleMethod};

// The hold-back of a dropped reply when the request does not say.
inline constexpr int kDefaultDropReplyMs = 30000;

// One call a participant answered.
struct LedgerEntry {
  std::string method;  // "shop.v1.Inventory/Reserve"
  std::string idempotency_key;
  std::string saga_id;
  std::string step;
  std::string order_id;
  bool applied = false;  // false for repeats and refusals
  std::string outcome;   // "OK" or the status code name, e.g. "FAILED_PRECONDITION"
  absl::Time at;
  // A compensation that found no applied action to undo (it still succeeds; applied=true).
  bool empty_compensation = false;
  std::string message;  // the error message, empty when OK
};

// The gRPC metadata of a call.
struct CallMetadata {
  std::string idempotency_key;
  std::string saga_id;
  std::string step;
  std::string traceparent;
};

// How a call is answered: its status, after how long, and what the ledger recorded.
struct CallDecision {
  absl::Status status;
  absl::Duration wait = absl::ZeroDuration();  // delay_ms, plus the hold-back of a drop
  LedgerEntry entry;
};

class ShopState {
 public:
  ShopState(int64_t initial_stock, size_t ledger_capacity);

  ShopState(const ShopState&) = delete;
  ShopState& operator=(const ShopState&) = delete;

  // Decide a call; the reply is filled when the decision is OK.
  CallDecision Reserve(const CallMetadata& md, const shop::v1::ReserveRequest& request,
                       shop::v1::ReserveReply* reply);
  CallDecision Release(const CallMetadata& md, const shop::v1::ReleaseRequest& request,
                       shop::v1::ReleaseReply* reply);
  CallDecision Charge(const CallMetadata& md, const shop::v1::ChargeRequest& request,
                      shop::v1::ChargeReply* reply);
  CallDecision Refund(const CallMetadata& md, const shop::v1::RefundRequest& request,
                      shop::v1::RefundReply* reply);
  CallDecision Schedule(const CallMetadata& md, const shop::v1::ScheduleRequest& request,
                        shop::v1::ScheduleReply* reply);

  // The newest `ledger_capacity` entries, oldest first.
  std::vector<LedgerEntry> Ledger() const;
  // Exact counts since the last Reset (not limited by the ledger's capacity).
  int AppliedCount(std::string_view method, std::string_view order_id) const;
  int CallCount(std::string_view method, std::string_view order_id) const;
  int64_t Stock(std::string_view sku) const;
  int64_t ChargedTotal() const;
  std::string LastTraceparent(std::string_view order_id) const;

  // `method` as in kShopMethods (a leading "/" is ignored); kOk clears the method's fault.
  void SetMethodFault(std::string_view method, absl::StatusCode code);
  void ClearFaults();
  // Back to the initial state: stock, charges, shipments, recorded keys, ledger, counters,
  // traceparents and faults.
  void Reset();

 private:
  struct KeyRecord {
    int transient_failures_answered = 0;
    bool decided = false;
    absl::Status status;
    std::string reply;  // serialized reply when status is OK
  };
  struct Reservation {
    absl::flat_hash_map<std::string, int64_t> held;  // sku -> quantity, until released
    bool compensated = false;
  };
  struct Payment {
    int64_t charged = 0;  // not refunded
    bool compensated = false;
  };
  struct Counts {
    int calls = 0;
    int applied = 0;
  };

  // Applies the effect of a call whose result is not recorded yet (mu_ held). Sets
  // `*empty_compensation` for a compensation with nothing to undo.
  using ApplyFn = absl::FunctionRef<absl::Status(bool* empty_compensation)>;

  CallDecision Run(std::string_view method, const CallMetadata& md, const std::string& order_id,
                   const shop::v1::Behavior& behavior, google::protobuf::Message* reply,
                   ApplyFn apply);
  int64_t StockLocked(std::string_view sku) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const int64_t initial_stock_;
  const size_t ledger_capacity_;

  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, KeyRecord> keys_ ABSL_GUARDED_BY(mu_);  // method + key
  absl::flat_hash_map<std::string, int64_t> stock_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, Reservation> reservations_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, Payment> payments_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, std::string> shipments_ ABSL_GUARDED_BY(mu_);
  int64_t charged_total_ ABSL_GUARDED_BY(mu_) = 0;
  absl::flat_hash_map<std::string, absl::StatusCode> faults_ ABSL_GUARDED_BY(mu_);
  std::deque<LedgerEntry> ledger_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::pair<std::string, std::string>, Counts> counts_
      ABSL_GUARDED_BY(mu_);  // (method, order id)
  absl::flat_hash_map<std::string, std::string> traceparents_ ABSL_GUARDED_BY(mu_);
};

}  // namespace saga::examples
