#include "orchestrator/server/ops_metrics.h"

#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "httplib.h"
#include "orchestrator/store/pg/pg_store.h"
#include "spdlog/spdlog.h"

namespace saga::server {
namespace {

using common::ExponentialBuckets;

std::vector<double> SagaDurationBuckets() {
  return {0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600};
}

std::vector<double> StepDurationBuckets() {
  return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
}

std::string StatusLabel(engine::SagaStatus status) {
  return absl::AsciiStrToLower(std::string(engine::SagaStatusName(status)));
}

std::string_view ResultLabel(runtime::RuntimeObserver::AttemptResult result) {
  switch (result) {
    case runtime::RuntimeObserver::AttemptResult::kOk:
      return "ok";
    case runtime::RuntimeObserver::AttemptResult::kRetryable:
      return "retryable";
    case runtime::RuntimeObserver::AttemptResult::kBusinessError:
      return "business_error";
  }
  return "unknown";
}

class HandledInterceptor final : public grpc::experimental::Interceptor {
 public:
  HandledInterceptor(std::string method, common::CounterFamily* handled)
      : method_(std::move(method)), handled_(handled) {}

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            grpc::experimental::InterceptionHookPoints::PRE_SEND_STATUS)) {
      const grpc::Status status = methods->GetSendStatus();
      const std::string code =
          absl::StatusCodeToString(static_cast<absl::StatusCode>(status.error_code()));
      handled_->WithLabels({method_, code}).Increment();
    }
    methods->Proceed();
  }

 private:
  const std::string method_;
  common::CounterFamily* handled_;
};

class HandledInterceptorFactory final
    : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit HandledInterceptorFactory(common::CounterFamily* handled) : handled_(handled) {}

  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    return new HandledInterceptor(GrpcMethodLabel(info->method() ? info->method() : ""), handled_);
  }

 private:
  common::CounterFamily* handled_;
};

}  // namespace

std::string GrpcMethodLabel(std::string_view path) {
  if (!path.empty() && path.front() == '/') path.remove_prefix(1);
  for (std::string_view service :
       {"saga.v1.SagaOrchestrator/", "grpc.health.v1.Health/",
        "grpc.reflection.v1alpha.ServerReflection/", "grpc.reflection.v1.ServerReflection/"}) {
    if (path.size() > service.size() && path.substr(0, service.size()) == service &&
        path.size() <= service.size() + 64) {
      return std::string(path);
    }
  }
  return "unknown";
}

SagaMetrics::SagaMetrics(std::string_view version)
    : started_(registry_.AddCounter("saga_started_total", "Sagas started by this replica.",
                                    {"definition"})),
      finished_(registry_.AddCounter(
          "saga_finished_total",
          "Sagas that ended on this replica, by status (completed, compensated, failed).",
          {"definition", "status"})),
      duration_(registry_.AddHistogram("saga_duration_seconds",
                                       "Time from a saga's creation to its end.",
                                       {"definition", "status"}, SagaDurationBuckets())),
      step_duration_(registry_.AddHistogram("saga_step_duration_seconds",
                                            "Latency of forward step attempts (participant calls).",
                                            {"definition", "step"}, StepDurationBuckets())),
      attempts_(
          registry_.AddCounter("saga_step_attempts_total",
                               "Forward step attempts by result (ok, retryable, business_error).",
                               {"definition", "step", "result"})),
      compensations_(registry_.AddCounter("saga_compensations_total", "Step compensations begun.",
                                          {"definition", "step"})),
      takeovers_(registry_.AddCounter(
          "saga_lease_takeovers_total",
          "Sagas claimed after their lease expired or was released (another replica's, or "
          "this replica's previous run).")),
      grpc_handled_(registry_.AddCounter("saga_grpc_server_handled_total",
                                         "RPCs completed by the server, by method and code.",
                                         {"grpc_method", "grpc_code"})) {
  registry_.AddGauge("saga_build_info", "sagad's version; the value is 1.", {"version"})
      .WithLabels({version})
      .Set(1);
}

void SagaMetrics::ObserveStore(const store::pg::PgStore* store) {
  registry_.AddCounterFunction(
      "saga_fenced_writes_total",
      "Writes refused because another replica owns the saga now (owner, fence or sequence).",
      [store] { return static_cast<double>(store->fenced_writes()); });
  registry_.AddCounterFunction(
      "saga_purged_total",
      "Finished sagas deleted by this replica after the retention period (--retention).",
      [store] { return static_cast<double>(store->sagas_purged()); });
  registry_.AddGaugeFunction("saga_db_pool_in_use", "Database connections lent out.",
                             [store] { return static_cast<double>(store->pool_in_use()); });
  registry_.AddCounterFunction("saga_db_commits_total", "Group-commit transactions committed.",
                               [store] { return static_cast<double>(store->batches_committed()); });
  registry_.AddCounterFunction(
      "saga_db_committed_ops_total",
      "Writes (saga starts and transitions) in committed group-commit transactions.",
      [store] { return static_cast<double>(store->ops_committed()); });
}

void SagaMetrics::ObserveRuntime(const runtime::Runtime* runtime) {
  registry_.AddGaugeFunction("saga_running", "Sagas this replica holds (running or compensating).",
                             [runtime] { return static_cast<double>(runtime->stats().active); });
}

void SagaMetrics::ObserveWatchers(std::function<int64_t()> count) {
  registry_.AddGaugeFunction(
      "saga_watchers",
      "WatchSaga streams and StartSaga calls waiting for the end, following sagas now.",
      [count = std::move(count)] { return static_cast<double>(count()); });
}

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
SagaMetrics::NewInterceptorFactory() {
  return std::make_unique<HandledInterceptorFactory>(&grpc_handled_);
}

void SagaMetrics::OnSagaStarted(const definition::Definition& def) {
  started_.WithLabels({def.name}).Increment();
}

void SagaMetrics::OnSagaFinished(const definition::Definition& def, engine::SagaStatus status,
                                 absl::Duration age) {
  const std::string label = StatusLabel(status);
  finished_.WithLabels({def.name, label}).Increment();
  duration_.WithLabels({def.name, label}).Observe(std::max(0.0, absl::ToDoubleSeconds(age)));
}

void SagaMetrics::OnAttemptFinished(const definition::Definition& def,
                                    const definition::StepSpec& step, engine::CallKind call,
                                    AttemptResult result, absl::Duration latency) {
  if (call != engine::CallKind::kAction) return;
  attempts_.WithLabels({def.name, step.name, ResultLabel(result)}).Increment();
  step_duration_.WithLabels({def.name, step.name}).Observe(absl::ToDoubleSeconds(latency));
}

void SagaMetrics::OnCompensationStarted(const definition::Definition& def,
                                        const definition::StepSpec& step) {
  compensations_.WithLabels({def.name, step.name}).Increment();
}

void SagaMetrics::OnTakeovers(int count) {
  takeovers_.Get().Increment(static_cast<uint64_t>(count));
}

absl::Status SplitHostPort(std::string_view address_view, std::string* host, int* port) {
  const absl::string_view address(address_view.data(), address_view.size());
  const size_t colon = address.rfind(':');
  if (colon == absl::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", address, "' is not host:port (e.g. 127.0.0.1:9090)"));
  }
  absl::string_view h = address.substr(0, colon);
  const absl::string_view p = address.substr(colon + 1);
  if (h.size() >= 2 && h.front() == '[' && h.back() == ']') h = h.substr(1, h.size() - 2);
  int value = 0;
  if (!absl::SimpleAtoi(p, &value) || value < 0 || value > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", address, "': the port must be a number in 0..65535"));
  }
  if (h.find(':') != absl::string_view::npos && address.front() != '[') {
    return absl::InvalidArgumentError(
        absl::StrCat("'", address, "': write IPv6 hosts in brackets, e.g. [::1]:9090"));
  }
  *host = h.empty() ? "0.0.0.0" : std::string(h);
  *port = value;
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<MetricsHttpServer>> MetricsHttpServer::Start(
    const std::string& listen, const common::MetricsRegistry* registry) {
  std::string host;
  int port = 0;
  if (absl::Status s = SplitHostPort(listen, &host, &port); !s.ok()) return s;
  std::unique_ptr<MetricsHttpServer> server(new MetricsHttpServer());
  server->http_ = std::make_unique<httplib::Server>();
  httplib::Server& http = *server->http_;
  http.new_task_queue = [] { return new httplib::ThreadPool(2); };
  http.Get("/metrics", [registry](const httplib::Request&, httplib::Response& res) {
    res.set_content(registry->TextExposition(), std::string(common::MetricsRegistry::kContentType));
  });
  http.Get("/", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("sagad: metrics at /metrics\n", "text/plain; charset=utf-8");
  });
  if (port == 0) {
    port = http.bind_to_any_port(host);
    if (port <= 0) {
      return absl::UnavailableError(absl::StrCat("cannot listen for metrics on ", listen));
    }
  } else if (!http.bind_to_port(host, port)) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen for metrics on ", listen, " (address in use or not local?)"));
  }
  server->port_ = port;
  server->thread_ = std::thread([raw = server.get()] { raw->http_->listen_after_bind(); });
  // stop() is a no-op until the loop runs: wait for it so that Stop() cannot miss it.
  for (int i = 0; i < 5000 && !http.is_running(); ++i) absl::SleepFor(absl::Milliseconds(1));
  return server;
}

void MetricsHttpServer::Stop() {
  if (http_ == nullptr) return;
  http_->stop();
  if (thread_.joinable()) thread_.join();
  http_.reset();
}

MetricsHttpServer::~MetricsHttpServer() { Stop(); }

}  // namespace saga::server
