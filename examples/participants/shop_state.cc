#include "examples/participants/shop_state.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace saga::examples {
namespace {

// Debian's Abseil has its own string_view type; the API uses std::string_view.
absl::string_view ToAbsl(std::string_view s) { return absl::string_view(s.data(), s.size()); }

absl::string_view NormalizeMethod(std::string_view method) {
  if (!method.empty() && method.front() == '/') method.remove_prefix(1);
  return ToAbsl(method);
}

}  // namespace

ShopState::ShopState(int64_t initial_stock, size_t ledger_capacity)
    : initial_stock_(initial_stock), ledger_capacity_(std::max<size_t>(ledger_capacity, 1)) {}

CallDecision ShopState::Run(std::string_view method, const CallMetadata& md,
                            const std::string& order_id, const shop::v1::Behavior& behavior,
                            google::protobuf::Message* reply, ApplyFn apply) {
  CallDecision decision;
  LedgerEntry& entry = decision.entry;
  entry.method = std::string(method);
  entry.idempotency_key = md.idempotency_key;
  entry.saga_id = md.saga_id;
  entry.step = md.step;
  entry.order_id = order_id;
  bool drop = false;
  {
    absl::MutexLock lock(&mu_);
    entry.at = absl::Now();
    if (!md.traceparent.empty()) traceparents_[order_id] = md.traceparent;

    if (md.idempotency_key.empty()) {
      decision.status = absl::InvalidArgumentError("missing idempotency-key metadata");
    } else if (auto fault = faults_.find(entry.method); fault != faults_.end()) {
      decision.status =
          absl::Status(fault->second, absl::StrCat("injected fault on ", entry.method));
    } else {
      KeyRecord& record = keys_[absl::StrCat(entry.method, " ", md.idempotency_key)];
      if (record.decided) {
        // A repeat: the first result, nothing applied.
        decision.status = record.status;
        if (record.status.ok()) reply->ParseFromString(record.reply);
      } else if (record.transient_failures_answered < behavior.transient_failures()) {
        ++record.transient_failures_answered;
        decision.status = absl::UnavailableError(
            absl::StrCat("transient failure ", record.transient_failures_answered, " of ",
                         behavior.transient_failures()));
      } else {
        if (!behavior.fail().empty()) {
          decision.status = absl::FailedPreconditionError(behavior.fail());
        } else {
          decision.status = apply(&entry.empty_compensation);
        }
        record.decided = true;
        record.status = decision.status;
        if (decision.status.ok()) {
          reply->SerializeToString(&record.reply);
          entry.applied = true;
          drop = behavior.drop_reply();
        } else {
          reply->Clear();
        }
      }
    }

    entry.outcome = decision.status.ok() ? "OK" : absl::StatusCodeToString(decision.status.code());
    entry.message = std::string(decision.status.message());
    Counts& counts = counts_[std::make_pair(entry.method, order_id)];
    ++counts.calls;
    if (entry.applied) ++counts.applied;
    ledger_.push_back(entry);
    while (ledger_.size() > ledger_capacity_) ledger_.pop_front();
  }
  decision.wait = absl::Milliseconds(std::max(0, behavior.delay_ms()));
  if (drop) {
    const int drop_ms =
        behavior.drop_reply_ms() > 0 ? behavior.drop_reply_ms() : kDefaultDropReplyMs;
    decision.wait += absl::Milliseconds(drop_ms);
  }
  return decision;
}

CallDecision ShopState::Reserve(const CallMetadata& md, const shop::v1::ReserveRequest& request,
                                shop::v1::ReserveReply* reply) {
  return Run(
      kReserveMethod, md, request.order_id(), request.behavior(), reply,
      [&](bool*) ABSL_NO_THREAD_SAFETY_ANALYSIS -> absl::Status {
        if (request.order_id().empty()) {
          return absl::InvalidArgumentError("order_id is required");
        }
        if (request.sku().empty()) return absl::InvalidArgumentError("sku is required");
        if (request.quantity() <= 0) {
          return absl::InvalidArgumentError(
              absl::StrCat("quantity must be positive, got ", request.quantity()));
        }
        Reservation& reservation = reservations_[request.order_id()];
        if (reservation.compensated) {
          return absl::FailedPreconditionError(absl::StrCat(
              "order ", request.order_id(), ": reserve arrived after its release (anti-hanging)"));
        }
        const int64_t available = StockLocked(request.sku());
        if (available < request.quantity()) {
          return absl::FailedPreconditionError(absl::StrCat("out of stock: sku ", request.sku(),
                                                            " has ", available, ", asked ",
                                                            request.quantity()));
        }
        stock_[request.sku()] = available - request.quantity();
        reservation.held[request.sku()] += request.quantity();
        reply->set_reservation_id(absl::StrCat("res-", request.order_id()));
        return absl::OkStatus();
      });
}

CallDecision ShopState::Release(const CallMetadata& md, const shop::v1::ReleaseRequest& request,
                                shop::v1::ReleaseReply* reply) {
  return Run(kReleaseMethod, md, request.order_id(), request.behavior(), reply,
             [&](bool* empty) ABSL_NO_THREAD_SAFETY_ANALYSIS -> absl::Status {
               if (request.order_id().empty()) {
                 return absl::InvalidArgumentError("order_id is required");
               }
               Reservation& reservation = reservations_[request.order_id()];
               reservation.compensated = true;
               *empty = reservation.held.empty();
               for (const auto& [sku, quantity] : reservation.held) {
                 stock_[sku] = StockLocked(sku) + quantity;
               }
               reservation.held.clear();
               reply->set_released(!*empty);
               return absl::OkStatus();
             });
}

CallDecision ShopState::Charge(const CallMetadata& md, const shop::v1::ChargeRequest& request,
                               shop::v1::ChargeReply* reply) {
  return Run(
      kChargeMethod, md, request.order_id(), request.behavior(), reply,
      [&](bool*) ABSL_NO_THREAD_SAFETY_ANALYSIS -> absl::Status {
        if (request.order_id().empty()) {
          return absl::InvalidArgumentError("order_id is required");
        }
        if (request.amount_cents() < 0) {
          return absl::InvalidArgumentError(
              absl::StrCat("amount_cents must not be negative, got ", request.amount_cents()));
        }
        Payment& payment = payments_[request.order_id()];
        if (payment.compensated) {
          return absl::FailedPreconditionError(absl::StrCat(
              "order ", request.order_id(), ": charge arrived after its refund (anti-hanging)"));
        }
        payment.charged += request.amount_cents();
        charged_total_ += request.amount_cents();
        reply->set_payment_id(absl::StrCat("pay-", request.order_id()));
        reply->set_charged_cents(request.amount_cents());
        return absl::OkStatus();
      });
}

CallDecision ShopState::Refund(const CallMetadata& md, const shop::v1::RefundRequest& request,
                               shop::v1::RefundReply* reply) {
  return Run(kRefundMethod, md, request.order_id(), request.behavior(), reply,
             [&](bool* empty) ABSL_NO_THREAD_SAFETY_ANALYSIS -> absl::Status {
               if (request.order_id().empty()) {
                 return absl::InvalidArgumentError("order_id is required");
               }
               Payment& payment = payments_[request.order_id()];
               payment.compensated = true;
               // What was charged is refunded, whatever amount the request names.
               *empty = payment.charged == 0;
               charged_total_ -= payment.charged;
               payment.charged = 0;
               reply->set_refunded(!*empty);
               return absl::OkStatus();
             });
}

CallDecision ShopState::Schedule(const CallMetadata& md, const shop::v1::ScheduleRequest& request,
                                 shop::v1::ScheduleReply* reply) {
  return Run(kScheduleMethod, md, request.order_id(), request.behavior(), reply,
             [&](bool*) ABSL_NO_THREAD_SAFETY_ANALYSIS -> absl::Status {
               if (request.order_id().empty()) {
                 return absl::InvalidArgumentError("order_id is required");
               }
               shipments_[request.order_id()] = request.address();
               reply->set_tracking_id(absl::StrCat("trk-", request.order_id()));
               return absl::OkStatus();
             });
}

std::vector<LedgerEntry> ShopState::Ledger() const {
  absl::MutexLock lock(&mu_);
  return std::vector<LedgerEntry>(ledger_.begin(), ledger_.end());
}

int ShopState::AppliedCount(std::string_view method, std::string_view order_id) const {
  absl::MutexLock lock(&mu_);
  auto it =
      counts_.find(std::make_pair(std::string(NormalizeMethod(method)), std::string(order_id)));
  return it == counts_.end() ? 0 : it->second.applied;
}

int ShopState::CallCount(std::string_view method, std::string_view order_id) const {
  absl::MutexLock lock(&mu_);
  auto it =
      counts_.find(std::make_pair(std::string(NormalizeMethod(method)), std::string(order_id)));
  return it == counts_.end() ? 0 : it->second.calls;
}

int64_t ShopState::StockLocked(std::string_view sku) const {
  auto it = stock_.find(ToAbsl(sku));
  return it == stock_.end() ? initial_stock_ : it->second;
}

int64_t ShopState::Stock(std::string_view sku) const {
  absl::MutexLock lock(&mu_);
  return StockLocked(sku);
}

int64_t ShopState::ChargedTotal() const {
  absl::MutexLock lock(&mu_);
  return charged_total_;
}

std::string ShopState::LastTraceparent(std::string_view order_id) const {
  absl::MutexLock lock(&mu_);
  auto it = traceparents_.find(ToAbsl(order_id));
  return it == traceparents_.end() ? std::string() : it->second;
}

void ShopState::SetMethodFault(std::string_view method, absl::StatusCode code) {
  absl::MutexLock lock(&mu_);
  if (code == absl::StatusCode::kOk) {
    faults_.erase(NormalizeMethod(method));
  } else {
    faults_[NormalizeMethod(method)] = code;
  }
}

void ShopState::ClearFaults() {
  absl::MutexLock lock(&mu_);
  faults_.clear();
}

void ShopState::Reset() {
  absl::MutexLock lock(&mu_);
  keys_.clear();
  stock_.clear();
  reservations_.clear();
  payments_.clear();
  shipments_.clear();
  charged_total_ = 0;
  faults_.clear();
  ledger_.clear();
  counts_.clear();
  traceparents_.clear();
}

}  // namespace saga::examples
