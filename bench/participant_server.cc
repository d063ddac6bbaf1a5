// bench-participants: the participant server of the shared benchmark workload (the order saga,
// /work/shared/bench/README.md), in C++ so that it is not the bottleneck of an engine run.
//
// gRPC (bench/proto/participants.proto, package sagabench.participants.v1), served with the
//   completion-queue API by --cq-threads threads (1 by default), each polling its own queue and
//   answering on the thread that read the call: no hand-off between threads per call, which at
//   low load is most of a call's cost on a VM (gRPC's callback API passes every event between
//   two internal threads).
//   Inventory.Reserve / Release, Payment.Charge / Refund, Shipping.Schedule. Each takes
//   StepRequest{order_id, amount, idempotency_key} and answers StepReply{ok: true,
//   ref: "<method>-<order_id>"}.
// Failure rule: the fail method (Charge by default) answers FAILED_PRECONDITION iff
//   fail_mod > 0 && order_id % fail_mod == 0. Nothing else fails.
// Idempotency: per (method, idempotency_key). A repeat returns the first answer and is not a
//   new application; it still counts as a call. An empty key is never deduplicated.
// Latency: with latency_ms > 0 every answer is delivered latency_ms after the call arrived, by
//   the delay thread(s); the serving threads never sleep.
// Counters: calls / applications / replays / failures per method (atomics, one cache line per
//   method); per (method, order) and per (method, key) counts in hash maps split into shards
//   with a lock each. Keys of the workload's form "<order_id>:<step>" are stored as numbers (no
//   allocation); other keys as strings.
//
// Admin over HTTP (cpp-httplib), JSON answers:
//   POST /config?fail_mod=10&latency_ms=0[&fail_method=Charge]   unspecified values unchanged
//   POST /reset                                                    clears every counter
//   GET  /stats[?detail=1]      totals and per-order summaries (+ every order's counts and the
//                               keys called more than once)
//   GET  /health
#include <signal.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <charconv>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <iostream>
#include <memory>
#include <mutex>
#include <optional>
#include <queue>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/container/flat_hash_map.h"
#include "absl/hash/hash.h"
#include "grpcpp/grpcpp.h"
#include "httplib.h"
#include "nlohmann/json.hpp"
#include "participants.grpc.pb.h"

namespace saga::bench {
namespace {

namespace pv1 = ::sagabench::participants::v1;
using Clock = std::chrono::steady_clock;

// The five methods, in the order of the workload's table.
enum Method : int { kReserve = 0, kCharge, kSchedule, kRelease, kRefund, kMethodCount };
constexpr std::array<std::string_view, kMethodCount> kMethodNames = {
    "Reserve", "Charge", "Schedule", "Release", "Refund"};
// Step names used in idempotency keys and in the replies' refs.
constexpr std::array<std::string_view, kMethodCount> kStepNames = {"reserve", "charge", "schedule",
                                                                   "release", "refund"};

std::optional<Method> MethodByName(std::string_view name) {
  for (int m = 0; m < kMethodCount; ++m) {
    if (kMethodNames[static_cast<size_t>(m)] == name) return static_cast<Method>(m);
  }
  return std::nullopt;
}

// Behaviour, changed at run time through the admin API.
struct Config {
  std::atomic<uint64_t> fail_mod{0};
  std::atomic<int64_t> latency_ms{0};
  std::atomic<int> fail_method{kCharge};
};

// Totals of one method, alone on its cache line.
struct alignas(64) MethodTotals {
  std::atomic<uint64_t> calls{0};
  std::atomic<uint64_t> applied{0};   // first calls of a key (or calls without a key)
  std::atomic<uint64_t> replays{0};   // repeats of a key
  std::atomic<uint64_t> failures{0};  // answers that were FAILED_PRECONDITION
};

struct OrderCounts {
  std::array<uint32_t, kMethodCount> calls{};
  std::array<uint32_t, kMethodCount> applied{};
  std::array<uint32_t, kMethodCount> rejected{};  // applications that were rejected
};

// The first answer given for a key, and how often the key was used.
struct KeyState {
  uint32_t calls = 0;
  bool rejected = false;
};

// A key of the form "<order_id>:<step>" with a known step, held as numbers.
struct CanonicalKey {
  uint64_t order = 0;
  uint8_t method = 0;
  uint8_t step = 0;
  bool operator==(const CanonicalKey& o) const {
    return order == o.order && method == o.method && step == o.step;
  }
  template <typename H>
  friend H AbslHashValue(H h, const CanonicalKey& k) {
    return H::combine(std::move(h), k.order, k.method, k.step);
  }
};

std::optional<CanonicalKey> ParseCanonicalKey(std::string_view key, Method method) {
  const size_t colon = key.find(':');
  if (colon == std::string_view::npos || colon == 0) return std::nullopt;
  uint64_t order = 0;
  const auto [end, ec] = std::from_chars(key.data(), key.data() + colon, order);
  if (ec != std::errc() || end != key.data() + colon) return std::nullopt;
  const std::string_view step = key.substr(colon + 1);
  for (size_t s = 0; s < kStepNames.size(); ++s) {
    if (kStepNames[s] == step) {
      return CanonicalKey{order, static_cast<uint8_t>(method), static_cast<uint8_t>(s)};
    }
  }
  return std::nullopt;
}

constexpr size_t kShards = 64;

struct alignas(64) Shard {
  std::mutex mu;
  absl::flat_hash_map<uint64_t, OrderCounts> orders;
  absl::flat_hash_map<CanonicalKey, KeyState> keys;
  absl::flat_hash_map<std::pair<int, std::string>, KeyState> other_keys;
};

size_t ShardOf(uint64_t order) { return absl::HashOf(order) % kShards; }

// Every counter of the server.
class Ledger {
 public:
  explicit Ledger(size_t expected_orders) : expected_orders_(expected_orders) { Reserve(); }

  // Records one call and decides its answer: true if it is rejected (first answer for a
  // repeated key). Thread-safe.
  bool Record(Method method, uint64_t order, std::string_view key, const Config& config) {
    MethodTotals& totals = totals_[method];
    totals.calls.fetch_add(1, std::memory_order_relaxed);
    const bool fresh_rejected = [&] {
      const uint64_t mod = config.fail_mod.load(std::memory_order_relaxed);
      return mod > 0 && method == config.fail_method.load(std::memory_order_relaxed) &&
             order % mod == 0;
    }();

    bool applied = true;
    bool rejected = fresh_rejected;
    const size_t order_shard = ShardOf(order);
    std::optional<CanonicalKey> canonical;
    if (!key.empty()) canonical = ParseCanonicalKey(key, method);

    auto use_key = [&](KeyState& state) {
      if (++state.calls == 1) {
        state.rejected = fresh_rejected;
      } else {
        applied = false;
        rejected = state.rejected;
      }
    };
    auto count_order = [&](Shard& shard) {
      OrderCounts& counts = shard.orders[order];
      ++counts.calls[method];
      if (applied) {
        ++counts.applied[method];
        if (rejected) ++counts.rejected[method];
      }
    };

    if (canonical && ShardOf(canonical->order) == order_shard) {
      // The usual case: the key names the request's order; one lock.
      Shard& shard = shards_[order_shard];
      std::lock_guard<std::mutex> lock(shard.mu);
      use_key(shard.keys[*canonical]);
      count_order(shard);
    } else {
      if (canonical) {
        Shard& shard = shards_[ShardOf(canonical->order)];
        std::lock_guard<std::mutex> lock(shard.mu);
        use_key(shard.keys[*canonical]);
      } else if (!key.empty()) {
        Shard& shard = shards_[absl::HashOf(key) % kShards];
        std::lock_guard<std::mutex> lock(shard.mu);
        use_key(shard.other_keys[std::make_pair(static_cast<int>(method), std::string(key))]);
      }
      Shard& shard = shards_[order_shard];
      std::lock_guard<std::mutex> lock(shard.mu);
      count_order(shard);
    }

    if (applied) {
      totals.applied.fetch_add(1, std::memory_order_relaxed);
    } else {
      totals.replays.fetch_add(1, std::memory_order_relaxed);
    }
    if (rejected) totals.failures.fetch_add(1, std::memory_order_relaxed);
    return rejected;
  }

  void Reset() {
    for (Shard& shard : shards_) {
      std::lock_guard<std::mutex> lock(shard.mu);
      shard.orders.clear();
      shard.keys.clear();
      shard.other_keys.clear();
    }
    for (MethodTotals& t : totals_) {
      t.calls = 0;
      t.applied = 0;
      t.replays = 0;
      t.failures = 0;
    }
    Reserve();
    started_at_ms_ = NowMs();
  }

  nlohmann::json Stats(bool detail) {
    nlohmann::json out;
    out["started_at"] = started_at_ms_.load();
    out["methods"] = kMethodNames;
    nlohmann::json calls, applied, replays, failures;
    for (int m = 0; m < kMethodCount; ++m) {
      const std::string name(kMethodNames[static_cast<size_t>(m)]);
      calls[name] = totals_[m].calls.load();
      applied[name] = totals_[m].applied.load();
      replays[name] = totals_[m].replays.load();
      failures[name] = totals_[m].failures.load();
    }
    out["calls"] = calls;
    out["applied"] = applied;
    out["replays"] = replays;
    out["failures"] = failures;

    // Per method: orders called, applied once, applied twice or more, called more than once.
    std::array<uint64_t, kMethodCount> called{}, once{}, twice{}, called_again{}, max_calls{};
    uint64_t orders = 0, keys = 0, keys_repeated = 0;
    nlohmann::json by_order = nlohmann::json::object();
    nlohmann::json repeated_keys = nlohmann::json::object();
    for (Shard& shard : shards_) {
      std::lock_guard<std::mutex> lock(shard.mu);
      orders += shard.orders.size();
      for (const auto& [order, c] : shard.orders) {
        for (size_t m = 0; m < kMethodCount; ++m) {
          if (c.calls[m] > 0) ++called[m];
          if (c.applied[m] == 1) ++once[m];
          if (c.applied[m] >= 2) ++twice[m];
          if (c.calls[m] >= 2) ++called_again[m];
          max_calls[m] = std::max<uint64_t>(max_calls[m], c.calls[m]);
        }
        if (detail) {
          by_order[std::to_string(order)] = {
              {"calls", c.calls}, {"applied", c.applied}, {"rejected", c.rejected}};
        }
      }
      auto note_key = [&](int method, const std::string& key, const KeyState& k) {
        ++keys;
        if (k.calls < 2) return;
        ++keys_repeated;
        if (detail) {
          repeated_keys[std::string(kMethodNames[static_cast<size_t>(method)])][key] = k.calls;
        }
      };
      for (const auto& [k, state] : shard.keys) {
        note_key(k.method, std::to_string(k.order) + ":" + std::string(kStepNames[k.step]), state);
      }
      for (const auto& [k, state] : shard.other_keys) note_key(k.first, k.second, state);
    }
    nlohmann::json per_method;
    for (size_t m = 0; m < kMethodCount; ++m) {
      per_method[std::string(kMethodNames[m])] = {{"orders_called", called[m]},
                                                  {"orders_applied_once", once[m]},
                                                  {"orders_applied_twice_or_more", twice[m]},
                                                  {"orders_called_more_than_once", called_again[m]},
                                                  {"max_calls_per_order", max_calls[m]}};
    }
    out["orders"] = orders;
    out["per_method"] = per_method;
    out["keys"] = keys;
    out["keys_called_more_than_once"] = keys_repeated;
    if (detail) {
      out["by_order"] = std::move(by_order);
      out["repeated_keys"] = std::move(repeated_keys);
    }
    return out;
  }

 private:
  static int64_t NowMs() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
  }

  void Reserve() {
    for (Shard& shard : shards_) {
      std::lock_guard<std::mutex> lock(shard.mu);
      shard.orders.reserve(expected_orders_ / kShards + 1);
      shard.keys.reserve(3 * expected_orders_ / kShards + 1);
    }
  }

  const size_t expected_orders_;
  std::array<MethodTotals, kMethodCount> totals_;
  std::array<Shard, kShards> shards_;
  std::atomic<int64_t> started_at_ms_{NowMs()};
};

// A call waiting for its answer.
class PendingAnswer {
 public:
  virtual ~PendingAnswer() = default;
  // Sends the answer; called once.
  virtual void Send(grpc::Status status) = 0;
};

// Delivers delayed answers at their time, from its own thread(s).
class DelayQueue {
 public:
  explicit DelayQueue(int threads) {
    for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { Run(); });
  }
  ~DelayQueue() { Stop(); }

  void Add(Clock::time_point when, PendingAnswer* answer, grpc::Status status) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!stopped_) {
        const bool earliest = queue_.empty() || when < queue_.top().when;
        queue_.push(Entry{when, seq_++, answer, std::move(status)});
        if (earliest) wake_.notify_one();
        return;
      }
    }
    answer->Send(std::move(status));
  }

  // Answers every pending call now and joins the threads. Idempotent.
  void Stop() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopped_ = true;
    }
    wake_.notify_all();
    for (std::thread& t : threads_) {
      if (t.joinable()) t.join();
    }
  }

 private:
  struct Entry {
    Clock::time_point when;
    uint64_t seq;
    PendingAnswer* answer;
    // Mutable so that it can be moved out of the priority queue's const top().
    mutable grpc::Status status;
  };
  struct Later {
    bool operator()(const Entry& a, const Entry& b) const {
      return a.when != b.when ? a.when > b.when : a.seq > b.seq;
    }
  };

  void Run() {
    std::unique_lock<std::mutex> lock(mu_);
    while (true) {
      if (queue_.empty()) {
        if (stopped_) return;
        wake_.wait(lock);
        continue;
      }
      const Clock::time_point when = queue_.top().when;
      if (!stopped_ && when > Clock::now()) {
        wake_.wait_until(lock, when);
        continue;
      }
      PendingAnswer* answer = queue_.top().answer;
      grpc::Status status = std::move(queue_.top().status);
      queue_.pop();
      lock.unlock();
      answer->Send(std::move(status));
      lock.lock();
    }
  }

  std::mutex mu_;
  std::condition_variable wake_;
  std::priority_queue<Entry, std::vector<Entry>, Later> queue_;
  uint64_t seq_ = 0;
  bool stopped_ = false;
  std::vector<std::thread> threads_;
};

// Records one call of `method`, fills the reply; returns the status to answer with.
grpc::Status Apply(Ledger& ledger, const Config& config, Method method,
                   const pv1::StepRequest& request, pv1::StepReply* reply) {
  const uint64_t order = request.order_id();
  if (ledger.Record(method, order, request.idempotency_key(), config)) {
    return grpc::Status(
        grpc::StatusCode::FAILED_PRECONDITION,
        std::string(kMethodNames[method]) + " rejected for order " + std::to_string(order));
  }
  // ref = "<step>-<order_id>", formatted on the stack.
  char ref[48];
  const std::string_view prefix = kStepNames[method];
  std::copy(prefix.begin(), prefix.end(), ref);
  ref[prefix.size()] = '-';
  char* end = std::to_chars(ref + prefix.size() + 1, ref + sizeof(ref), order).ptr;
  reply->set_ok(true);
  reply->set_ref(ref, static_cast<size_t>(end - ref));
  return grpc::Status::OK;
}

struct Services {
  pv1::Inventory::AsyncService inventory;
  pv1::Payment::AsyncService payment;
  pv1::Shipping::AsyncService shipping;
};

// One call of `method` on one completion queue, from its arrival to its answer. The tag of
// every operation is the Call itself: the first event is the call's arrival (a new Call then
// waits for the next one), the second the answer's completion (the Call deletes itself).
class Call final : public PendingAnswer {
 public:
  struct Env {
    Services* services;
    grpc::ServerCompletionQueue* cq;
    Ledger* ledger;
    Config* config;
    DelayQueue* delays;
  };

  // Waits for the next call of `method` on env.cq.
  static void Await(const Env& env, Method method) { new Call(env, method); }

  // Handles the event of this Call's current operation.
  void Proceed(bool ok) {
    if (answered_ || !ok) {  // the answer went out, or the server is shutting down
      delete this;
      return;
    }
    const Clock::time_point arrived = Clock::now();
    Await(env_, method_);
    grpc::Status status = Apply(*env_.ledger, *env_.config, method_, request_, &reply_);
    const int64_t latency_ms = env_.config->latency_ms.load(std::memory_order_relaxed);
    if (latency_ms > 0) {
      env_.delays->Add(arrived + std::chrono::milliseconds(latency_ms), this, std::move(status));
    } else {
      Send(std::move(status));
    }
  }

  void Send(grpc::Status status) override {
    answered_ = true;
    if (status.ok()) {
      responder_.Finish(reply_, status, this);
    } else {
      responder_.FinishWithError(status, this);
    }
  }

 private:
  Call(const Env& env, Method method) : env_(env), method_(method), responder_(&context_) {
    Services& s = *env.services;
    grpc::ServerCompletionQueue* cq = env.cq;
    switch (method) {
      case kReserve:
        s.inventory.RequestReserve(&context_, &request_, &responder_, cq, cq, this);
        break;
      case kRelease:
        s.inventory.RequestRelease(&context_, &request_, &responder_, cq, cq, this);
        break;
      case kCharge:
        s.payment.RequestCharge(&context_, &request_, &responder_, cq, cq, this);
        break;
      case kRefund:
        s.payment.RequestRefund(&context_, &request_, &responder_, cq, cq, this);
        break;
      case kSchedule:
        s.shipping.RequestSchedule(&context_, &request_, &responder_, cq, cq, this);
        break;
      case kMethodCount:
        break;
    }
  }

  const Env env_;
  const Method method_;
  grpc::ServerContext context_;
  pv1::StepRequest request_;
  pv1::StepReply reply_;
  grpc::ServerAsyncResponseWriter<pv1::StepReply> responder_;
  bool answered_ = false;
};

// Serves every method from one completion queue until it is shut down and drained.
void ServeQueue(const Call::Env& env) {
  for (size_t m = 0; m < kMethodCount; ++m) Call::Await(env, static_cast<Method>(m));
  void* tag = nullptr;
  bool ok = false;
  while (env.cq->Next(&tag, &ok)) static_cast<Call*>(tag)->Proceed(ok);
}

nlohmann::json ConfigJson(const Config& config) {
  return {
      {"fail_mod", config.fail_mod.load()},
      {"latency_ms", config.latency_ms.load()},
      {"fail_method", std::string(kMethodNames[static_cast<size_t>(config.fail_method.load())])}};
}

void SendJson(httplib::Response& res, int status, const nlohmann::json& body) {
  res.status = status;
  res.set_content(body.dump(), "application/json");
}

// Reads a non-negative integer query parameter into `out`; false (and an error answer) if it
// is malformed. Absent parameters leave `out` unchanged.
template <typename T>
bool ReadParam(const httplib::Request& req, httplib::Response& res, const char* name, T* out) {
  if (!req.has_param(name)) return true;
  const std::string value = req.get_param_value(name);
  T parsed{};
  const auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), parsed);
  bool negative = false;
  if constexpr (std::is_signed_v<T>) negative = parsed < 0;
  if (ec != std::errc() || end != value.data() + value.size() || negative) {
    SendJson(res, 400, {{"error", std::string("bad ") + name + ": \"" + value + "\""}});
    return false;
  }
  *out = parsed;
  return true;
}

void InstallAdminRoutes(httplib::Server& admin, Ledger* ledger, Config* config) {
  admin.Post("/config", [config](const httplib::Request& req, httplib::Response& res) {
    uint64_t fail_mod = config->fail_mod.load();
    int64_t latency_ms = config->latency_ms.load();
    if (!ReadParam(req, res, "fail_mod", &fail_mod)) return;
    if (!ReadParam(req, res, "latency_ms", &latency_ms)) return;
    int fail_method = config->fail_method.load();
    if (req.has_param("fail_method")) {
      auto m = MethodByName(req.get_param_value("fail_method"));
      if (!m) {
        SendJson(res, 400, {{"error", "unknown fail_method"}});
        return;
      }
      fail_method = *m;
    }
    config->fail_mod = fail_mod;
    config->latency_ms = latency_ms;
    config->fail_method = fail_method;
    SendJson(res, 200, ConfigJson(*config));
  });
  admin.Post("/reset", [ledger](const httplib::Request&, httplib::Response& res) {
    ledger->Reset();
    SendJson(res, 200, {{"ok", true}});
  });
  admin.Get("/stats", [ledger, config](const httplib::Request& req, httplib::Response& res) {
    nlohmann::json stats =
        ledger->Stats(req.has_param("detail") && req.get_param_value("detail") == "1");
    stats["config"] = ConfigJson(*config);
    SendJson(res, 200, stats);
  });
  admin.Get("/health", [](const httplib::Request&, httplib::Response& res) {
    SendJson(res, 200, {{"ok", true}});
  });
}

}  // namespace
}  // namespace saga::bench

int main(int argc, char** argv) {
  using namespace saga::bench;  // NOLINT(build/namespaces): main only.
  CLI::App app{"bench-participants: the order-saga benchmark's participant server"};
  std::string host = "localhost", admin_host = "127.0.0.1";
  int grpc_port = 50071, admin_port = 50072, threads = 1, cq_threads = 1;
  uint64_t fail_mod = 0;
  int64_t latency_ms = 0;
  size_t expected_orders = 200000;
  app.add_option("--host", host, "gRPC listen host")->capture_default_str();
  app.add_option("--grpc-port", grpc_port, "gRPC port")->capture_default_str();
  app.add_option("--admin-host", admin_host, "admin HTTP listen host")->capture_default_str();
  app.add_option("--admin-port", admin_port, "admin HTTP port")->capture_default_str();
  app.add_option("--threads", threads, "threads delivering delayed answers (latency_ms > 0)")
      ->check(CLI::Range(1, 64))
      ->capture_default_str();
  app.add_option("--cq-threads", cq_threads,
                 "threads serving gRPC, each with its own completion queue")
      ->check(CLI::Range(1, 64))
      ->capture_default_str();
  app.add_option("--fail-mod", fail_mod, "initial fail_mod")->capture_default_str();
  app.add_option("--latency-ms", latency_ms, "initial latency_ms")->capture_default_str();
  app.add_option("--expected-orders", expected_orders,
                 "orders the counters are sized for (they grow beyond)")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  // Signals are taken on a thread of our own.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  Config config;
  config.fail_mod = fail_mod;
  config.latency_ms = latency_ms;
  auto ledger = std::make_unique<Ledger>(expected_orders);
  DelayQueue delays(threads);
  Services services;

  grpc::ServerBuilder builder;
  int bound_port = 0;
  builder.AddListeningPort(host + ":" + std::to_string(grpc_port),
                           grpc::InsecureServerCredentials(), &bound_port);
  builder.RegisterService(&services.inventory);
  builder.RegisterService(&services.payment);
  builder.RegisterService(&services.shipping);
  std::vector<std::unique_ptr<grpc::ServerCompletionQueue>> queues;
  for (int i = 0; i < cq_threads; ++i) queues.push_back(builder.AddCompletionQueue());
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || bound_port == 0) {
    std::cerr << "bench-participants: cannot listen on " << host << ":" << grpc_port << "\n";
    return 1;
  }
  std::vector<std::thread> serving;
  for (auto& cq : queues) {
    serving.emplace_back(ServeQueue,
                         Call::Env{&services, cq.get(), ledger.get(), &config, &delays});
  }
  // Stops serving: answers the delayed calls, shuts the server down, then drains the queues.
  auto stop_serving = [&] {
    delays.Stop();
    server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
    for (auto& cq : queues) cq->Shutdown();
    for (std::thread& t : serving) t.join();
  };

  httplib::Server admin;
  admin.new_task_queue = [] { return new httplib::ThreadPool(2); };
  InstallAdminRoutes(admin, ledger.get(), &config);
  if (!admin.bind_to_port(admin_host.c_str(), admin_port)) {
    std::cerr << "bench-participants: cannot listen on " << admin_host << ":" << admin_port << "\n";
    stop_serving();
    return 1;
  }
  std::thread admin_thread([&admin] { admin.listen_after_bind(); });
  std::cout << "bench-participants: gRPC on " << host << ":" << bound_port << ", admin on http://"
            << admin_host << ":" << admin_port << std::endl;

  int sig = 0;
  sigwait(&signals, &sig);
  stop_serving();
  admin.stop();
  admin_thread.join();
  return 0;
}
