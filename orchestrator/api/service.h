// The gRPC service saga.v1.SagaOrchestrator: validates requests, calls the registry, the
// runtime and the store, maps results to protos and errors to gRPC codes. Blocking database
// work runs on the service's own worker threads, never on the completion queue's threads.
// Thread-safe.
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/completion_queue.h"
#include "grpcpp/server_builder.h"
#include "orchestrator/runtime/executor.h"
#include "orchestrator/runtime/registry.h"
#include "orchestrator/runtime/runtime.h"
#include "orchestrator/store/store.h"
#include "saga/v1/orchestrator.grpc.pb.h"

namespace saga::api {

// Limits (README "Limits").
inline constexpr size_t kMaxInputBytes = 256 * 1024;
inline constexpr int kMaxJsonDepth = 64;
inline constexpr size_t kMaxKeyBytes = 255;
inline constexpr size_t kMaxReasonBytes = 1024;
inline constexpr int kMaxPageSize = 1000;
inline constexpr int kDefaultPageSize = 100;

// Validation helpers, exposed for tests. Each returns INVALID_ARGUMENT with the field named.
absl::Status ValidateSagaId(const std::string& id);
absl::Status ValidateIdempotencyKey(const std::string& key);
absl::Status ValidateTraceparent(const std::string& traceparent);
// Parses a saga input: a JSON object within the limits, without NUL characters.
absl::StatusOr<nlohmann::json> ParseInput(const std::string& text);

// The status to answer when a write failed with `status`. Only UNKNOWN (the database
// connection broke while the write committed, so it may or may not have happened) is changed:
// to UNAVAILABLE when repeating the request is safe, the code that clients and gRPC retry
// policies retry; otherwise it stays UNKNOWN. Either way the message names `what` and says
// what to do (`advice`).
absl::Status UnknownOutcome(const absl::Status& status, absl::string_view what, bool retry_is_safe,
                            absl::string_view advice);

// StartSaga: with an idempotency key a retry returns the saga if the start was recorded;
// without one a retry could start a second saga.
absl::Status StartFailure(const absl::Status& status, bool has_idempotency_key);

// Fans committed events out to WatchSaga streams; polls the store for events that other
// replicas record.
class EventHub {
 public:
  using Callback = std::function<void(const std::vector<engine::Event>&)>;
  // `runs_here(id)`: whether this replica runs the saga, and so publishes every event of it as
  // it commits: such sagas are not polled, however long they stay quiet. Null: none is.
  EventHub(store::Store* store, absl::Duration poll_interval,
           std::function<bool(const std::string&)> runs_here = nullptr);
  ~EventHub();
  int64_t Subscribe(const std::string& saga_id, Callback cb);
  // Removes the subscription; when it returns, its callback is not running and will not run.
  // Must not be called from inside a callback.
  void Unsubscribe(int64_t token);
  // Removes the subscription soon, without waiting: callable from inside its callback, which
  // may still run a few times afterwards.
  void Detach(int64_t token);
  void Publish(const std::string& saga_id, const std::vector<engine::Event>& events);
  // Subscriptions now (WatchSaga streams and StartSaga calls waiting for the end).
  int64_t watching();

 private:
  void PollLoop();
  struct Sub;
  void RemoveDetachedLocked();
  void EraseLocked(std::map<int64_t, std::shared_ptr<Sub>>::iterator it);
  struct Sub {
    std::string saga_id;
    Callback cb;
    std::mutex cb_mu;  // held while cb runs; Unsubscribe waits for it
    bool active = true;
    std::atomic<int64_t> last_event_us{0};
    // The highest seq handed to cb: a poll reads only the events after it.
    std::atomic<int64_t> seen_seq{0};
  };
  store::Store* store_;
  absl::Duration poll_interval_;
  std::function<bool(const std::string&)> runs_here_;
  std::mutex mu_;
  std::map<int64_t, std::shared_ptr<Sub>> subs_;
  std::multimap<std::string, int64_t> by_saga_;
  int64_t next_token_ = 1;
  std::mutex detached_mu_;  // taken without mu_, even inside callbacks
  std::vector<int64_t> detached_;
  std::atomic<bool> stop_{false};
  std::thread poller_;
};

struct ServiceOptions {
  int db_workers = 8;
  absl::Duration watch_poll_interval = absl::Milliseconds(500);
};

// The answer side of a unary call: Finish sends the response (filled in by then) with
// `status`. Callable from any thread, once.
class Responder {
 public:
  virtual void Finish(const grpc::Status& status) = 0;
  // For a handler that may wait long before it finishes: `hook` runs once if the client
  // cancels the call or its deadline passes first (at once if that happened already), on any
  // thread. It must make Finish happen (or see that it has). Kept by StartSaga's calls only;
  // other methods' calls drop it.
  virtual void OnCancel(absl::AnyInvocable<void() &&> hook) = 0;

 protected:
  ~Responder() = default;
};

// Served with gRPC's completion-queue API: Register before the server is built, Start once it
// runs, with the queue whose events sagad's own threads take (saga::rpc::CqRunner). Each call
// is handled on the queue's thread that read it; blocking database work goes to the service's
// worker threads.
class SagaService final {
 public:
  SagaService(ServiceOptions options, store::Store* store, runtime::DefinitionRegistry* registry,
              runtime::Runtime* runtime);
  ~SagaService();

  void Register(grpc::ServerBuilder& builder);
  // Accepts calls from now on: one call of each method is requested at a time, and the next
  // one as soon as it arrives. `cq` must be a queue of the server that Register was given to.
  void Start(grpc::ServerCompletionQueue* cq);

  // Stops serving new work (StartSaga answers UNAVAILABLE).
  void SetDraining() { draining_ = true; }
  // After the server's Shutdown, before the queue's: from now on no operation is started on
  // the queue (gRPC aborts on one started while the queue drains). Calls still unanswered are
  // dropped: the server has cancelled them already.
  void Shutdown();
  // Runs `start`, which starts one gRPC operation on the queue, unless Shutdown has run; says
  // whether it ran.
  bool StartOp(absl::FunctionRef<void()> start);

  EventHub& hub() { return hub_; }

  // The handlers, one per method: `request` and `response` live until `responder` finishes.
  void RegisterDefinition(Responder* reactor, const saga::v1::RegisterDefinitionRequest* request,
                          saga::v1::RegisterDefinitionResponse* response);
  void GetDefinition(Responder* reactor, const saga::v1::GetDefinitionRequest* request,
                     saga::v1::DefinitionInfo* response);
  void ListDefinitions(Responder* reactor, const saga::v1::ListDefinitionsRequest* request,
                       saga::v1::ListDefinitionsResponse* response);
  void StartSaga(Responder* reactor, const saga::v1::StartSagaRequest* request,
                 saga::v1::StartSagaResponse* response);
  void GetSaga(Responder* reactor, const saga::v1::GetSagaRequest* request,
               saga::v1::Saga* response);
  void ListSagas(Responder* reactor, const saga::v1::ListSagasRequest* request,
                 saga::v1::ListSagasResponse* response);
  void AbortSaga(Responder* reactor, const saga::v1::AbortSagaRequest* request,
                 saga::v1::AbortSagaResponse* response);
  void RetrySaga(Responder* reactor, const saga::v1::RetrySagaRequest* request,
                 saga::v1::RetrySagaResponse* response);

  saga::v1::SagaOrchestrator::AsyncService* async_service() { return &async_; }

  // Request logic, callable without a server (blocking).
  absl::Status DoRegister(const saga::v1::RegisterDefinitionRequest& request,
                          saga::v1::RegisterDefinitionResponse* response);
  absl::Status DoGetSaga(const saga::v1::GetSagaRequest& request, saga::v1::Saga* response);

  store::Store* store() { return store_; }
  runtime::DefinitionRegistry* registry() { return registry_; }

 private:
  class WatchCall;
  void Start(runtime::DefinitionPtr def, nlohmann::json input,
             const saga::v1::StartSagaRequest* request, Responder* reactor,
             saga::v1::StartSagaResponse* response);
  void AwaitEnd(const std::string& saga_id, bool check_store, Responder* reactor,
                saga::v1::StartSagaResponse* response);

  saga::v1::SagaOrchestrator::AsyncService async_;
  ServiceOptions options_;
  store::Store* store_;
  runtime::DefinitionRegistry* registry_;
  runtime::Runtime* runtime_;
  std::atomic<bool> draining_{false};
  absl::Mutex ops_mu_;  // shared while an operation starts, exclusive to close
  bool closed_ ABSL_GUARDED_BY(ops_mu_) = false;
  EventHub hub_;
  runtime::Executor db_;
};

// Maps an absl::Status to a grpc::Status with the same code and message.
grpc::Status ToGrpcStatus(const absl::Status& status);

// Fills a Saga message's step list and status from a row and its history.
void FillSaga(const store::SagaRow& row, const definition::Definition* def,
              const std::vector<engine::Event>& events, bool include_history, saga::v1::Saga* out);
void FillEvent(const std::string& saga_id, const engine::Event& event,
               const definition::Definition* def, engine::SagaStatus status_after,
               saga::v1::SagaEvent* out);

}  // namespace saga::api
