#include "orchestrator/server/server.h"

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"
#include "orchestrator/api/service.h"
#include "orchestrator/common/failure_log.h"
#include "orchestrator/common/status_macros.h"
#include "orchestrator/definition/loader.h"
#include "orchestrator/invoke/grpc/grpc_invoker.h"
#include "orchestrator/rpc/completion_queue.h"
#include "orchestrator/runtime/registry.h"
#include "orchestrator/runtime/runtime.h"
#include "orchestrator/server/health_service.h"
#include "orchestrator/server/ops_metrics.h"
#include "orchestrator/server/reflection_service.h"
#include "orchestrator/store/pg/pg_listener.h"
#include "orchestrator/store/pg/pg_store.h"
#include "spdlog/spdlog.h"

namespace saga::server {
namespace {

std::string DefaultOwnerId() {
  char host[256] = {0};
  gethostname(host, sizeof(host) - 1);
  return absl::StrCat(host, "-", getpid(), "-", runtime::NewUuid().substr(0, 8));
}

}  // namespace

std::string_view Version() {
#ifdef SAGA_VERSION
  return SAGA_VERSION;
#else
  return "0.0.0";
#endif
}

int Server::metrics_port() const { return metrics_http_ ? metrics_http_->port() : 0; }

absl::Status LoadDefinitionsDir(runtime::DefinitionRegistry* registry, const std::string& dir) {
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) {
    return absl::InvalidArgumentError(absl::StrCat("definitions folder '", dir, "' not found"));
  }
  std::vector<std::filesystem::path> files;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    const auto ext = entry.path().extension().string();
    if (entry.is_regular_file() && (ext == ".yaml" || ext == ".yml" || ext == ".json")) {
      files.push_back(entry.path());
    }
  }
  std::sort(files.begin(), files.end());
  for (const auto& path : files) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream text;
    text << in.rdbuf();
    const std::string name = path.filename().string();
    SAGA_ASSIGN_OR_RETURN(saga::v1::SagaDefinition proto,
                          definition::ParseDefinitionText(text.str(), name));
    SAGA_ASSIGN_OR_RETURN(runtime::RegisterResult result, registry->Register(proto, {}, name, dir));
    spdlog::info("definition {} v{} {} from {}", result.definition->name,
                 result.definition->version, result.created ? "registered" : "unchanged", name);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Server>> Server::Start(const Config& config) {
  std::unique_ptr<Server> s(new Server());
  s->owner_id_ = config.owner_id.empty() ? DefaultOwnerId() : config.owner_id;
  s->metrics_ = std::make_unique<SagaMetrics>(Version());
  if (!config.metrics_listen.empty()) {  // first: a taken port fails before any other work
    absl::StatusOr<std::unique_ptr<MetricsHttpServer>> http =
        MetricsHttpServer::Start(config.metrics_listen, &s->metrics_->registry());
    if (http.ok()) {
      s->metrics_http_ = *std::move(http);
    } else if (config.metrics_optional) {
      spdlog::error("{}; serving without metrics (set --metrics-listen to choose an address)",
                    http.status().ToString());
    } else {
      return http.status();
    }
  }

  store::pg::PgStoreOptions store_options;
  store_options.url = config.database_url;
  store_options.pool_size = config.db_pool_size;
  store_options.committers = config.committers;
  SAGA_ASSIGN_OR_RETURN(s->store_, store::pg::PgStore::Create(store_options));
  s->metrics_->ObserveStore(s->store_.get());

  // The server's completion queue comes first: the invoker's calls complete on it too.
  ::grpc::ServerBuilder builder;
  s->cq_ = builder.AddCompletionQueue();

  invoke::grpc::GrpcInvokerOptions invoker_options;
  invoker_options.max_receive_message_bytes = config.max_message_bytes;
  invoker_options.completion_queue = s->cq_.get();
  s->invoker_ = invoke::grpc::GrpcInvoker::Create(invoker_options);

  s->registry_ = std::make_unique<runtime::DefinitionRegistry>(s->store_.get(), config.proto_path);
  if (!config.definitions_dir.empty()) {
    SAGA_RETURN_IF_ERROR(LoadDefinitionsDir(s->registry_.get(), config.definitions_dir));
  }

  runtime::RuntimeOptions runtime_options;
  runtime_options.owner_id = s->owner_id_;
  runtime_options.lease = config.lease;
  runtime_options.renew_interval = config.renew_interval;
  runtime_options.poll_interval = config.poll_interval;
  runtime_options.max_active = config.max_active;
  runtime_options.workers = config.workers;
  s->runtime_ =
      std::make_unique<runtime::Runtime>(runtime_options, s->store_.get(), s->invoker_.get(),
                                         s->registry_.get(), common::RealClock::Get());
  s->runtime_->SetObserver(s->metrics_.get());
  s->metrics_->ObserveRuntime(s->runtime_.get());

  api::ServiceOptions service_options;
  service_options.db_workers = config.api_workers;
  s->service_ = std::make_unique<api::SagaService>(service_options, s->store_.get(),
                                                   s->registry_.get(), s->runtime_.get());
  api::SagaService* service = s->service_.get();
  s->metrics_->ObserveWatchers([service] { return service->hub().watching(); });
  s->runtime_->SetEventListener(
      [service](const std::string& id, const std::vector<engine::Event>& events) {
        service->hub().Publish(id, events);
      });

  // Every service on the completion queue: none of gRPC's callback API (the built-in health
  // service) or sync API (the reflection plugin), whose threads would read the queue's events
  // first and pass them on.
  s->health_ = std::make_unique<HealthService>();
  s->health_->SetServiceNames({std::string(saga::v1::SagaOrchestrator::service_full_name())});
  s->reflection_ = std::make_unique<ReflectionService>(std::vector<std::string>{
      saga::v1::SagaOrchestrator::service_full_name(), "grpc.health.v1.Health",
      "grpc.reflection.v1alpha.ServerReflection", "grpc.reflection.v1.ServerReflection"});
  s->health_->Register(builder);
  s->reflection_->Register(builder);
  builder.AddListeningPort(config.listen, ::grpc::InsecureServerCredentials(), &s->port_);
  builder.SetMaxReceiveMessageSize(config.max_message_bytes);
  s->service_->Register(builder);
  std::vector<std::unique_ptr<::grpc::experimental::ServerInterceptorFactoryInterface>> creators;
  creators.push_back(s->metrics_->NewInterceptorFactory());
  builder.experimental().SetInterceptorCreators(std::move(creators));
  s->grpc_server_ = builder.BuildAndStart();
  if (s->grpc_server_ == nullptr || s->port_ == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", config.listen));
  }
  s->service_->Start(s->cq_.get());
  s->health_->Start(s->cq_.get());
  s->reflection_->Start(s->cq_.get());
  s->cq_runner_ = std::make_unique<rpc::CqRunner>(s->cq_.get(), config.rpc_threads, "sagad-rpc");
  s->cq_runner_->Start();
  s->runtime_->Start();
  s->serving_ = true;
  s->health_->SetServing(true);

  absl::StatusOr<std::unique_ptr<store::pg::PgListener>> listener =
      store::pg::PgListener::Create(config.database_url, "saga_wake");
  if (listener.ok()) {
    s->listener_ = *std::move(listener);
    Server* raw = s.get();
    s->listener_thread_ = std::thread([raw] {
      raw->listener_->Run(
          [raw](const std::string& payload) {
            if (payload.empty()) {
              raw->runtime_->Wake();
            } else {
              raw->runtime_->Poke(payload);
            }
          },
          raw->stop_);
    });
  } else {
    spdlog::warn("LISTEN unavailable, relying on polling: {}", listener.status().ToString());
  }
  s->health_thread_ = std::thread([raw = s.get()] { raw->HealthLoop(); });
  if (config.retention > absl::ZeroDuration()) {
    s->purge_thread_ =
        std::thread([raw = s.get(), retention = config.retention,
                     interval = config.purge_interval] { raw->PurgeLoop(retention, interval); });
  }
  if (s->metrics_http_ != nullptr) {
    spdlog::info("sagad {} ({}) serving gRPC on port {}, metrics on port {} (/metrics)", Version(),
                 s->owner_id_, s->port_, s->metrics_http_->port());
  } else {
    spdlog::info("sagad {} ({}) serving gRPC on port {}", Version(), s->owner_id_, s->port_);
  }
  return s;
}

bool Server::SleepUnlessStopped(absl::Duration d) {
  const absl::Time until = absl::Now() + d;
  for (absl::Time now = absl::Now(); now < until && !stop_.load(); now = absl::Now()) {
    absl::SleepFor(std::min(absl::Milliseconds(100), until - now));
  }
  return !stop_.load();
}

void Server::HealthLoop() {
  bool healthy = true;
  while (SleepUnlessStopped(absl::Seconds(1))) {
    const bool ok = store_->Ping().ok();
    if (ok != healthy) {
      healthy = ok;
      spdlog::warn("database {}", ok ? "reachable again: SERVING" : "unreachable: NOT_SERVING");
      if (serving_.load()) health_->SetServing(ok);
    }
  }
}

void Server::PurgeLoop(absl::Duration retention, absl::Duration interval) {
  // A round deletes batches until one comes back short or a quarter of the interval has
  // passed, so that a large backlog (a first start with a short retention) is worked off over
  // several rounds instead of in one long burst of deletes.
  constexpr int kBatch = 1000;
  common::FailureLog failure_log(absl::Minutes(10));
  while (SleepUnlessStopped(interval)) {
    const absl::Time round_end = absl::Now() + interval / 4;
    store::PurgeResult round;
    absl::Status status;
    while (!stop_.load()) {
      absl::StatusOr<store::PurgeResult> batch = store_->PurgeFinished(retention, kBatch);
      if (!batch.ok()) {
        status = batch.status();
        break;
      }
      round.sagas += batch->sagas;
      round.events += batch->events;
      if (batch->sagas < kBatch || absl::Now() >= round_end) break;
    }
    if (round.sagas > 0) {
      spdlog::info("deleted {} saga(s) that ended more than {} ago, and their {} event(s)",
                   round.sagas, absl::FormatDuration(retention), round.events);
    }
    if (!status.ok()) {
      if (const int64_t n = failure_log.Failed(absl::Now()); n > 0) {
        spdlog::warn("deleting finished sagas failed ({} time(s) since the last message): {}", n,
                     status.ToString());
      }
    } else if (const int64_t n = failure_log.Succeeded(); n > 0) {
      spdlog::info("deleting finished sagas works again after {} failed attempt(s)", n);
    }
  }
}

void Server::Shutdown(absl::Duration drain) {
  if (shut_down_.exchange(true)) return;
  // Null checks: a Start() that failed half-way destroys a partly built server.
  if (grpc_server_ != nullptr) {
    spdlog::info("sagad draining (up to {}s)", absl::ToDoubleSeconds(drain));
  }
  serving_ = false;
  if (health_ != nullptr) health_->SetServing(false);
  if (service_ != nullptr) service_->SetDraining();
  if (runtime_ != nullptr) runtime_->Stop(drain);
  stop_ = true;
  if (health_thread_.joinable()) health_thread_.join();
  if (purge_thread_.joinable()) purge_thread_.join();
  if (listener_thread_.joinable()) listener_thread_.join();
  // Open health watches and reflection streams would hold the server's Shutdown until its
  // deadline.
  if (health_ != nullptr) health_->Shutdown();
  if (reflection_ != nullptr) reflection_->Shutdown();
  if (grpc_server_ != nullptr) {
    grpc_server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  }
  // The queue's last events: no more answers, participant calls still in flight are
  // cancelled, then the queue drains (every call not yet arrived completes with ok = false) and
  // its threads end.
  if (service_ != nullptr) service_->Shutdown();
  if (invoker_ != nullptr) invoker_->Shutdown();
  if (cq_runner_ != nullptr) cq_runner_->ShutdownAndJoin();
  if (store_ != nullptr) store_->Shutdown();
  if (metrics_http_ != nullptr) metrics_http_->Stop();  // its metrics read the store and runtime
  if (grpc_server_ != nullptr) spdlog::info("sagad stopped");
  {
    std::lock_guard<std::mutex> lock(done_mu_);
    done_ = true;
  }
  done_cv_.notify_all();
}

void Server::Wait() {
  std::unique_lock<std::mutex> lock(done_mu_);
  done_cv_.wait(lock, [this] { return done_; });
}

Server::~Server() { Shutdown(absl::ZeroDuration()); }

}  // namespace saga::server
