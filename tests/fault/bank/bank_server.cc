#include "tests/fault/bank/bank_server.h"

#include <map>
#include <thread>
#include <utility>

#include "absl/functional/any_invocable.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "bank/v1/bank.grpc.pb.h"
#include "grpcpp/grpcpp.h"

namespace saga::fault {
namespace {

namespace v1 = ::bank::v1;

grpc::Status ToGrpc(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

// Runs tasks at given times on one thread. After Stop, pending and new tasks run at once.
class Timers {
 public:
  Timers() : thread_([this] { Run(); }) {}
  ~Timers() { Stop(); }

  void At(absl::Time when, absl::AnyInvocable<void() &&> task) {
    {
      absl::MutexLock lock(&mu_);
      if (!stopped_) {
        tasks_.emplace(when, std::move(task));
        woken_ = true;
        return;
      }
    }
    std::move(task)();
  }

  void Stop() {
    std::multimap<absl::Time, absl::AnyInvocable<void() &&>> rest;
    {
      absl::MutexLock lock(&mu_);
      if (stopped_) return;
      stopped_ = true;
      rest.swap(tasks_);
    }
    thread_.join();
    for (auto& [when, task] : rest) std::move(task)();
  }

 private:
  void Run() {
    absl::MutexLock lock(&mu_);
    while (!stopped_) {
      const absl::Time now = absl::Now();
      if (!tasks_.empty() && tasks_.begin()->first <= now) {
        auto task = std::move(tasks_.begin()->second);
        tasks_.erase(tasks_.begin());
        mu_.Unlock();
        std::move(task)();
        mu_.Lock();
        continue;
      }
      const absl::Time next =
          tasks_.empty() ? now + absl::Milliseconds(100) : tasks_.begin()->first;
      mu_.AwaitWithDeadline(
          absl::Condition(
              +[](Timers* t) ABSL_NO_THREAD_SAFETY_ANALYSIS { return t->stopped_ || t->woken_; },
              this),
          next);
      woken_ = false;
    }
  }

  absl::Mutex mu_;
  std::multimap<absl::Time, absl::AnyInvocable<void() &&>> tasks_ ABSL_GUARDED_BY(mu_);
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
  bool woken_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

CallMetadata ReadMetadata(const grpc::CallbackServerContext& context) {
  CallMetadata md;
  for (const auto& [key_ref, value_ref] : context.client_metadata()) {
    const std::string_view key(key_ref.data(), key_ref.size());
    std::string value(value_ref.data(), value_ref.size());
    if (key == "idempotency-key") {
      md.idempotency_key = std::move(value);
    } else if (key == "saga-id") {
      md.saga_id = std::move(value);
    } else if (key == "saga-step") {
      md.step = std::move(value);
    }
  }
  md.peer = context.peer();
  return md;
}

class BankService final : public v1::Bank::CallbackService {
 public:
  BankService(BankState* state, Timers* timers) : state_(state), timers_(timers) {}

#define SAGA_BANK_METHOD(Name)                                                                    \
  grpc::ServerUnaryReactor* Name(grpc::CallbackServerContext* context,                            \
                                 const v1::MoveRequest* request, v1::MoveReply* reply) override { \
    return Handle(context, request, reply, BankMethod::k##Name);                                  \
  }
  SAGA_BANK_METHOD(Reserve)
  SAGA_BANK_METHOD(ReleaseReserve)
  SAGA_BANK_METHOD(Debit)
  SAGA_BANK_METHOD(RevertDebit)
  SAGA_BANK_METHOD(Credit)
  SAGA_BANK_METHOD(RevertCredit)
  SAGA_BANK_METHOD(Fee)
  SAGA_BANK_METHOD(RevertFee)
  SAGA_BANK_METHOD(Confirm)
  SAGA_BANK_METHOD(RevertConfirm)
#undef SAGA_BANK_METHOD

 private:
  grpc::ServerUnaryReactor* Handle(grpc::CallbackServerContext* context,
                                   const v1::MoveRequest* request, v1::MoveReply* reply,
                                   BankMethod method) {
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    const absl::Time received = absl::Now();
    CallMetadata md = ReadMetadata(*context);
    state_->CallStarted();
    const DeliveryPlan plan = state_->Plan(md, *request);
    if (plan.fault == "unavailable") {
      Decision d = state_->Unavailable(method, md, *request, plan, received);
      state_->CallFinished();
      reactor->Finish(ToGrpc(d.status));
      return reactor;
    }
    auto decide = [this, reactor, request, reply, method, md = std::move(md), plan,
                   received]() mutable {
      Decision d = state_->Decide(method, md, *request, plan, received);
      *reply = d.reply;
      auto finish = [this, reactor, status = ToGrpc(d.status)]() mutable {
        state_->CallFinished();
        reactor->Finish(std::move(status));
      };
      if (plan.after_decide > absl::ZeroDuration()) {
        timers_->At(absl::Now() + plan.after_decide, std::move(finish));
      } else {
        finish();
      }
    };
    if (plan.before_decide > absl::ZeroDuration()) {
      timers_->At(received + plan.before_decide, std::move(decide));
    } else {
      decide();
    }
    return reactor;
  }

  BankState* const state_;
  Timers* const timers_;
};

class AdminService final : public v1::BankAdmin::CallbackService {
 public:
  explicit AdminService(BankState* state) : state_(state) {}

  grpc::ServerUnaryReactor* Export(grpc::CallbackServerContext* context,
                                   const v1::ExportRequest* request,
                                   v1::ExportReply* reply) override {
    const int limit = request->limit() <= 0 ? 5000 : std::min(request->limit(), 10000);
    for (auto& e : state_->Export(request->after_seq(), limit)) {
      *reply->add_entries() = std::move(e);
    }
    reply->set_last_seq(state_->Snapshot().deliveries());
    auto* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }
  grpc::ServerUnaryReactor* Snapshot(grpc::CallbackServerContext* context,
                                     const v1::SnapshotRequest*,
                                     v1::SnapshotReply* reply) override {
    *reply = state_->Snapshot();
    auto* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }
  grpc::ServerUnaryReactor* Configure(grpc::CallbackServerContext* context,
                                      const v1::ConfigureRequest* request,
                                      v1::ConfigureReply*) override {
    state_->Configure(request->faults());
    auto* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

 private:
  BankState* const state_;
};

}  // namespace

struct BankServer::Impl {
  explicit Impl(const BankServerOptions& options)
      : state(DefaultAccounts(options.accounts), options.initial_balance, options.faults),
        bank(&state, &timers),
        admin(&state) {}

  BankState state;
  Timers timers;
  BankService bank;
  AdminService admin;
  std::unique_ptr<grpc::Server> server;
  int port = 0;
  absl::Mutex mu;
  bool shut_down ABSL_GUARDED_BY(mu) = false;
};

BankServer::BankServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
BankServer::~BankServer() { Shutdown(); }

absl::StatusOr<std::unique_ptr<BankServer>> BankServer::Start(const BankServerOptions& options) {
  auto impl = std::make_unique<Impl>(options);
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen, grpc::InsecureServerCredentials(), &impl->port);
  builder.RegisterService(&impl->bank);
  builder.RegisterService(&impl->admin);
  builder.SetMaxSendMessageSize(64 << 20);
  impl->server = builder.BuildAndStart();
  if (impl->server == nullptr || impl->port == 0) {
    return absl::UnavailableError(absl::StrCat("bank: cannot listen on ", options.listen));
  }
  return std::unique_ptr<BankServer>(new BankServer(std::move(impl)));
}

int BankServer::port() const { return impl_->port; }
std::string BankServer::address() const { return absl::StrCat("127.0.0.1:", impl_->port); }
BankState& BankServer::state() { return impl_->state; }

BankDump BankServer::Dump() const {
  BankDump dump;
  dump.entries = impl_->state.Export(0, 1 << 30);
  dump.snapshot = impl_->state.Snapshot();
  return dump;
}

void BankServer::Shutdown() {
  {
    absl::MutexLock lock(&impl_->mu);
    if (impl_->shut_down) return;
    impl_->shut_down = true;
  }
  impl_->timers.Stop();
  impl_->server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
}

absl::StatusOr<BankDump> FetchBankDump(const std::string& address) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  auto channel = grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
  auto stub = v1::BankAdmin::NewStub(channel);
  BankDump dump;
  int64_t after = 0;
  for (int page = 0; page < 100000; ++page) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
    v1::ExportRequest req;
    req.set_after_seq(after);
    req.set_limit(10000);
    v1::ExportReply reply;
    grpc::Status s = stub->Export(&ctx, req, &reply);
    if (!s.ok()) {
      return absl::UnavailableError(
          absl::StrCat("bank Export at ", address, ": ", s.error_message()));
    }
    for (auto& e : *reply.mutable_entries()) dump.entries.push_back(std::move(e));
    if (reply.entries_size() == 0) break;
    after = dump.entries.back().seq();
  }
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
  grpc::Status s = stub->Snapshot(&ctx, {}, &dump.snapshot);
  if (!s.ok()) {
    return absl::UnavailableError(
        absl::StrCat("bank Snapshot at ", address, ": ", s.error_message()));
  }
  return dump;
}

absl::Status ConfigureBank(const std::string& address, const bank::v1::FaultConfig& faults) {
  auto stub =
      v1::BankAdmin::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::ConfigureRequest req;
  *req.mutable_faults() = faults;
  v1::ConfigureReply reply;
  grpc::Status s = stub->Configure(&ctx, req, &reply);
  if (!s.ok()) return absl::UnavailableError(s.error_message());
  return absl::OkStatus();
}

}  // namespace saga::fault
