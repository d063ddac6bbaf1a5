// bench-participants-ceiling: measures what the participant server can take on its own, without
// sagad, so that a benchmark can show it is not the bottleneck.
//
// Keeps --in-flight unary calls in flight against the participant (gRPC callback API), in the
// saga's mix: for each order Reserve, Charge, Schedule (keys "<order>:<step>", all distinct, so
// every call is a new application). Prints calls/s, call latency, and CPU per call of the
// participant process (/proc) and of this client (getrusage), and checks the participant's
// call counters.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <iostream>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "bench/bench_util.h"
#include "grpcpp/grpcpp.h"
#include "participants.grpc.pb.h"

namespace saga::bench {
namespace {

namespace pv1 = ::sagabench::participants::v1;
using Clock = std::chrono::steady_clock;

struct Options {
  std::string target = "localhost:50071";
  std::string admin = "http://localhost:50072";
  int64_t calls = 300000;
  int in_flight = 64;
  int channels = 1;
  int participant_pid = 0;
  bool json = false;
};

class Load;

// One in-flight slot: issues calls one after the other.
class Slot {
 public:
  Slot(Load* load, size_t index) : load_(load), index_(index) {}
  // Issues call number `n`; false if there is none left.
  bool Issue();

 private:
  void OnDone(const grpc::Status& status);

  Load* const load_;
  const size_t index_;
  // The context of the call before the current one is kept until the next call, so that no
  // context is destroyed inside its own completion callback.
  std::unique_ptr<grpc::ClientContext> context_, previous_;
  pv1::StepRequest request_;
  pv1::StepReply reply_;
  Clock::time_point sent_{};
};

class Load {
 public:
  Load(const Options& options, std::vector<std::unique_ptr<pv1::Inventory::Stub>> inventory,
       std::vector<std::unique_ptr<pv1::Payment::Stub>> payment,
       std::vector<std::unique_ptr<pv1::Shipping::Stub>> shipping, uint64_t base)
      : options_(options),
        inventory_(std::move(inventory)),
        payment_(std::move(payment)),
        shipping_(std::move(shipping)),
        base_(base),
        latencies_(static_cast<size_t>(options.calls)) {}

  void Run() {
    for (int i = 0; i < options_.in_flight; ++i) {
      slots_.push_back(std::make_unique<Slot>(this, static_cast<size_t>(i)));
    }
    for (auto& slot : slots_) {
      active_.fetch_add(1);
      if (!slot->Issue()) SlotIdle();
    }
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [this] { return active_.load() == 0; });
  }

  // Claims the next call number, or -1.
  int64_t Next() {
    const int64_t n = next_.fetch_add(1);
    return n < options_.calls ? n : -1;
  }
  uint64_t base() const { return base_; }
  pv1::Inventory::Stub* inventory(size_t i) { return inventory_[i % inventory_.size()].get(); }
  pv1::Payment::Stub* payment(size_t i) { return payment_[i % payment_.size()].get(); }
  pv1::Shipping::Stub* shipping(size_t i) { return shipping_[i % shipping_.size()].get(); }
  void Record(int64_t n, double ms, bool ok) {
    latencies_[static_cast<size_t>(n)] = ms;
    if (!ok) errors_.fetch_add(1);
  }
  void SlotIdle() {
    if (active_.fetch_sub(1) == 1) {
      std::lock_guard<std::mutex> lock(mu_);
      cv_.notify_all();
    }
  }
  std::vector<double>& latencies() { return latencies_; }
  int64_t errors() const { return errors_.load(); }

 private:
  const Options& options_;
  std::vector<std::unique_ptr<pv1::Inventory::Stub>> inventory_;
  std::vector<std::unique_ptr<pv1::Payment::Stub>> payment_;
  std::vector<std::unique_ptr<pv1::Shipping::Stub>> shipping_;
  const uint64_t base_;
  std::vector<double> latencies_;
  std::vector<std::unique_ptr<Slot>> slots_;
  std::atomic<int64_t> next_{0};
  std::atomic<int> active_{0};
  std::atomic<int64_t> errors_{0};
  std::mutex mu_;
  std::condition_variable cv_;
};

constexpr const char* kSteps[3] = {"reserve", "charge", "schedule"};

bool Slot::Issue() {
  const int64_t n = load_->Next();
  if (n < 0) return false;
  const uint64_t order = load_->base() + static_cast<uint64_t>(n / 3);
  const int step = static_cast<int>(n % 3);
  request_.set_order_id(order);
  request_.set_amount(100 + static_cast<int64_t>(order % 9900));
  request_.set_idempotency_key(std::to_string(order) + ":" + kSteps[step]);
  previous_ = std::move(context_);
  context_ = std::make_unique<grpc::ClientContext>();
  sent_ = Clock::now();
  auto done = [this, n](grpc::Status status) {
    load_->Record(n, std::chrono::duration<double, std::milli>(Clock::now() - sent_).count(),
                  status.ok());
    OnDone(status);
  };
  switch (step) {
    case 0:
      load_->inventory(index_)->async()->Reserve(context_.get(), &request_, &reply_, done);
      break;
    case 1:
      load_->payment(index_)->async()->Charge(context_.get(), &request_, &reply_, done);
      break;
    default:
      load_->shipping(index_)->async()->Schedule(context_.get(), &request_, &reply_, done);
      break;
  }
  return true;
}

void Slot::OnDone(const grpc::Status& /*status*/) {
  if (!Issue()) load_->SlotIdle();
}

int Main(int argc, char** argv) {
  Options o;
  CLI::App app{"bench-participants-ceiling: load the participant server alone (no sagad)"};
  app.add_option("--target", o.target, "participant gRPC address")->capture_default_str();
  app.add_option("--admin", o.admin, "participant admin base URL (reset and count check)")
      ->capture_default_str();
  app.add_option("--calls", o.calls, "calls to make")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--in-flight", o.in_flight, "calls in flight")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--channels", o.channels, "gRPC channels (connections)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--participant-pid", o.participant_pid,
                 "pid of the participant server, for its CPU per call");
  app.add_flag("--json", o.json, "print one JSON object");
  CLI11_PARSE(app, argc, argv);

  std::string error;
  AdminClient admin(o.admin);
  if (!admin.Post("/config?fail_mod=0&latency_ms=0", &error) || !admin.Post("/reset", &error)) {
    std::cerr << "bench-participants-ceiling: " << error << "\n";
    return 2;
  }

  std::vector<std::unique_ptr<pv1::Inventory::Stub>> inventory;
  std::vector<std::unique_ptr<pv1::Payment::Stub>> payment;
  std::vector<std::unique_ptr<pv1::Shipping::Stub>> shipping;
  for (int i = 0; i < o.channels; ++i) {
    grpc::ChannelArguments args;
    args.SetInt("saga_bench.channel", i);
    auto channel = grpc::CreateCustomChannel(o.target, grpc::InsecureChannelCredentials(), args);
    if (!channel->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(5))) {
      std::cerr << "bench-participants-ceiling: cannot connect to " << o.target << "\n";
      return 2;
    }
    inventory.push_back(pv1::Inventory::NewStub(channel));
    payment.push_back(pv1::Payment::NewStub(channel));
    shipping.push_back(pv1::Shipping::NewStub(channel));
  }
  const uint64_t base =
      static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                std::chrono::system_clock::now().time_since_epoch())
                                .count()) *
      1000;
  Load load(o, std::move(inventory), std::move(payment), std::move(shipping), base);

  const auto pid = static_cast<pid_t>(o.participant_pid);
  const std::optional<double> part_before = pid > 0 ? ProcessTreeCpuSeconds(pid) : std::nullopt;
  const double self_before = SelfCpuSeconds();
  const MachineCpu machine_before = MachineCpu::Now();
  const Clock::time_point start = Clock::now();
  load.Run();
  const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  const MachineCpu machine_after = MachineCpu::Now();
  const double self_after = SelfCpuSeconds();
  const std::optional<double> part_after = pid > 0 ? ProcessTreeCpuSeconds(pid) : std::nullopt;

  const double calls = static_cast<double>(o.calls);
  LatencySummary lat = Summarize(load.latencies());
  std::optional<double> part_us;
  if (part_before && part_after) part_us = (*part_after - *part_before) * 1e6 / calls;
  const double client_us = (self_after - self_before) * 1e6 / calls;
  const double busy = BusyPercent(machine_before, machine_after);

  // The participant must have seen every call once.
  int64_t counted = -1;
  if (auto stats = admin.Get("/stats", &error)) {
    counted = 0;
    for (const auto& [name, value] : (*stats)["calls"].items()) counted += value.get<int64_t>();
  }
  const bool counts_ok = counted == o.calls && load.errors() == 0;

  if (o.json) {
    nlohmann::json j = {
        {"calls", o.calls},
        {"in_flight", o.in_flight},
        {"channels", o.channels},
        {"elapsed_s", elapsed},
        {"calls_per_s", calls / elapsed},
        {"latency_ms", {{"p50", lat.p50_ms}, {"p99", lat.p99_ms}, {"max", lat.max_ms}}},
        {"participant_cpu_us_per_call", part_us ? nlohmann::json(*part_us) : nlohmann::json()},
        {"client_cpu_us_per_call", client_us},
        {"machine_busy_percent", busy},
        {"errors", load.errors()},
        {"participant_counted", counted},
        {"counts_ok", counts_ok}};
    std::cout << j.dump() << std::endl;
  } else {
    std::printf(
        "participant ceiling: %lld calls, %d in flight, %d channel(s): %.0f calls/s (%.2f s), "
        "latency p50 %.3f ms p99 %.3f ms max %.3f ms\n",
        static_cast<long long>(o.calls), o.in_flight, o.channels, calls / elapsed, elapsed,
        lat.p50_ms, lat.p99_ms, lat.max_ms);
    if (part_us) {
      std::printf(
          "  participant CPU %.1f us/call (one core: %.0f calls/s = %.0f sagas/s at 3 calls "
          "each)\n",
          *part_us, 1e6 / *part_us, 1e6 / *part_us / 3);
    }
    std::printf(
        "  client CPU %.1f us/call; machine %.0f%% busy; errors %lld; participant "
        "counted %lld calls: %s\n",
        client_us, busy, static_cast<long long>(load.errors()), static_cast<long long>(counted),
        counts_ok ? "OK" : "MISMATCH");
  }
  return counts_ok ? 0 : 1;
}

}  // namespace
}  // namespace saga::bench

int main(int argc, char** argv) { return saga::bench::Main(argc, argv); }
