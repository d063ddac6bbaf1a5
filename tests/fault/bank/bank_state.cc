#include "tests/fault/bank/bank_state.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"

namespace saga::fault {
namespace {

constexpr size_t kMaxAnomalies = 1000;

absl::string_view Sv(std::string_view s) { return absl::string_view(s.data(), s.size()); }

}  // namespace

std::string_view BankMethodName(BankMethod method) {
  switch (method) {
    case BankMethod::kReserve:
      return "Reserve";
    case BankMethod::kReleaseReserve:
      return "ReleaseReserve";
    case BankMethod::kDebit:
      return "Debit";
    case BankMethod::kRevertDebit:
      return "RevertDebit";
    case BankMethod::kCredit:
      return "Credit";
    case BankMethod::kRevertCredit:
      return "RevertCredit";
    case BankMethod::kFee:
      return "Fee";
    case BankMethod::kRevertFee:
      return "RevertFee";
    case BankMethod::kConfirm:
      return "Confirm";
    case BankMethod::kRevertConfirm:
      return "RevertConfirm";
  }
  return "?";
}

bool IsCompensation(BankMethod method) { return static_cast<int>(method) % 2 == 1; }

std::vector<std::string> DefaultAccounts(int n) {
  std::vector<std::string> out;
  for (int i = 0; i < n; ++i) out.push_back(absl::StrFormat("acct-%02d", i));
  return out;
}

uint64_t Mix(uint64_t seed, std::string_view text, uint64_t n) {
  // FNV-1a over the text, folded with the seed and n, then splitmix64 finalisation: stable
  // across processes and builds (absl::Hash is salted per process).
  uint64_t h = 1469598103934665603ULL ^ seed;
  for (unsigned char c : text) {
    h ^= c;
    h *= 1099511628211ULL;
  }
  h ^= n + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2);
  h += 0x9e3779b97f4a7c15ULL;
  h = (h ^ (h >> 30)) * 0xbf58476d1ce4e5b9ULL;
  h = (h ^ (h >> 27)) * 0x94d049bb133111ebULL;
  return h ^ (h >> 31);
}

double Uniform01(uint64_t bits) { return static_cast<double>(bits >> 11) * 0x1.0p-53; }

BankState::BankState(std::vector<std::string> accounts, int64_t initial_balance,
                     bank::v1::FaultConfig faults)
    : faults_(std::move(faults)) {
  for (const auto& name : accounts) {
    accounts_[name].balance = initial_balance;
    initial_total_ += initial_balance;
  }
  accounts_[kFeeAccount];  // starts at 0
}

void BankState::Configure(const bank::v1::FaultConfig& faults) {
  absl::MutexLock lock(&mu_);
  faults_ = faults;
}

DeliveryPlan BankState::Plan(const CallMetadata& md, const bank::v1::MoveRequest& request) {
  absl::MutexLock lock(&mu_);
  DeliveryPlan plan;
  plan.delivery = ++keys_[md.idempotency_key].deliveries;
  plan.before_decide =
      absl::Milliseconds(std::max(0, faults_.base_delay_ms()) + std::max(0, request.delay_ms()));
  const uint64_t bits =
      Mix(faults_.seed(), md.idempotency_key, static_cast<uint64_t>(plan.delivery));
  double u = Uniform01(bits);
  const absl::Duration hold = absl::Milliseconds(std::max(0, faults_.hold_ms()));
  if ((u -= faults_.unavailable()) < 0) {
    plan.fault = "unavailable";
    plan.before_decide = absl::ZeroDuration();
  } else if ((u -= faults_.drop_reply()) < 0) {
    plan.fault = "drop";
    plan.after_decide = hold;
  } else if ((u -= faults_.late_apply()) < 0) {
    plan.fault = "late";
    plan.before_decide += hold;
  } else if ((u -= faults_.slow()) < 0) {
    plan.fault = "slow";
    const double v = Uniform01(Mix(bits, "slow", 1));
    plan.after_decide =
        absl::Milliseconds(static_cast<int64_t>(v * std::max(0, faults_.slow_max_ms())));
  }
  if (request.hold_ms() > 0) {
    plan.fault = "scripted_hang";
    plan.before_decide = absl::Milliseconds(request.hold_ms());
    plan.after_decide = absl::ZeroDuration();
  }
  if (!plan.fault.empty()) ++fault_counts_[plan.fault];
  return plan;
}

bank::v1::LedgerEntry& BankState::AppendLocked(BankMethod method, const CallMetadata& md,
                                               const bank::v1::MoveRequest& request,
                                               const DeliveryPlan& plan, absl::Time received) {
  bank::v1::LedgerEntry& e = ledger_.emplace_back();
  e.set_seq(static_cast<int64_t>(ledger_.size()));
  e.set_at_us(absl::ToUnixMicros(absl::Now()));
  e.set_received_us(absl::ToUnixMicros(received));
  e.set_method(std::string(BankMethodName(method)));
  e.set_idempotency_key(md.idempotency_key);
  e.set_saga_id(md.saga_id);
  e.set_step(md.step);
  e.set_body_transfer_id(request.transfer_id());
  e.set_body_step(request.step());
  e.set_compensation(IsCompensation(method));
  e.set_fault(plan.fault);
  e.set_delivery(plan.delivery);
  e.set_peer(md.peer);
  return e;
}

Decision BankState::Unavailable(BankMethod method, const CallMetadata& md,
                                const bank::v1::MoveRequest& request, const DeliveryPlan& plan,
                                absl::Time received) {
  absl::MutexLock lock(&mu_);
  Decision d;
  d.status = absl::UnavailableError("injected: unavailable");
  bank::v1::LedgerEntry& e = AppendLocked(method, md, request, plan, received);
  e.set_outcome("UNAVAILABLE");
  return d;
}

Decision BankState::Decide(BankMethod method, const CallMetadata& md,
                           const bank::v1::MoveRequest& request, const DeliveryPlan& plan,
                           absl::Time received) {
  absl::MutexLock lock(&mu_);
  Decision d;
  bank::v1::LedgerEntry& e = AppendLocked(method, md, request, plan, received);
  if (md.idempotency_key.empty()) {
    d.status = absl::InvalidArgumentError("missing idempotency-key metadata");
  } else {
    KeyRecord& record = keys_[md.idempotency_key];
    if (record.decided) {
      d.status = record.status;
      d.reply = record.reply;
      e.set_repeat(true);
      if (record.method != method) {
        if (anomalies_.size() < kMaxAnomalies) {
          anomalies_.push_back(absl::StrCat("key ", md.idempotency_key, " used for ",
                                            Sv(BankMethodName(record.method)), " and ",
                                            Sv(BankMethodName(method))));
        }
      }
    } else if (record.transient_answered < request.transient_failures()) {
      ++record.transient_answered;
      d.status = absl::UnavailableError(absl::StrCat("scripted transient failure ",
                                                     record.transient_answered, " of ",
                                                     request.transient_failures()));
      e.set_fault("scripted_transient");
      ++fault_counts_["scripted_transient"];
    } else {
      const auto id = std::make_pair(request.transfer_id(), request.step());
      Effect& effect = effects_[id];
      if (!IsCompensation(method) && effect.compensated) {
        d.status = absl::FailedPreconditionError(
            absl::StrCat("transfer ", request.transfer_id(), " step ", request.step(),
                         ": action arrived after its compensation (anti-hanging)"));
        e.set_refused_late(true);
      } else if (!IsCompensation(method) && request.fail()) {
        d.status = absl::FailedPreconditionError(
            absl::StrCat("scripted business failure of ", request.step()));
      } else {
        d.status = ApplyLocked(method, request, &d.reply);
        if (d.status.ok()) e.set_applied(true);
        e.set_empty(d.reply.empty());
        e.set_moved(d.reply.moved());
      }
      record.decided = true;
      record.status = d.status;
      record.reply = d.reply;
      record.method = method;
    }
  }
  e.set_outcome(d.status.ok() ? "OK" : absl::StatusCodeToString(d.status.code()));
  return d;
}

absl::Status BankState::ApplyLocked(BankMethod method, const bank::v1::MoveRequest& request,
                                    bank::v1::MoveReply* reply) {
  const std::string& t = request.transfer_id();
  if (t.empty() || request.step().empty()) {
    return absl::InvalidArgumentError("transfer_id and step are required");
  }
  reply->set_ref(absl::StrCat(request.step(), ":", t));
  Effect& effect = effects_[std::make_pair(t, request.step())];
  if (IsCompensation(method)) {
    effect.compensated = true;
    if (!effect.applied) {
      reply->set_empty(true);
      return absl::OkStatus();
    }
    effect.applied = false;
    const int64_t x = effect.amount;
    AccountState& a = accounts_[effect.account];
    switch (method) {
      case BankMethod::kReleaseReserve:
        a.held -= x;
        break;
      case BankMethod::kRevertDebit:
        a.balance += x;
        a.held += x;
        escrow_[t] -= x;
        break;
      case BankMethod::kRevertCredit:
        a.balance -= x;
        escrow_[t] += x;
        break;
      case BankMethod::kRevertFee:
        a.balance -= x;
        escrow_[t] += x;
        break;
      case BankMethod::kRevertConfirm:
        break;
      default:
        break;
    }
    reply->set_moved(x);
    CheckLocked(effect.account, t);
    return absl::OkStatus();
  }
  if (effect.applied) {
    // The same (transfer, step) under a second key: apply again, so that the ledger shows it.
    if (anomalies_.size() < kMaxAnomalies) {
      anomalies_.push_back(
          absl::StrCat("transfer ", t, " step ", request.step(), " applied under a second key"));
    }
  }
  const std::string account =
      method == BankMethod::kFee ? std::string(kFeeAccount) : request.account();
  if (method != BankMethod::kConfirm && !accounts_.contains(account)) {
    return absl::InvalidArgumentError(absl::StrCat("unknown account '", account, "'"));
  }
  const int64_t x = request.amount();
  if (method != BankMethod::kConfirm && x <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("amount must be positive, got ", x));
  }
  AccountState& a = accounts_[method == BankMethod::kConfirm ? std::string(kFeeAccount) : account];
  switch (method) {
    case BankMethod::kReserve:
      a.held += x;
      break;
    case BankMethod::kDebit:
      a.balance -= x;
      a.held -= x;
      escrow_[t] += x;
      break;
    case BankMethod::kCredit:
      a.balance += x;
      escrow_[t] -= x;
      break;
    case BankMethod::kFee:
      a.balance += x;
      escrow_[t] -= x;
      break;
    case BankMethod::kConfirm:
      if (auto it = escrow_.find(t);
          it != escrow_.end() && it->second != 0 && anomalies_.size() < kMaxAnomalies) {
        anomalies_.push_back(
            absl::StrCat("transfer ", t, " confirmed with ", it->second, " still in escrow"));
      }
      break;
    default:
      break;
  }
  effect.applied = true;
  effect.account = method == BankMethod::kConfirm ? std::string(kFeeAccount) : account;
  effect.amount = method == BankMethod::kConfirm ? 0 : x;
  reply->set_moved(effect.amount);
  CheckLocked(effect.account, t);
  return absl::OkStatus();
}

void BankState::CheckLocked(const std::string& account, const std::string& transfer) {
  if (anomalies_.size() >= kMaxAnomalies) return;
  const AccountState& a = accounts_[account];
  if (a.held < 0) {
    anomalies_.push_back(absl::StrCat("account ", account, " hold went negative (", a.held,
                                      ") in transfer ", transfer));
  }
  if (auto it = escrow_.find(transfer); it != escrow_.end() && it->second < 0) {
    anomalies_.push_back(
        absl::StrCat("escrow of transfer ", transfer, " went negative (", it->second, ")"));
  }
}

std::vector<bank::v1::LedgerEntry> BankState::Export(int64_t after_seq, int limit) const {
  absl::MutexLock lock(&mu_);
  std::vector<bank::v1::LedgerEntry> out;
  const size_t begin = static_cast<size_t>(std::max<int64_t>(0, after_seq));
  for (size_t i = begin; i < ledger_.size() && out.size() < static_cast<size_t>(limit); ++i) {
    out.push_back(ledger_[i]);
  }
  return out;
}

bank::v1::SnapshotReply BankState::Snapshot() const {
  absl::MutexLock lock(&mu_);
  bank::v1::SnapshotReply s;
  int64_t total = 0;
  for (const auto& [name, a] : accounts_) {
    bank::v1::Account* acc = s.add_accounts();
    acc->set_name(name);
    acc->set_balance(a.balance);
    acc->set_held(a.held);
    total += a.balance;
  }
  for (const auto& [t, x] : escrow_) {
    total += x;
    if (x != 0) (*s.mutable_escrow())[t] = x;
  }
  s.set_total(total);
  s.set_initial_total(initial_total_);
  for (const auto& a : anomalies_) s.add_anomalies(a);
  s.set_deliveries(static_cast<int64_t>(ledger_.size()));
  s.set_in_flight(in_flight_.load());
  for (const auto& [k, v] : fault_counts_) (*s.mutable_faults())[k] = v;
  return s;
}

}  // namespace saga::fault
