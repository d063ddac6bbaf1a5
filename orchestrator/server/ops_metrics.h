// sagad's Prometheus metrics: the metric set (SagaMetrics), fed by the runtime through the
// RuntimeObserver hook, by a gRPC server interceptor, and by values read at scrape time from the
// store and the runtime; and the HTTP endpoint that serves it (MetricsHttpServer, GET /metrics).
//
// Metrics (base units, no saga id labels):
//   saga_build_info{version}                              gauge, 1
//   saga_started_total{definition}                        sagas started by this replica
//   saga_finished_total{definition,status}                status: completed|compensated|failed
//   saga_running                                          sagas this replica holds now
//   saga_duration_seconds{definition,status}              creation to end (across restarts)
//   saga_step_duration_seconds{definition,step}           latency of forward attempts
//   saga_step_attempts_total{definition,step,result}      result: ok|retryable|business_error
//   saga_compensations_total{definition,step}             step compensations begun
//   saga_lease_takeovers_total                            claims of expired or released sagas
//   saga_fenced_writes_total                              writes refused: another owner/fence
//   saga_db_pool_in_use                                   database connections lent out
//   saga_db_commits_total                                 group-commit transactions
//   saga_db_committed_ops_total                           writes in them (ops / commits = batch)
//   saga_grpc_server_handled_total{grpc_method,grpc_code} RPCs finished, by method and code
//
// Thread-safety: SagaMetrics is thread-safe after construction (the Observe* calls belong to
// start-up); MetricsHttpServer serves on threads of its own.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "grpcpp/support/server_interceptor.h"
#include "orchestrator/common/metrics.h"
#include "orchestrator/runtime/runtime.h"

namespace httplib {
class Server;
}

namespace saga::store::pg {
class PgStore;
}

namespace saga::server {

class SagaMetrics final : public runtime::RuntimeObserver {
 public:
  explicit SagaMetrics(std::string_view version);

  // Adds the metrics read from `store` / `runtime` at scrape time. Each must outlive every
  // later TextExposition() call (stop the HTTP endpoint first).
  void ObserveStore(const store::pg::PgStore* store);
  void ObserveRuntime(const runtime::Runtime* runtime);
  // `count`: the WatchSaga streams and waiting StartSaga calls following sagas now.
  void ObserveWatchers(std::function<int64_t()> count);

  // For grpc::ServerBuilder::experimental().SetInterceptorCreators(). Counts every RPC's final
  // status in saga_grpc_server_handled_total. This object must outlive the server.
  std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> NewInterceptorFactory();

  common::MetricsRegistry& registry() { return registry_; }

  // runtime::RuntimeObserver
  void OnSagaStarted(const definition::Definition& def) override;
  void OnSagaFinished(const definition::Definition& def, engine::SagaStatus status,
                      absl::Duration age) override;
  void OnAttemptFinished(const definition::Definition& def, const definition::StepSpec& step,
                         engine::CallKind call, AttemptResult result,
                         absl::Duration latency) override;
  void OnCompensationStarted(const definition::Definition& def,
                             const definition::StepSpec& step) override;
  void OnTakeovers(int count) override;

 private:
  common::MetricsRegistry registry_;
  common::CounterFamily& started_;
  common::CounterFamily& finished_;
  common::HistogramFamily& duration_;
  common::HistogramFamily& step_duration_;
  common::CounterFamily& attempts_;
  common::CounterFamily& compensations_;
  common::CounterFamily& takeovers_;
  common::CounterFamily& grpc_handled_;
};

// The label of an RPC's method: "saga.v1.SagaOrchestrator/StartSaga" for the services sagad
// serves (its API, health, reflection), "unknown" for anything else (bounded cardinality).
std::string GrpcMethodLabel(std::string_view path);

// Serves GET /metrics (Prometheus text format) over HTTP with cpp-httplib.
class MetricsHttpServer {
 public:
  // `listen` is "host:port" ("[::1]:9090"; port 0 picks a free one). INVALID_ARGUMENT for a
  // malformed address, UNAVAILABLE if it cannot be bound. `registry` must outlive the server.
  static absl::StatusOr<std::unique_ptr<MetricsHttpServer>> Start(
      const std::string& listen, const common::MetricsRegistry* registry);
  ~MetricsHttpServer();
  MetricsHttpServer(const MetricsHttpServer&) = delete;
  MetricsHttpServer& operator=(const MetricsHttpServer&) = delete;

  int port() const { return port_; }
  // Stops serving and joins the thread. Idempotent.
  void Stop();

 private:
  MetricsHttpServer() = default;
  std::unique_ptr<httplib::Server> http_;
  std::thread thread_;
  int port_ = 0;
};

// Splits "host:port" / "[v6]:port" / ":port" (host 0.0.0.0). INVALID_ARGUMENT when malformed.
absl::Status SplitHostPort(std::string_view address, std::string* host, int* port);

}  // namespace saga::server
