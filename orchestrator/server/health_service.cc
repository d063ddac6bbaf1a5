#include "orchestrator/server/health_service.h"

#include <iterator>
#include <optional>
#include <set>
#include <unordered_set>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/server_builder.h"
#include "grpcpp/server_context.h"
#include "orchestrator/rpc/completion_queue.h"

namespace saga::server {
namespace {

using ::grpc::health::v1::Health;
using ::grpc::health::v1::HealthCheckRequest;
using ::grpc::health::v1::HealthCheckResponse;
using ServingStatus = HealthCheckResponse::ServingStatus;

// How long Shutdown lets Watch streams take their last status before cancelling them (a client
// that stopped reading would otherwise hold it forever).
constexpr absl::Duration kShutdownGrace = absl::Seconds(1);

}  // namespace

// Shutdown and the queue: once the server has shut down, its queue is shut down too, and an
// operation started on it after that aborts the process. A call cancelled by the server's
// Shutdown may still be handled on a queue thread after the server's Shutdown has returned, so
// the rule is that no operation (request, write, finish) starts once Shutdown has returned:
// every operation is started either while holding mu_ with shut_down_ false, or by a Watch stream
// that is in watchers_, which Shutdown waits to see empty. Calls that arrive later are cancelled
// without any operation.
class HealthService::Impl {
 public:
  void Register(grpc::ServerBuilder& builder) { builder.RegisterService(&service_); }
  void Start(grpc::ServerCompletionQueue* cq);
  void SetServing(bool serving);
  void SetServiceNames(std::vector<std::string> names);
  void Shutdown();

 private:
  class CheckCall;
  class WatchCall;

  bool KnownLocked(const std::string& name) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return name.empty() || names_.contains(name);
  }

  // What Watch(name) reports.
  ServingStatus StatusLocked(const std::string& name) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (!KnownLocked(name)) return HealthCheckResponse::SERVICE_UNKNOWN;
    return serving_ && !shut_down_ ? HealthCheckResponse::SERVING
                                   : HealthCheckResponse::NOT_SERVING;
  }

  void UpdateWatchersLocked(bool end) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Answers a Check call that has arrived, and requests the next one. False after Shutdown:
  // nothing started.
  bool Answer(CheckCall* call);
  // Registers a Watch stream that has started, sends it the current status, and requests the next
  // one; after Shutdown, cancels it instead.
  void AddWatcher(WatchCall* call);
  void RemoveWatcher(WatchCall* call);

  Health::AsyncService service_;
  grpc::ServerCompletionQueue* cq_ = nullptr;

  // Lock order: mu_, then a WatchCall's own mutex.
  absl::Mutex mu_;
  // Initially NOT_SERVING (gRPC's built-in service starts "" as SERVING): nothing is reported
  // healthy before the server calls SetServing(true).
  bool serving_ ABSL_GUARDED_BY(mu_) = false;
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
  std::set<std::string> names_ ABSL_GUARDED_BY(mu_);
  // Watch streams registered and not freed yet.
  std::unordered_set<WatchCall*> watchers_ ABSL_GUARDED_BY(mu_);
};

// One Check call: a request, then the answer. One operation at a time, so one tag; the object
// frees itself when the answer has been sent, or when the request brought no call.
class HealthService::Impl::CheckCall {
 public:
  static void Spawn(Impl* impl) { new CheckCall(impl); }

 private:
  friend class Impl;

  explicit CheckCall(Impl* impl) : impl_(impl) {
    tag_.Set([this](bool ok) { Proceed(ok); });
    impl_->service_.RequestCheck(&ctx_, &request_, &responder_, impl_->cq_, impl_->cq_, &tag_);
  }

  void Proceed(bool ok) {
    // The answer has been sent, or the request brought no call (the server is shutting down).
    if (!ok || answered_) {
      delete this;
      return;
    }
    answered_ = true;
    // Once the Finish has started, its completion may free the object on another thread.
    if (!impl_->Answer(this)) delete this;  // after Shutdown: no operation, the call is cancelled
  }

  Impl* const impl_;
  grpc::ServerContext ctx_;
  HealthCheckRequest request_;
  HealthCheckResponse response_;
  grpc::ServerAsyncResponseWriter<HealthCheckResponse> responder_{&ctx_};
  rpc::FnTag tag_;
  bool answered_ = false;
};

// One Watch stream. Once started it has up to three operations pending at once: the
// AsyncNotifyWhenDone tag (always delivered once the call has started), one Write or the
// Finish, and OnRequest itself until it has registered the stream. `pending_` counts them; the
// object leaves the service's set and frees itself when the count drops to zero, which implies
// that the done tag has come, so that no status update can start an operation any more.
class HealthService::Impl::WatchCall {
 public:
  static void Spawn(Impl* impl) { new WatchCall(impl); }

  const std::string& name() const { return request_.service(); }

  // Called with the service's mutex held. `status` is the latest status of the stream's name;
  // `end` asks the stream to end once it has been sent.
  void Update(ServingStatus status, bool end) {
    absl::MutexLock lock(&mu_);
    latest_ = status;
    end_ = end_ || end;
    MaybeStartOpLocked();
  }

  // Called with the service's mutex held: ends the call at once; its pending operations
  // complete with ok = false and no other starts.
  void Cancel() { ctx_.TryCancel(); }

 private:
  explicit WatchCall(Impl* impl) : impl_(impl) {
    request_tag_.Set([this](bool ok) { OnRequest(ok); });
    write_tag_.Set([this](bool ok) { OnWrite(ok); });
    finish_tag_.Set([this](bool /*ok*/) { Release(); });
    done_tag_.Set([this](bool /*ok*/) { Release(/*done=*/true); });
    // Must precede the request. Its tag is delivered only if a call starts.
    ctx_.AsyncNotifyWhenDone(&done_tag_);
    impl_->service_.RequestWatch(&ctx_, &request_, &writer_, impl_->cq_, impl_->cq_, &request_tag_);
  }

  void OnRequest(bool ok) {
    if (!ok) {  // the server is shutting down and no call came; the done tag will not come
      delete this;
      return;
    }
    impl_->AddWatcher(this);
    Release();
  }

  void OnWrite(bool ok) {
    {
      absl::MutexLock lock(&mu_);
      writing_ = false;
      if (ok) {
        MaybeStartOpLocked();  // the status that changed meanwhile, or the Finish
      } else {
        stopped_ = true;  // the call has ended (cancelled); the done tag follows
      }
    }
    Release();
  }

  // One pending operation has completed.
  void Release(bool done = false) {
    {
      absl::MutexLock lock(&mu_);
      stopped_ = stopped_ || done;
      if (--pending_ > 0) return;
    }
    impl_->RemoveWatcher(this);
    delete this;
  }

  void MaybeStartOpLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (writing_ || stopped_) return;
    if (latest_.has_value() && latest_ != sent_) {
      sent_ = latest_;
      response_.set_status(*latest_);
      writing_ = true;
      ++pending_;
      writer_.Write(response_, &write_tag_);
    } else if (end_) {
      stopped_ = true;
      ++pending_;
      writer_.Finish(grpc::Status::OK, &finish_tag_);
    }
  }

  Impl* const impl_;
  grpc::ServerContext ctx_;
  HealthCheckRequest request_;
  grpc::ServerAsyncWriter<HealthCheckResponse> writer_{&ctx_};
  rpc::FnTag request_tag_;
  rpc::FnTag write_tag_;
  rpc::FnTag finish_tag_;
  rpc::FnTag done_tag_;

  absl::Mutex mu_;
  // Counted from the start, as the done tag may come (on another thread) before OnRequest runs:
  // the done tag, and OnRequest until it has registered the stream.
  int pending_ ABSL_GUARDED_BY(mu_) = 2;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  // No operation may start: Finish has started, a write failed, or the call is done.
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
  bool end_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<ServingStatus> latest_ ABSL_GUARDED_BY(mu_);  // to be reported
  std::optional<ServingStatus> sent_ ABSL_GUARDED_BY(mu_);    // last written
  HealthCheckResponse response_ ABSL_GUARDED_BY(mu_);
};

void HealthService::Impl::Start(grpc::ServerCompletionQueue* cq) {
  cq_ = cq;
  CheckCall::Spawn(this);
  WatchCall::Spawn(this);
}

void HealthService::Impl::SetServing(bool serving) {
  absl::MutexLock lock(&mu_);
  if (shut_down_ || serving_ == serving) return;
  serving_ = serving;
  UpdateWatchersLocked(/*end=*/false);
}

void HealthService::Impl::SetServiceNames(std::vector<std::string> names) {
  absl::MutexLock lock(&mu_);
  names_ = std::set<std::string>(std::make_move_iterator(names.begin()),
                                 std::make_move_iterator(names.end()));
  // After Shutdown the streams are ending with their final status.
  if (!shut_down_) UpdateWatchersLocked(/*end=*/false);
}

void HealthService::Impl::Shutdown() {
  absl::MutexLock lock(&mu_);
  if (shut_down_) return;
  shut_down_ = true;
  UpdateWatchersLocked(/*end=*/true);
  const absl::Condition no_watchers(
      +[](std::unordered_set<WatchCall*>* watchers) { return watchers->empty(); }, &watchers_);
  if (!mu_.AwaitWithTimeout(no_watchers, kShutdownGrace)) {
    for (WatchCall* call : watchers_) call->Cancel();
    mu_.Await(no_watchers);
  }
}

void HealthService::Impl::UpdateWatchersLocked(bool end) {
  for (WatchCall* call : watchers_) call->Update(StatusLocked(call->name()), end);
}

bool HealthService::Impl::Answer(CheckCall* call) {
  absl::MutexLock lock(&mu_);
  if (shut_down_) return false;
  CheckCall::Spawn(this);
  const std::string& name = call->request_.service();
  if (KnownLocked(name)) {
    call->response_.set_status(StatusLocked(name));
    call->responder_.Finish(call->response_, grpc::Status::OK, &call->tag_);
  } else {
    call->responder_.FinishWithError(
        grpc::Status(grpc::StatusCode::NOT_FOUND, "unknown service: " + name), &call->tag_);
  }
  return true;
}

void HealthService::Impl::AddWatcher(WatchCall* call) {
  absl::MutexLock lock(&mu_);
  if (shut_down_) {
    call->Cancel();  // no operation: only the done tag, which is already counted, will come
    return;
  }
  WatchCall::Spawn(this);
  watchers_.insert(call);
  call->Update(StatusLocked(call->name()), /*end=*/false);
}

void HealthService::Impl::RemoveWatcher(WatchCall* call) {
  absl::MutexLock lock(&mu_);
  watchers_.erase(call);
}

HealthService::HealthService() : impl_(std::make_unique<Impl>()) {}
HealthService::~HealthService() = default;

void HealthService::Register(grpc::ServerBuilder& builder) { impl_->Register(builder); }
void HealthService::Start(grpc::ServerCompletionQueue* cq) { impl_->Start(cq); }
void HealthService::SetServing(bool serving) { impl_->SetServing(serving); }
void HealthService::SetServiceNames(std::vector<std::string> names) {
  impl_->SetServiceNames(std::move(names));
}
void HealthService::Shutdown() { impl_->Shutdown(); }

}  // namespace saga::server
