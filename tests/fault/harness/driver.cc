#include "tests/fault/harness/driver.h"

#include <pqxx/pqxx>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "grpcpp/grpcpp.h"
#include "saga/v1/orchestrator.grpc.pb.h"

namespace saga::fault {

std::string CodeName(int code) {
  const std::string name = absl::StatusCodeToString(static_cast<absl::StatusCode>(code));
  return name.empty() ? "?" : name;
}

Driver::Driver(DriverOptions options, std::vector<SagaSpec> specs) : options_(std::move(options)) {
  records_.reserve(specs.size());
  for (auto& s : specs) {
    StartRecord r;
    r.key = std::move(s.key);
    r.input_json = std::move(s.input_json);
    records_.push_back(std::move(r));
  }
}

Driver::~Driver() { Stop(); }

void Driver::Start() {
  first_start_ = absl::Now();
  for (int i = 0; i < options_.threads; ++i) threads_.emplace_back([this, i] { Worker(i); });
  poller_ = std::thread([this] { Poller(); });
}

void Driver::Stop() {
  stop_ = true;
  cv_.notify_all();
  for (auto& t : threads_) t.join();
  threads_.clear();
  if (poller_.joinable()) poller_.join();
}

static std::shared_ptr<grpc::Channel> MakeChannel(const std::string& address) {
  grpc::ChannelArguments args;
  // sagad is killed and restarted: reconnect quickly instead of gRPC's default backoff (1 s
  // growing to 120 s).
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 500);
  return grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
}

void Driver::Worker(int index) {
  std::vector<std::unique_ptr<saga::v1::SagaOrchestrator::Stub>> stubs;
  for (const auto& a : options_.addresses) {
    stubs.push_back(saga::v1::SagaOrchestrator::NewStub(MakeChannel(a)));
  }
  size_t rr = static_cast<size_t>(index);
  for (;;) {
    size_t i;
    {
      std::unique_lock<std::mutex> lock(mu_);
      for (;;) {
        if (stop_ || next_ >= records_.size()) return;
        bool rate_ok = true;
        if (options_.start_rate > 0) {
          const double allowed =
              absl::ToDoubleSeconds(absl::Now() - first_start_) * options_.start_rate + 1;
          rate_ok = static_cast<double>(issued_) < allowed;
        }
        if (open_ < options_.in_flight && rate_ok) break;
        cv_.wait_for(lock, std::chrono::milliseconds(20));
      }
      i = next_++;
      ++open_;
      ++issued_;
    }
    StartRecord& r = records_[i];
    const absl::Time give_up = absl::Now() + options_.give_up;
    absl::Duration backoff = absl::Milliseconds(100);
    bool acked = false;
    while (!stop_ && absl::Now() < give_up) {
      auto& stub = stubs[rr++ % stubs.size()];
      grpc::ClientContext ctx;
      ctx.set_deadline(absl::ToChronoTime(absl::Now() + options_.call_deadline));
      saga::v1::StartSagaRequest req;
      req.set_definition(options_.definition);
      req.set_input_json(r.input_json);
      req.set_idempotency_key(r.key);
      saga::v1::StartSagaResponse resp;
      grpc::Status s = stub->StartSaga(&ctx, req, &resp);
      {
        std::lock_guard<std::mutex> lock(mu_);
        ++r.attempts;
        if (s.ok()) {
          r.ids_seen.insert(resp.saga_id());
          if (!r.acked) {
            r.acked = true;
            r.saga_id = resp.saga_id();
            r.acked_at = absl::Now();
            pending_.insert(i);
          }
          acked = true;
        } else {
          ++r.errors[CodeName(static_cast<int>(s.error_code()))];
        }
      }
      if (acked) break;
      if (s.error_code() == grpc::StatusCode::INVALID_ARGUMENT ||
          s.error_code() == grpc::StatusCode::ALREADY_EXISTS ||
          s.error_code() == grpc::StatusCode::NOT_FOUND) {
        break;  // not retryable: the checker reports the saga as unacknowledged
      }
      absl::SleepFor(backoff);
      backoff = std::min(backoff * 2, absl::Milliseconds(1000));
    }
    if (acked) {
      acked_++;
    } else {
      given_up_++;
      std::lock_guard<std::mutex> lock(mu_);
      --open_;
      cv_.notify_all();
    }
  }
}

void Driver::Poller() {
  std::unique_ptr<pqxx::connection> conn;
  while (!stop_) {
    absl::SleepFor(options_.poll_interval);
    std::vector<size_t> ids;
    std::string array = "{";
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (size_t i : pending_) {
        if (ids.size() >= 2000) break;
        if (!ids.empty()) array += ",";
        array += records_[i].saga_id;
        ids.push_back(i);
      }
    }
    array += "}";
    if (ids.empty()) continue;
    std::map<std::string, std::string> status;
    try {
      if (conn == nullptr) {
        conn = std::make_unique<pqxx::connection>(
            options_.db_url + (options_.db_url.find('?') == std::string::npos ? "?" : "&") +
            "connect_timeout=2");
      }
      pqxx::nontransaction txn(*conn);
      for (const auto& row : txn.exec_params(
               "SELECT id::text, status FROM sagas WHERE id = ANY($1::uuid[])", array)) {
        status[row[0].as<std::string>()] = row[1].as<std::string>();
      }
    } catch (const std::exception&) {
      conn.reset();  // the database may be down: try again later
      continue;
    }
    std::lock_guard<std::mutex> lock(mu_);
    for (size_t i : ids) {
      StartRecord& r = records_[i];
      auto it = status.find(r.saga_id);
      if (it == status.end()) continue;
      r.status = it->second;
      if (r.status == "COMPLETED" || r.status == "COMPENSATED" || r.status == "FAILED") {
        r.terminal = true;
        r.terminal_seen_at = absl::Now();
        pending_.erase(i);
        --open_;
        terminal_++;
      }
    }
    cv_.notify_all();
  }
}

bool Driver::WaitAllStarted(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    if (acked_.load() + given_up_.load() >= static_cast<int>(records_.size())) return true;
    absl::SleepFor(absl::Milliseconds(50));
  }
  return false;
}

bool Driver::WaitAllTerminal(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    if (acked_.load() + given_up_.load() >= static_cast<int>(records_.size()) &&
        terminal_.load() >= acked_.load()) {
      return true;
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
  return false;
}

std::vector<StartRecord> Driver::Records() const {
  std::lock_guard<std::mutex> lock(mu_);
  return records_;
}

std::map<std::string, int> Driver::Errors() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::map<std::string, int> out;
  for (const auto& r : records_) {
    for (const auto& [k, v] : r.errors) out[k] += v;
  }
  return out;
}

}  // namespace saga::fault
