// saga-bench: the load driver of the order-saga benchmark (/work/shared/bench/README.md).
//
// A client of sagad's public API only (saga.v1.SagaOrchestrator). One run:
//   1. configures the participant server through its admin API (scenario A: fail_mod = 0,
//      B: fail_mod = 10; latency_ms) and resets its counters;
//   2. runs the warm-up sagas, then the measured ones, keeping --in-flight sagas in flight with
//      gRPC's callback API (no thread per saga). Each saga: StartSaga (idempotency key = order
//      id), then WatchSaga until the terminal event; its latency runs from sending StartSaga
//      to receiving the terminal event;
//   3. measures CPU per process (/proc, process trees) and, with --pg-url, PostgreSQL's WAL
//      bytes, commits and WAL syncs over the measured sagas;
//   4. verifies exactly-once against the participant's counters (the README's table) and the
//      final status of every saga;
//   5. prints one table row (or one JSON object).
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <unordered_set>
#include <vector>

#include "CLI/CLI.hpp"
#include "bench/bench_util.h"
#include "grpcpp/grpcpp.h"
#include "nlohmann/json.hpp"
#include "pqxx/pqxx"
#include "saga/v1/orchestrator.grpc.pb.h"

namespace saga::bench {
namespace {

using Clock = std::chrono::steady_clock;
using saga::v1::SagaOrchestrator;
using saga::v1::SagaStatus;

struct Options {
  std::string address = "localhost:50051";
  int sagas = 5000;
  int warmup = 200;
  int in_flight = 64;
  std::string scenario = "A";
  std::string participant_admin = "http://localhost:50072";
  std::string definition = "bench-order";
  std::string duration_limit = "10m";
  std::string pg_url;
  std::string pids;
  int64_t latency_ms = 0;
  int64_t fail_mod = -1;    // -1: from the scenario
  uint64_t order_base = 0;  // 0: time-based
  int channels = 1;
  std::string format = "table";
  bool verify = true;
  bool progress = false;
  int explain_slow = 0;
  // How the driver learns that a saga ended: "start" (StartSaga with wait: one call per saga)
  // or "watch" (StartSaga, then a WatchSaga stream until the terminal event).
  std::string await = "start";
};

// Parses "600", "600s", "10m", "1h", "500ms" into seconds.
std::optional<double> ParseSeconds(const std::string& text) {
  size_t pos = 0;
  double value = 0;
  try {
    value = std::stod(text, &pos);
  } catch (...) {
    return std::nullopt;
  }
  const std::string unit = text.substr(pos);
  if (unit.empty() || unit == "s") return value;
  if (unit == "ms") return value / 1000;
  if (unit == "m") return value * 60;
  if (unit == "h") return value * 3600;
  return std::nullopt;
}

const char* StatusName(SagaStatus status) {
  switch (status) {
    case saga::v1::SAGA_STATUS_RUNNING:
      return "RUNNING";
    case saga::v1::SAGA_STATUS_COMPLETED:
      return "COMPLETED";
    case saga::v1::SAGA_STATUS_COMPENSATING:
      return "COMPENSATING";
    case saga::v1::SAGA_STATUS_COMPENSATED:
      return "COMPENSATED";
    case saga::v1::SAGA_STATUS_FAILED:
      return "FAILED";
    default:
      return "UNSPECIFIED";
  }
}

std::string Fixed(double v, int decimals) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.*f", decimals, v);
  return buf;
}

// gRPC takes deadlines on the system clock.
std::chrono::system_clock::time_point ToSystem(Clock::time_point t) {
  return std::chrono::system_clock::now() +
         std::chrono::duration_cast<std::chrono::system_clock::duration>(t - Clock::now());
}

// What became of one saga.
struct Outcome {
  uint64_t order = 0;
  bool terminal = false;  // the terminal event was received
  SagaStatus status = saga::v1::SAGA_STATUS_UNSPECIFIED;
  double latency_ms = 0;
  double start_ms = 0;  // the StartSaga call alone
  Clock::time_point finished{};
  std::chrono::system_clock::time_point sent_wall{};  // StartSaga sent, wall clock
  std::chrono::system_clock::time_point finished_wall{};
  std::string saga_id;
  std::string error;  // why the terminal status is unknown
};

class Runner;

// One saga: StartSaga, then WatchSaga (re-watched after a broken stream) until the terminal
// event. Owned by the Runner; deleted on the Runner's thread once done.
class SagaCall {
 public:
  SagaCall(Runner* runner, size_t index, uint64_t order) : runner_(runner), index_(index) {
    outcome_.order = order;
  }
  void Begin();
  void Cancel();
  size_t index() const { return index_; }
  const Outcome& outcome() const { return outcome_; }

 private:
  // One WatchSaga stream.
  class Watcher final : public grpc::ClientReadReactor<saga::v1::SagaEvent> {
   public:
    explicit Watcher(SagaCall* call) : call_(call) {}
    void Start(SagaOrchestrator::Stub* stub, const std::string& saga_id, int64_t after_seq,
               Clock::time_point deadline);
    void Cancel() { context_.TryCancel(); }
    void OnReadDone(bool ok) override;
    void OnDone(const grpc::Status& status) override;

   private:
    SagaCall* const call_;
    grpc::ClientContext context_;
    saga::v1::WatchSagaRequest request_;
    saga::v1::SagaEvent event_;
  };

  void SendStart();
  void OnStarted(const grpc::Status& status);
  void Watch();
  void OnEvent(const saga::v1::SagaEvent& event);
  void OnWatchDone(const grpc::Status& status);
  void Finish(std::string error);

  Runner* const runner_;
  const size_t index_;
  Clock::time_point t0_{};
  int start_attempts_ = 0;
  std::unique_ptr<grpc::ClientContext> start_context_;
  std::vector<std::unique_ptr<grpc::ClientContext>> old_start_contexts_;
  saga::v1::StartSagaRequest start_request_;
  saga::v1::StartSagaResponse start_response_;
  std::string saga_id_;
  int64_t last_seq_ = 0;
  int watch_attempts_ = 0;
  std::mutex watch_mu_;  // guards the contexts against Cancel
  std::vector<std::unique_ptr<Watcher>> watchers_;
  Outcome outcome_;
};

// Runs `count` sagas for orders first_order.. with `in_flight` in flight.
class Runner {
 public:
  Runner(std::vector<SagaOrchestrator::Stub*> stubs, const Options& options, uint64_t first_order,
         int count)
      : stubs_(std::move(stubs)), options_(options), first_order_(first_order), count_(count) {}

  // Blocks until every saga is done or the time limit passed (then cancels the rest).
  // Returns the outcomes in order.
  std::vector<Outcome> Run(double time_limit_s);

  double elapsed_s() const { return elapsed_s_; }
  bool timed_out() const { return timed_out_; }

  // For SagaCall.
  SagaOrchestrator::Stub* stub(size_t index) const { return stubs_[index % stubs_.size()]; }
  const Options& options() const { return options_; }
  Clock::time_point deadline() const { return deadline_; }
  void Done(SagaCall* call);

 private:
  // Starts the next saga if any; false when none is left.
  bool LaunchNext();
  void Progress();

  const std::vector<SagaOrchestrator::Stub*> stubs_;
  const Options& options_;
  const uint64_t first_order_;
  const int count_;
  Clock::time_point deadline_{};

  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Outcome> outcomes_;       // guarded by mu_
  std::vector<SagaCall*> graveyard_;    // guarded by mu_; deleted by Run()
  std::map<size_t, SagaCall*> active_;  // guarded by mu_
  int next_ = 0;                        // guarded by mu_
  bool stop_launching_ = false;         // guarded by mu_
  int done_ = 0;                        // guarded by mu_
  double elapsed_s_ = 0;
  bool timed_out_ = false;
};

void SagaCall::Begin() {
  const Options& options = runner_->options();
  const uint64_t order = outcome_.order;
  start_request_.set_definition(options.definition);
  // Amounts 1.00 .. 99.99, varying by order.
  start_request_.set_input_json("{\"order_id\":" + std::to_string(order) +
                                ",\"amount\":" + std::to_string(100 + order % 9900) + "}");
  start_request_.set_idempotency_key(std::to_string(order));
  start_request_.set_wait(options.await == "start");
  t0_ = Clock::now();
  outcome_.sent_wall = std::chrono::system_clock::now();
  SendStart();
}

void SagaCall::SendStart() {
  ++start_attempts_;
  grpc::ClientContext* context = nullptr;
  {
    std::lock_guard<std::mutex> lock(watch_mu_);
    if (start_context_ != nullptr) old_start_contexts_.push_back(std::move(start_context_));
    start_context_ = std::make_unique<grpc::ClientContext>();
    context = start_context_.get();
  }
  context->set_deadline(
      ToSystem(std::max(runner_->deadline(), Clock::now()) + std::chrono::seconds(30)));
  // A retry waits for the channel to connect again.
  if (start_attempts_ > 1) context->set_wait_for_ready(true);
  runner_->stub(index_)->async()->StartSaga(context, &start_request_, &start_response_,
                                            [this](grpc::Status s) { OnStarted(s); });
}

void SagaCall::OnStarted(const grpc::Status& status) {
  if (status.ok()) {
    saga_id_ = start_response_.saga_id();
    outcome_.saga_id = saga_id_;
    outcome_.start_ms = std::chrono::duration<double, std::milli>(Clock::now() - t0_).count();
    if (start_request_.wait() && start_response_.status() != saga::v1::SAGA_STATUS_UNSPECIFIED) {
      outcome_.finished = Clock::now();
      outcome_.finished_wall = std::chrono::system_clock::now();
      outcome_.terminal = true;
      outcome_.status = start_response_.status();
      outcome_.latency_ms =
          std::chrono::duration<double, std::milli>(outcome_.finished - t0_).count();
      Finish("");
      return;
    }
    Watch();
    return;
  }
  // Retried while sagad is unavailable: the idempotency key makes it safe.
  if ((status.error_code() == grpc::StatusCode::UNAVAILABLE ||
       status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) &&
      start_attempts_ < 5 && Clock::now() < runner_->deadline()) {
    SendStart();
    return;
  }
  Finish("StartSaga: " + std::to_string(status.error_code()) + " " + status.error_message());
}

void SagaCall::Watch() {
  ++watch_attempts_;
  Watcher* watcher = nullptr;
  {
    std::lock_guard<std::mutex> lock(watch_mu_);
    watchers_.push_back(std::make_unique<Watcher>(this));
    watcher = watchers_.back().get();
  }
  watcher->Start(runner_->stub(index_), saga_id_, last_seq_,
                 std::max(runner_->deadline(), Clock::now()) + std::chrono::seconds(30));
}

void SagaCall::Cancel() {
  std::lock_guard<std::mutex> lock(watch_mu_);
  if (start_context_ != nullptr) start_context_->TryCancel();
  for (auto& w : watchers_) w->Cancel();
}

void SagaCall::OnEvent(const saga::v1::SagaEvent& event) {
  last_seq_ = std::max(last_seq_, event.seq());
  if (event.terminal() && !outcome_.terminal) {
    outcome_.finished = Clock::now();
    outcome_.finished_wall = std::chrono::system_clock::now();
    outcome_.terminal = true;
    outcome_.status = event.status();
    outcome_.latency_ms =
        std::chrono::duration<double, std::milli>(outcome_.finished - t0_).count();
  }
}

void SagaCall::OnWatchDone(const grpc::Status& status) {
  if (outcome_.terminal) {
    Finish("");
    return;
  }
  if (watch_attempts_ < 5 && Clock::now() < runner_->deadline() &&
      status.error_code() != grpc::StatusCode::NOT_FOUND &&
      status.error_code() != grpc::StatusCode::CANCELLED) {
    Watch();
    return;
  }
  Finish("WatchSaga ended without a terminal event: " + std::to_string(status.error_code()) + " " +
         status.error_message());
}

void SagaCall::Finish(std::string error) {
  outcome_.error = std::move(error);
  runner_->Done(this);  // may delete this (on the Runner's thread), so nothing after
}

void SagaCall::Watcher::Start(SagaOrchestrator::Stub* stub, const std::string& saga_id,
                              int64_t after_seq, Clock::time_point deadline) {
  request_.set_saga_id(saga_id);
  request_.set_after_seq(after_seq);
  context_.set_deadline(ToSystem(deadline));
  stub->async()->WatchSaga(&context_, &request_, this);
  StartRead(&event_);
  StartCall();
}

void SagaCall::Watcher::OnReadDone(bool ok) {
  if (!ok) return;  // OnDone follows
  call_->OnEvent(event_);
  StartRead(&event_);
}

void SagaCall::Watcher::OnDone(const grpc::Status& status) { call_->OnWatchDone(status); }

bool Runner::LaunchNext() {
  SagaCall* call = nullptr;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stop_launching_ || next_ >= count_) return false;
    const int i = next_++;
    call = new SagaCall(this, static_cast<size_t>(i), first_order_ + static_cast<uint64_t>(i));
    active_[call->index()] = call;
  }
  call->Begin();
  return true;
}

void Runner::Done(SagaCall* call) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    outcomes_[call->index()] = call->outcome();
    active_.erase(call->index());
    graveyard_.push_back(call);
    ++done_;
    // Run() wakes up every 100 ms anyway (to free finished calls and to report progress):
    // waking it for every saga would put a thread hop on the machine's cores beside each saga.
    if (done_ == count_ || stop_launching_) cv_.notify_one();
  }
  LaunchNext();
}

std::vector<Outcome> Runner::Run(double time_limit_s) {
  outcomes_.assign(static_cast<size_t>(count_), Outcome{});
  for (int i = 0; i < count_; ++i) {
    outcomes_[static_cast<size_t>(i)].order = first_order_ + static_cast<uint64_t>(i);
  }
  const Clock::time_point start = Clock::now();
  deadline_ = start + std::chrono::microseconds(static_cast<int64_t>(time_limit_s * 1e6));
  for (int i = 0; i < options_.in_flight; ++i) {
    if (!LaunchNext()) break;
  }
  Clock::time_point next_progress = start + std::chrono::seconds(5);
  std::unique_lock<std::mutex> lock(mu_);
  bool cancelled = false;
  while (done_ < count_ && !(cancelled && active_.empty())) {
    cv_.wait_for(lock, std::chrono::milliseconds(100));
    std::vector<SagaCall*> dead;
    dead.swap(graveyard_);
    if (!cancelled && Clock::now() > deadline_) {
      // Over the time limit: start nothing more and cancel what is in flight.
      cancelled = true;
      timed_out_ = true;
      stop_launching_ = true;
      for (auto& [index, call] : active_) call->Cancel();
    }
    const bool progress = options_.progress && Clock::now() > next_progress;
    const int done = done_;
    lock.unlock();
    for (SagaCall* call : dead) delete call;
    if (progress) {
      next_progress += std::chrono::seconds(5);
      std::cerr << "saga-bench: " << done << "/" << count_ << " sagas done\n";
    }
    lock.lock();
  }
  // The last saga's terminal event ends the measured interval.
  Clock::time_point last = start;
  for (const Outcome& o : outcomes_) {
    if (o.terminal) last = std::max(last, o.finished);
  }
  elapsed_s_ = std::chrono::duration<double>((timed_out_ ? Clock::now() : last) - start).count();
  for (SagaCall* call : graveyard_) delete call;
  graveyard_.clear();
  return outcomes_;
}

// PostgreSQL counters (cluster-wide).
struct PgCounters {
  double wal_bytes = 0;   // pg_current_wal_lsn()
  double commits = 0;     // sum of pg_stat_database.xact_commit
  double wal_syncs = 0;   // pg_stat_wal.wal_sync
  double wal_writes = 0;  // pg_stat_wal.wal_write
  double deadlocks = 0;   // sum of pg_stat_database.deadlocks
  double rollbacks = 0;   // sum of pg_stat_database.xact_rollback
};

class PgProbe {
 public:
  explicit PgProbe(const std::string& url) : conn_(url) {}

  PgCounters Read() {
    pqxx::nontransaction tx(conn_);
    pqxx::row row = tx.exec1(
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::float8,"
        " (SELECT sum(xact_commit)::float8 FROM pg_stat_database),"
        " w.wal_sync::float8, w.wal_write::float8,"
        " (SELECT sum(deadlocks)::float8 FROM pg_stat_database),"
        " (SELECT sum(xact_rollback)::float8 FROM pg_stat_database)"
        " FROM pg_stat_wal w");
    PgCounters c;
    c.wal_bytes = row[0].as<double>();
    c.commits = row[1].as<double>();
    c.wal_syncs = row[2].as<double>();
    c.wal_writes = row[3].as<double>();
    c.deadlocks = row[4].as<double>();
    c.rollbacks = row[5].as<double>();
    return c;
  }

  // The postmaster: the parent of this connection's backend.
  std::optional<pid_t> Postmaster() {
    pqxx::nontransaction tx(conn_);
    const auto backend = static_cast<pid_t>(tx.exec1("SELECT pg_backend_pid()")[0].as<int>());
    return ParentPid(backend);
  }

 private:
  pqxx::connection conn_;
};

// Prints where the time of the `count` slowest sagas went: the StartSaga call, each recorded
// event (by its recorded_at, relative to sending StartSaga) and the delay until the driver
// received the terminal event. Times compare sagad's wall clock with the driver's (same host).
void ExplainSlowest(SagaOrchestrator::Stub* stub, std::vector<Outcome> outcomes, int count) {
  std::sort(outcomes.begin(), outcomes.end(),
            [](const Outcome& a, const Outcome& b) { return a.latency_ms > b.latency_ms; });
  auto ms_between = [](std::chrono::system_clock::time_point a,
                       std::chrono::system_clock::time_point b) {
    return std::chrono::duration<double, std::milli>(b - a).count();
  };
  for (int i = 0; i < count && i < static_cast<int>(outcomes.size()); ++i) {
    const Outcome& o = outcomes[static_cast<size_t>(i)];
    if (o.saga_id.empty()) continue;
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    saga::v1::GetSagaRequest request;
    request.set_saga_id(o.saga_id);
    request.set_include_history(true);
    saga::v1::Saga saga;
    const grpc::Status status = stub->GetSaga(&context, request, &saga);
    std::ostringstream out;
    out << "saga-bench: slow saga " << o.saga_id << " (order " << o.order
        << "): " << Fixed(o.latency_ms, 1) << " ms; StartSaga " << Fixed(o.start_ms, 1) << " ms";
    if (!status.ok()) {
      out << "; GetSaga: " << status.error_message();
    } else {
      std::chrono::system_clock::time_point last = o.sent_wall;
      for (const auto& e : saga.history()) {
        const auto at = std::chrono::system_clock::time_point(
            std::chrono::duration_cast<std::chrono::system_clock::duration>(
                std::chrono::seconds(e.recorded_at().seconds()) +
                std::chrono::nanoseconds(e.recorded_at().nanos())));
        out << "\n    +" << Fixed(ms_between(o.sent_wall, at), 1) << " ms (+"
            << Fixed(ms_between(last, at), 1) << ") " << e.type()
            << (e.step().empty() ? "" : "(" + e.step() + ")");
        last = at;
      }
      if (o.terminal) {
        out << "\n    +" << Fixed(ms_between(o.sent_wall, o.finished_wall), 1) << " ms (+"
            << Fixed(ms_between(last, o.finished_wall), 1) << ") terminal event received";
      }
    }
    std::cerr << out.str() << "\n";
  }
}

// Expected participant calls per order (README table), in the participant's method order
// Reserve, Charge, Schedule, Release, Refund.
constexpr int kMethods = 5;
const char* const kMethodNames[kMethods] = {"Reserve", "Charge", "Schedule", "Release", "Refund"};

struct Verification {
  bool pass = false;
  bool checked = false;
  int64_t orders = 0;
  int64_t completed = 0;
  int64_t compensated = 0;
  int64_t wrong_status = 0;       // terminal status other than expected, or unknown
  int64_t wrong_calls = 0;        // orders whose calls differ from the table
  int64_t wrong_applied = 0;      // orders whose applications differ from the table
  int64_t missing_orders = 0;     // orders the participant never saw
  int64_t unexpected_orders = 0;  // orders the participant saw that this run did not start
  int64_t totals[kMethods] = {};
  std::vector<std::string> examples;
  std::string error;

  std::string Summary() const {
    std::ostringstream out;
    if (!checked) return "not checked: " + error;
    out << (pass ? "PASS" : "FAIL") << ": " << orders << " orders, " << completed << " completed, "
        << compensated << " compensated; calls";
    for (int m = 0; m < kMethods; ++m) out << " " << kMethodNames[m] << "=" << totals[m];
    if (!pass) {
      out << "; wrong status " << wrong_status << ", wrong calls " << wrong_calls
          << ", wrong applications " << wrong_applied << ", missing " << missing_orders
          << ", unexpected " << unexpected_orders;
      for (const auto& e : examples) out << "\n  e.g. " << e;
    }
    return out.str();
  }
};

// Checks every order of the run against the participant's per-order counts (bench-participants'
// "by_order", or the Node.js reference server's "byOrder", calls only).
Verification Verify(const std::vector<Outcome>& outcomes, uint64_t fail_mod,
                    const nlohmann::json& stats) {
  Verification v;
  v.checked = true;
  struct Counts {
    int64_t calls[kMethods] = {};
    int64_t applied[kMethods] = {};
    bool has_applied = false;
  };
  std::map<uint64_t, Counts> seen;
  if (stats.contains("by_order")) {
    for (const auto& [key, value] : stats["by_order"].items()) {
      Counts& c = seen[std::stoull(key)];
      c.has_applied = true;
      for (int m = 0; m < kMethods; ++m) {
        c.calls[m] = value["calls"][static_cast<size_t>(m)].get<int64_t>();
        c.applied[m] = value["applied"][static_cast<size_t>(m)].get<int64_t>();
      }
    }
  } else if (stats.contains("byOrder")) {
    for (int m = 0; m < kMethods; ++m) {
      if (!stats["byOrder"].contains(kMethodNames[m])) continue;
      for (const auto& [key, value] : stats["byOrder"][kMethodNames[m]].items()) {
        seen[std::stoull(key)].calls[m] = value.get<int64_t>();
      }
    }
  } else {
    v.checked = false;
    v.error = "the participant's /stats?detail=1 has no per-order counts";
    return v;
  }

  std::unordered_set<uint64_t> ours;
  for (const Outcome& o : outcomes) {
    ours.insert(o.order);
    ++v.orders;
    const bool selected = fail_mod > 0 && o.order % fail_mod == 0;
    const int64_t expected[kMethods] = {1, 1, selected ? 0 : 1, selected ? 1 : 0, 0};
    const SagaStatus want =
        selected ? saga::v1::SAGA_STATUS_COMPENSATED : saga::v1::SAGA_STATUS_COMPLETED;
    auto example = [&](const std::string& what) {
      if (v.examples.size() < 5) {
        v.examples.push_back("order " + std::to_string(o.order) + ": " + what);
      }
    };
    if (o.terminal && o.status == saga::v1::SAGA_STATUS_COMPLETED) ++v.completed;
    if (o.terminal && o.status == saga::v1::SAGA_STATUS_COMPENSATED) ++v.compensated;
    if (!o.terminal || o.status != want) {
      ++v.wrong_status;
      example(std::string("status ") + (o.terminal ? StatusName(o.status) : "unknown") +
              ", expected " + StatusName(want) + (o.error.empty() ? "" : " (" + o.error + ")"));
    }
    auto it = seen.find(o.order);
    if (it == seen.end()) {
      ++v.missing_orders;
      ++v.wrong_calls;
      example("never seen by the participant");
      continue;
    }
    bool calls_ok = true, applied_ok = true;
    std::string got = "calls";
    for (int m = 0; m < kMethods; ++m) {
      v.totals[m] += it->second.calls[m];
      got += " " + std::to_string(it->second.calls[m]);
      if (it->second.calls[m] != expected[m]) calls_ok = false;
      if (it->second.has_applied && it->second.applied[m] != expected[m]) applied_ok = false;
    }
    if (!calls_ok) {
      ++v.wrong_calls;
      example(got + " (Reserve Charge Schedule Release Refund), expected " +
              (selected ? "1 1 0 1 0" : "1 1 1 0 0"));
    }
    if (!applied_ok) ++v.wrong_applied;
  }
  for (const auto& [order, counts] : seen) {
    if (ours.count(order) == 0) ++v.unexpected_orders;
  }
  v.pass = v.wrong_status == 0 && v.wrong_calls == 0 && v.wrong_applied == 0 &&
           v.missing_orders == 0 && v.unexpected_orders == 0;
  return v;
}

struct Report {
  std::string scenario;
  int sagas = 0;
  int in_flight = 0;
  int64_t latency_ms = 0;
  int64_t fail_mod = 0;
  double elapsed_s = 0;
  int64_t terminal = 0;
  double sagas_per_s = 0;
  LatencySummary latency;
  LatencySummary start_latency;                   // the StartSaga call alone
  std::map<std::string, double> cpu_ms_per_saga;  // by process name; "driver" included
  // Context switches of the measured processes' live threads, by process name.
  std::map<std::string, double> context_switches_per_saga;
  double busy_percent = 0;
  std::optional<double> wal_bytes_per_saga, commits_per_saga, wal_syncs_per_saga,
      wal_writes_per_saga;
  std::optional<double> deadlocks, rollbacks;  // totals over the measured sagas
  int64_t errors = 0;
  bool timed_out = false;
  Verification verification;
};

std::string OptFixed(const std::optional<double>& v, int decimals) {
  return v ? Fixed(*v, decimals) : "-";
}

std::string CpuCell(const Report& r, const std::string& name) {
  auto it = r.cpu_ms_per_saga.find(name);
  return it == r.cpu_ms_per_saga.end() ? "-" : Fixed(it->second, 2);
}

constexpr const char* kRowFormat =
    "%-4s %6s %5s %8s %8s %8s %8s %8s %7s %7s %7s %7s %8s %7s %6s %5s  %s\n";

void PrintHeader() {
  std::printf("%s", "CPU ms, WAL bytes, commits and WAL syncs are per saga; latency in ms\n");
  std::printf(kRowFormat, "scen", "sagas", "infl", "sagas/s", "p50", "p90", "p99", "max", "sagad",
              "pg", "partic", "driver", "WAL B", "commits", "syncs", "busy%", "exactly-once");
}

void PrintRow(const Report& r) {
  std::string once = r.verification.checked ? (r.verification.pass ? "PASS" : "FAIL") : "n/a";
  if (r.timed_out) once += " (time limit)";
  std::printf(kRowFormat, r.scenario.c_str(), std::to_string(r.sagas).c_str(),
              std::to_string(r.in_flight).c_str(), Fixed(r.sagas_per_s, 1).c_str(),
              Fixed(r.latency.p50_ms, 1).c_str(), Fixed(r.latency.p90_ms, 1).c_str(),
              Fixed(r.latency.p99_ms, 1).c_str(), Fixed(r.latency.max_ms, 1).c_str(),
              CpuCell(r, "sagad").c_str(), CpuCell(r, "postgres").c_str(),
              CpuCell(r, "participants").c_str(), CpuCell(r, "driver").c_str(),
              OptFixed(r.wal_bytes_per_saga, 0).c_str(), OptFixed(r.commits_per_saga, 2).c_str(),
              OptFixed(r.wal_syncs_per_saga, 2).c_str(), Fixed(r.busy_percent, 0).c_str(),
              once.c_str());
  std::fflush(stdout);
}

nlohmann::json ToJson(const Report& r) {
  auto opt = [](const std::optional<double>& v) -> nlohmann::json {
    return v ? nlohmann::json(*v) : nlohmann::json();
  };
  return {{"scenario", r.scenario},
          {"sagas", r.sagas},
          {"in_flight", r.in_flight},
          {"latency_ms_per_call", r.latency_ms},
          {"fail_mod", r.fail_mod},
          {"elapsed_s", r.elapsed_s},
          {"terminal_sagas", r.terminal},
          {"sagas_per_s", r.sagas_per_s},
          {"latency_ms",
           {{"mean", r.latency.mean_ms},
            {"p50", r.latency.p50_ms},
            {"p90", r.latency.p90_ms},
            {"p99", r.latency.p99_ms},
            {"max", r.latency.max_ms}}},
          {"start_saga_latency_ms",
           {{"p50", r.start_latency.p50_ms},
            {"p99", r.start_latency.p99_ms},
            {"max", r.start_latency.max_ms}}},
          {"cpu_ms_per_saga", r.cpu_ms_per_saga},
          {"context_switches_per_saga", r.context_switches_per_saga},
          {"machine_busy_percent", r.busy_percent},
          {"wal_bytes_per_saga", opt(r.wal_bytes_per_saga)},
          {"commits_per_saga", opt(r.commits_per_saga)},
          {"wal_syncs_per_saga", opt(r.wal_syncs_per_saga)},
          {"wal_writes_per_saga", opt(r.wal_writes_per_saga)},
          {"pg_deadlocks", opt(r.deadlocks)},
          {"pg_rollbacks", opt(r.rollbacks)},
          {"errors", r.errors},
          {"timed_out", r.timed_out},
          {"exactly_once",
           {{"checked", r.verification.checked},
            {"pass", r.verification.pass},
            {"summary", r.verification.Summary()}}}};
}

int Main(int argc, char** argv) {
  Options o;
  CLI::App app{"saga-bench: order-saga load driver for sagad (shared workload, bench/README.md)"};
  app.add_option("--address", o.address, "sagad address")->capture_default_str();
  app.add_option("--sagas", o.sagas, "measured sagas")->capture_default_str();
  app.add_option("--warmup", o.warmup, "warm-up sagas (not measured, but verified)")
      ->capture_default_str();
  app.add_option("--in-flight", o.in_flight, "sagas in flight")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--scenario", o.scenario, "A: fail_mod 0; B: fail_mod 10")
      ->check(CLI::IsMember({"A", "B"}))
      ->capture_default_str();
  app.add_option("--participant-admin", o.participant_admin, "participant admin base URL")
      ->capture_default_str();
  app.add_option("--definition", o.definition, "saga definition name")->capture_default_str();
  app.add_option("--duration-limit", o.duration_limit,
                 "time limit of the measured run (e.g. 600s, 10m); then in-flight sagas are "
                 "cancelled")
      ->capture_default_str();
  app.add_option("--pg-url", o.pg_url,
                 "PostgreSQL connection string for WAL/commit figures and the postmaster's CPU "
                 "(\"env\": the PG* variables)");
  app.add_option("--pids", o.pids,
                 "processes whose CPU is measured, name=PID[,name=PID...] (children included), "
                 "e.g. sagad=123,participants=456,postgres=789");
  app.add_option("--latency-ms", o.latency_ms, "participant latency per call")
      ->capture_default_str();
  app.add_option("--fail-mod", o.fail_mod, "override the scenario's fail_mod");
  app.add_option("--order-base", o.order_base, "first order id (default: time-based)");
  app.add_option("--await", o.await,
                 "how the end of a saga is learned: start (StartSaga waits) or watch (WatchSaga)")
      ->check(CLI::IsMember({"start", "watch"}))
      ->capture_default_str();
  app.add_option("--channels", o.channels, "gRPC channels to sagad")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--format", o.format, "table (header + row), row, header or json")
      ->check(CLI::IsMember({"table", "row", "header", "json"}))
      ->capture_default_str();
  app.add_flag("!--no-verify", o.verify, "skip the exactly-once check");
  app.add_flag("--progress", o.progress, "report progress on stderr every 5 s");
  app.add_option("--explain-slow", o.explain_slow,
                 "print the recorded events of the N slowest measured sagas (stderr)")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  if (o.format == "header") {
    PrintHeader();
    return 0;
  }
  const std::optional<double> time_limit = ParseSeconds(o.duration_limit);
  if (!time_limit || *time_limit <= 0) {
    std::cerr << "saga-bench: bad --duration-limit \"" << o.duration_limit << "\"\n";
    return 2;
  }
  const uint64_t fail_mod =
      o.fail_mod >= 0 ? static_cast<uint64_t>(o.fail_mod) : (o.scenario == "B" ? 10 : 0);

  CpuMeter cpu;
  std::string error;
  if (!o.pids.empty() && !cpu.AddList(o.pids, &error)) {
    std::cerr << "saga-bench: --pids: " << error << "\n";
    return 2;
  }
  std::unique_ptr<PgProbe> pg;
  if (!o.pg_url.empty()) {
    try {
      pg = std::make_unique<PgProbe>(o.pg_url == "env" ? "" : o.pg_url);
      bool has_postgres = false;
      std::vector<std::pair<std::string, std::string>> pairs;
      ParseKeyValueList(o.pids, &pairs);
      for (const auto& p : pairs) has_postgres |= p.first == "postgres";
      if (!has_postgres) {
        if (auto postmaster = pg->Postmaster()) cpu.Add("postgres", *postmaster);
      }
    } catch (const std::exception& e) {
      std::cerr << "saga-bench: PostgreSQL: " << e.what() << "\n";
      return 2;
    }
  }

  // Participant configuration and counters.
  AdminClient admin(o.participant_admin);
  const std::string config_query = "/config?fail_mod=" + std::to_string(fail_mod) +
                                   "&latency_ms=" + std::to_string(o.latency_ms);
  if (!admin.Post(config_query, &error) || !admin.Post("/reset", &error)) {
    std::cerr << "saga-bench: participant admin: " << error << "\n";
    return 2;
  }

  std::vector<std::shared_ptr<grpc::Channel>> channels;
  std::vector<std::unique_ptr<SagaOrchestrator::Stub>> stub_owners;
  std::vector<SagaOrchestrator::Stub*> stubs;
  for (int i = 0; i < o.channels; ++i) {
    grpc::ChannelArguments args;
    args.SetInt("saga_bench.channel", i);  // distinct channels get distinct connections
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
    channels.push_back(
        grpc::CreateCustomChannel(o.address, grpc::InsecureChannelCredentials(), args));
    stub_owners.push_back(SagaOrchestrator::NewStub(channels.back()));
    stubs.push_back(stub_owners.back().get());
  }

  // Order ids: time-based so that runs never share an order (and divisible by 10, so that
  // scenario B selects exactly every tenth saga); warm-up first, then the measured sagas.
  const uint64_t base =
      o.order_base != 0
          ? o.order_base
          : static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                      std::chrono::system_clock::now().time_since_epoch())
                                      .count()) *
                1000;

  std::vector<Outcome> all;
  if (o.warmup > 0) {
    Runner warm(stubs, o, base, o.warmup);
    all = warm.Run(*time_limit);
    int64_t failed = 0;
    std::string first_error;
    for (const Outcome& out : all) {
      if (!out.terminal) {
        ++failed;
        if (first_error.empty()) first_error = out.error;
      }
    }
    if (failed == static_cast<int64_t>(all.size())) {
      std::cerr << "saga-bench: every warm-up saga failed, e.g. " << first_error << "\n";
      return 1;
    }
    // PostgreSQL publishes backends' statistics at most once a second.
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  }

  // Measured run.
  std::optional<PgCounters> pg_before;
  if (pg) pg_before = pg->Read();
  const auto cpu_before = cpu.Snapshot();
  const auto csw_before = cpu.ContextSwitches();
  const double self_before = SelfCpuSeconds();
  const MachineCpu machine_before = MachineCpu::Now();

  Runner runner(stubs, o, base + static_cast<uint64_t>(o.warmup), o.sagas);
  std::vector<Outcome> measured = runner.Run(*time_limit);

  const MachineCpu machine_after = MachineCpu::Now();
  const double self_after = SelfCpuSeconds();
  const auto cpu_after = cpu.Snapshot();
  const auto csw_after = cpu.ContextSwitches();
  std::optional<PgCounters> pg_after;
  if (pg) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    pg_after = pg->Read();
  }

  Report r;
  r.scenario = o.scenario;
  r.sagas = o.sagas;
  r.in_flight = o.in_flight;
  r.latency_ms = o.latency_ms;
  r.fail_mod = static_cast<int64_t>(fail_mod);
  r.elapsed_s = runner.elapsed_s();
  r.timed_out = runner.timed_out();
  std::vector<double> latencies;
  for (const Outcome& out : measured) {
    if (out.terminal) {
      ++r.terminal;
      latencies.push_back(out.latency_ms);
    } else {
      ++r.errors;
    }
  }
  r.latency = Summarize(latencies);
  std::vector<double> start_latencies;
  for (const Outcome& out : measured) {
    if (!out.saga_id.empty()) start_latencies.push_back(out.start_ms);
  }
  r.start_latency = Summarize(start_latencies);
  r.sagas_per_s = r.elapsed_s > 0 ? static_cast<double>(r.terminal) / r.elapsed_s : 0;
  const double n = std::max(1, o.sagas);
  for (const auto& [name, seconds] : cpu_after) {
    auto before = cpu_before.find(name);
    const double delta = seconds - (before == cpu_before.end() ? 0 : before->second);
    r.cpu_ms_per_saga[name] = delta * 1000 / n;
  }
  r.cpu_ms_per_saga["driver"] = (self_after - self_before) * 1000 / n;
  for (const auto& [name, count] : csw_after) {
    auto before = csw_before.find(name);
    const double delta = static_cast<double>(count) -
                         (before == csw_before.end() ? 0.0 : static_cast<double>(before->second));
    r.context_switches_per_saga[name] = delta / n;
  }
  r.busy_percent = BusyPercent(machine_before, machine_after);
  if (pg_before && pg_after) {
    r.wal_bytes_per_saga = (pg_after->wal_bytes - pg_before->wal_bytes) / n;
    r.commits_per_saga = (pg_after->commits - pg_before->commits) / n;
    r.wal_syncs_per_saga = (pg_after->wal_syncs - pg_before->wal_syncs) / n;
    r.wal_writes_per_saga = (pg_after->wal_writes - pg_before->wal_writes) / n;
    r.deadlocks = pg_after->deadlocks - pg_before->deadlocks;
    r.rollbacks = pg_after->rollbacks - pg_before->rollbacks;
  }

  all.insert(all.end(), measured.begin(), measured.end());
  if (o.verify) {
    auto stats = admin.Get("/stats?detail=1", &error);
    if (!stats) {
      r.verification.error = error;
    } else {
      r.verification = Verify(all, fail_mod, *stats);
    }
  } else {
    r.verification.error = "--no-verify";
  }

  if (o.format == "json") {
    std::cout << ToJson(r).dump() << std::endl;
  } else {
    if (o.format == "table") PrintHeader();
    PrintRow(r);
  }
  std::cerr << "saga-bench: scenario " << r.scenario << ", " << r.sagas << " sagas, " << r.in_flight
            << " in flight: " << Fixed(r.elapsed_s, 2) << " s, " << r.errors
            << " without a terminal status; exactly-once " << r.verification.Summary() << "\n";
  std::cerr << "saga-bench: StartSaga call alone: p50 " << Fixed(r.start_latency.p50_ms, 1)
            << " ms, p99 " << Fixed(r.start_latency.p99_ms, 1) << " ms, max "
            << Fixed(r.start_latency.max_ms, 1) << " ms\n";
  if (o.explain_slow > 0) ExplainSlowest(stubs[0], measured, o.explain_slow);
  if (!r.context_switches_per_saga.empty()) {
    std::cerr << "saga-bench: context switches per saga:";
    for (const auto& [name, count] : r.context_switches_per_saga) {
      std::cerr << " " << name << " " << Fixed(count, 1);
    }
    if (r.wal_writes_per_saga) {
      std::cerr << "; WAL writes per saga " << Fixed(*r.wal_writes_per_saga, 2);
    }
    if (r.deadlocks) {
      std::cerr << "; PostgreSQL deadlocks " << Fixed(*r.deadlocks, 0) << ", rollbacks "
                << Fixed(*r.rollbacks, 0);
    }
    std::cerr << "\n";
  }
  if (r.verification.checked && !r.verification.pass) return 3;
  if (r.errors > 0 || r.timed_out) return 4;
  return 0;
}

}  // namespace
}  // namespace saga::bench

int main(int argc, char** argv) { return saga::bench::Main(argc, argv); }
