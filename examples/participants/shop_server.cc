#include "examples/participants/shop_server.h"

#include <algorithm>
#include <optional>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "examples/participants/delay_scheduler.h"
#include "grpcpp/grpcpp.h"
#include "shop/v1/admin.grpc.pb.h"
#include "shop/v1/shop.grpc.pb.h"

namespace saga::examples {
namespace {

namespace v1 = ::shop::v1;

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

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
    } else if (key == "traceparent") {
      md.traceparent = std::move(value);
    }
  }
  return md;
}

// "UNAVAILABLE", "unavailable" or "14" -> the code; "" -> kOk.
std::optional<absl::StatusCode> ParseStatusCode(const std::string& raw) {
  const absl::string_view text = absl::StripAsciiWhitespace(raw);
  if (text.empty()) return absl::StatusCode::kOk;
  int number = 0;
  if (absl::SimpleAtoi(text, &number)) {
    if (number < 0 || number > static_cast<int>(absl::StatusCode::kUnauthenticated)) {
      return std::nullopt;
    }
    return static_cast<absl::StatusCode>(number);
  }
  for (int i = 0; i <= static_cast<int>(absl::StatusCode::kUnauthenticated); ++i) {
    const auto code = static_cast<absl::StatusCode>(i);
    if (absl::EqualsIgnoreCase(absl::StatusCodeToString(code), text)) return code;
  }
  return std::nullopt;
}

std::optional<std::string_view> KnownMethod(std::string_view method) {
  if (!method.empty() && method.front() == '/') method.remove_prefix(1);
  for (std::string_view known : kShopMethods) {
    if (known == method) return known;
  }
  return std::nullopt;
}

// Decides calls with the state and delivers the answers, at once or through the scheduler.
class Responder {
 public:
  Responder(ShopState* state, DelayScheduler* scheduler,
            std::function<void(const LedgerEntry&)> on_call)
      : state_(state), scheduler_(scheduler), on_call_(std::move(on_call)) {}

  ShopState& state() { return *state_; }

  // `decide(const CallMetadata&) -> CallDecision` runs the call against the state.
  template <typename Decide>
  grpc::ServerUnaryReactor* Serve(grpc::CallbackServerContext* context, Decide&& decide) {
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    CallDecision decision = std::forward<Decide>(decide)(ReadMetadata(*context));
    if (on_call_) on_call_(decision.entry);
    grpc::Status status = ToGrpcStatus(decision.status);
    if (decision.wait <= absl::ZeroDuration()) {
      reactor->Finish(std::move(status));
    } else {
      scheduler_->Schedule(
          absl::Now() + decision.wait,
          [reactor, status = std::move(status)]() mutable { reactor->Finish(std::move(status)); });
    }
    return reactor;
  }

 private:
  ShopState* const state_;
  DelayScheduler* const scheduler_;
  const std::function<void(const LedgerEntry&)> on_call_;
};

class InventoryService final : public v1::Inventory::CallbackService {
 public:
  explicit InventoryService(Responder* responder) : responder_(responder) {}

  grpc::ServerUnaryReactor* Reserve(grpc::CallbackServerContext* context,
                                    const v1::ReserveRequest* request,
                                    v1::ReserveReply* reply) override {
    return responder_->Serve(context, [&](const CallMetadata& md) {
      return responder_->state().Reserve(md, *request, reply);
    });
  }
  grpc::ServerUnaryReactor* Release(grpc::CallbackServerContext* context,
                                    const v1::ReleaseRequest* request,
                                    v1::ReleaseReply* reply) override {
    return responder_->Serve(context, [&](const CallMetadata& md) {
      return responder_->state().Release(md, *request, reply);
    });
  }

 private:
  Responder* const responder_;
};

class PaymentService final : public v1::Payment::CallbackService {
 public:
  explicit PaymentService(Responder* responder) : responder_(responder) {}

  grpc::ServerUnaryReactor* Charge(grpc::CallbackServerContext* context,
                                   const v1::ChargeRequest* request,
                                   v1::ChargeReply* reply) override {
    return responder_->Serve(context, [&](const CallMetadata& md) {
      return responder_->state().Charge(md, *request, reply);
    });
  }
  grpc::ServerUnaryReactor* Refund(grpc::CallbackServerContext* context,
                                   const v1::RefundRequest* request,
                                   v1::RefundReply* reply) override {
    return responder_->Serve(context, [&](const CallMetadata& md) {
      return responder_->state().Refund(md, *request, reply);
    });
  }

 private:
  Responder* const responder_;
};

class ShippingService final : public v1::Shipping::CallbackService {
 public:
  explicit ShippingService(Responder* responder) : responder_(responder) {}

  grpc::ServerUnaryReactor* Schedule(grpc::CallbackServerContext* context,
                                     const v1::ScheduleRequest* request,
                                     v1::ScheduleReply* reply) override {
    return responder_->Serve(context, [&](const CallMetadata& md) {
      return responder_->state().Schedule(md, *request, reply);
    });
  }

 private:
  Responder* const responder_;
};

class AdminService final : public v1::ShopAdmin::CallbackService {
 public:
  explicit AdminService(ShopState* state) : state_(state) {}

  grpc::ServerUnaryReactor* SetFault(grpc::CallbackServerContext* context,
                                     const v1::SetFaultRequest* request,
                                     v1::SetFaultReply* /*reply*/) override {
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    const std::optional<std::string_view> method = KnownMethod(request->method());
    const std::optional<absl::StatusCode> code = ParseStatusCode(request->code());
    if (!method) {
      reactor->Finish(
          grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                       absl::StrCat("unknown method \"", request->method(),
                                    "\"; expected e.g. \"shop.v1.Inventory/Reserve\"")));
    } else if (!code) {
      reactor->Finish(
          grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                       absl::StrCat("unknown status code \"", request->code(),
                                    "\"; expected a name such as UNAVAILABLE or a number 0-16")));
    } else {
      state_->SetMethodFault(*method, *code);
      reactor->Finish(grpc::Status::OK);
    }
    return reactor;
  }

  grpc::ServerUnaryReactor* ClearFaults(grpc::CallbackServerContext* context,
                                        const v1::ClearFaultsRequest* /*request*/,
                                        v1::ClearFaultsReply* /*reply*/) override {
    state_->ClearFaults();
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

  grpc::ServerUnaryReactor* GetLedger(grpc::CallbackServerContext* context,
                                      const v1::GetLedgerRequest* request,
                                      v1::GetLedgerReply* reply) override {
    for (const LedgerEntry& entry : state_->Ledger()) {
      if (!request->order_id().empty() && entry.order_id != request->order_id()) continue;
      v1::LedgerEntry* out = reply->add_entries();
      out->set_method(entry.method);
      out->set_idempotency_key(entry.idempotency_key);
      out->set_saga_id(entry.saga_id);
      out->set_step(entry.step);
      out->set_order_id(entry.order_id);
      out->set_applied(entry.applied);
      out->set_outcome(entry.outcome);
      out->set_at_unix_micros(absl::ToUnixMicros(entry.at));
      out->set_empty_compensation(entry.empty_compensation);
      out->set_message(entry.message);
    }
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

  grpc::ServerUnaryReactor* Reset(grpc::CallbackServerContext* context,
                                  const v1::ResetRequest* /*request*/,
                                  v1::ResetReply* /*reply*/) override {
    state_->Reset();
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

  grpc::ServerUnaryReactor* GetCounts(grpc::CallbackServerContext* context,
                                      const v1::GetCountsRequest* request,
                                      v1::GetCountsReply* reply) override {
    for (std::string_view method : kShopMethods) {
      v1::MethodCount* count = reply->add_counts();
      count->set_method(std::string(method));
      count->set_calls(state_->CallCount(method, request->order_id()));
      count->set_applied(state_->AppliedCount(method, request->order_id()));
    }
    if (!request->sku().empty()) reply->set_stock(state_->Stock(request->sku()));
    reply->set_charged_total_cents(state_->ChargedTotal());
    reply->set_last_traceparent(state_->LastTraceparent(request->order_id()));
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

 private:
  ShopState* const state_;
};

}  // namespace

// Members are destroyed in reverse order: the server first, then the services it calls, then
// the scheduler and the state they use.
struct ShopServer::Impl {
  explicit Impl(const ShopServerOptions& options)
      : state(options.initial_stock, options.ledger_capacity),
        responder(&state, &scheduler, options.on_call),
        inventory(&responder),
        payment(&responder),
        shipping(&responder),
        admin(&state) {}

  ShopState state;
  DelayScheduler scheduler;
  Responder responder;
  InventoryService inventory;
  PaymentService payment;
  ShippingService shipping;
  AdminService admin;
  int port = 0;
  std::unique_ptr<grpc::Server> server;

  absl::Mutex shutdown_mu;
  bool shut_down ABSL_GUARDED_BY(shutdown_mu) = false;
};

ShopServer::ShopServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

ShopServer::~ShopServer() { Shutdown(); }

absl::StatusOr<std::unique_ptr<ShopServer>> ShopServer::Start(const ShopServerOptions& options) {
  auto impl = std::make_unique<Impl>(options);
  grpc::ServerBuilder builder;
  // Without this a second server on the same fixed port would start and share the traffic.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.AddListeningPort(options.listen, grpc::InsecureServerCredentials(), &impl->port);
  builder.RegisterService(&impl->inventory);
  builder.RegisterService(&impl->payment);
  builder.RegisterService(&impl->shipping);
  if (options.enable_admin) builder.RegisterService(&impl->admin);
  impl->server = builder.BuildAndStart();
  if (impl->server == nullptr || impl->port == 0) {
    if (impl->server != nullptr) impl->server->Shutdown();
    return absl::UnavailableError(
        absl::StrCat("shop participants: cannot listen on \"", options.listen, "\""));
  }
  return std::unique_ptr<ShopServer>(new ShopServer(std::move(impl)));
}

int ShopServer::port() const { return impl_->port; }

std::string ShopServer::address() const { return absl::StrCat("localhost:", impl_->port); }

void ShopServer::Shutdown() {
  absl::MutexLock lock(&impl_->shutdown_mu);
  if (impl_->shut_down) return;
  impl_->shut_down = true;
  // Send every held-back reply now (later ones go out at once), so that no call keeps the
  // server's shutdown waiting.
  impl_->scheduler.Stop();
  impl_->server->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(1)));
  impl_->server->Wait();
}

std::vector<LedgerEntry> ShopServer::Ledger() const { return impl_->state.Ledger(); }

int ShopServer::AppliedCount(std::string_view method, std::string_view order_id) const {
  return impl_->state.AppliedCount(method, order_id);
}

int ShopServer::CallCount(std::string_view method, std::string_view order_id) const {
  return impl_->state.CallCount(method, order_id);
}

int64_t ShopServer::Stock(std::string_view sku) const { return impl_->state.Stock(sku); }

int64_t ShopServer::ChargedTotal() const { return impl_->state.ChargedTotal(); }

std::string ShopServer::LastTraceparent(std::string_view order_id) const {
  return impl_->state.LastTraceparent(order_id);
}

void ShopServer::SetMethodFault(std::string_view method, absl::StatusCode code) {
  impl_->state.SetMethodFault(method, code);
}

void ShopServer::ClearFaults() { impl_->state.ClearFaults(); }

void ShopServer::Reset() { impl_->state.Reset(); }

}  // namespace saga::examples
