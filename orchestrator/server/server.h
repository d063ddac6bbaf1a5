// The composition root: builds the concrete store (PostgreSQL), invoker (gRPC), registry,
// runtime and API service from a Config, and serves them. The only code that knows the
// concrete implementations; integration tests build the server through it too.
#pragma once

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace grpc {
class Server;
class ServerCompletionQueue;
}  // namespace grpc

namespace saga::rpc {
class CqRunner;
}

namespace saga::store::pg {
class PgStore;
class PgListener;
}  // namespace saga::store::pg

namespace saga::invoke::grpc {
class GrpcInvoker;
}

namespace saga::runtime {
class DefinitionRegistry;
class Runtime;
}  // namespace saga::runtime

namespace saga::api {
class SagaService;
}

namespace saga::server {

struct Config {
  std::string listen = "0.0.0.0:50051";
  std::string database_url;
  std::string definitions_dir;
  std::vector<std::string> proto_path;
  std::string owner_id;  // empty: <hostname>-<pid>-<random>
  absl::Duration lease = absl::Seconds(10);
  absl::Duration renew_interval = absl::Seconds(3);
  absl::Duration poll_interval = absl::Seconds(1);
  absl::Duration drain_timeout = absl::Seconds(20);
  int db_pool_size = 8;
  int committers = 2;
  int workers = 2;
  // Threads taking the gRPC completion queue's events: API calls and participants' replies.
  int rpc_threads = 1;
  int api_workers = 8;
  int max_active = 20000;
  int max_message_bytes = 4 << 20;
  // Sagas that ended COMPLETED or COMPENSATED longer ago than this are deleted with their
  // events (their idempotency keys can then start new sagas); FAILED sagas are kept. Zero
  // keeps every saga. Checked every purge_interval, by every replica.
  absl::Duration retention = absl::Hours(30 * 24);
  absl::Duration purge_interval = absl::Minutes(1);
  // Prometheus metrics over HTTP ("host:port", port 0 picks one; see metrics_port()). Empty:
  // no endpoint (the metrics are still kept). sagad's flag defaults to "0.0.0.0:9090".
  std::string metrics_listen;
  // When the metrics address cannot be bound: false fails Start (UNAVAILABLE); true logs an
  // error and serves without the endpoint (sagad does so for its default address only).
  bool metrics_optional = false;
};

// sagad's version (the CMake project version).
std::string_view Version();

class SagaMetrics;
class MetricsHttpServer;
class HealthService;
class ReflectionService;

class Server {
 public:
  // Connects to the database (applying migrations), registers the definitions folder, and
  // starts serving. INVALID_ARGUMENT for a bad definition file or metrics address, UNAVAILABLE
  // when the database cannot be reached or an address cannot be bound.
  static absl::StatusOr<std::unique_ptr<Server>> Start(const Config& config);
  ~Server();

  // The port actually bound (useful with ":0").
  int port() const { return port_; }
  std::string address() const { return "localhost:" + std::to_string(port_); }
  const std::string& owner_id() const { return owner_id_; }
  // The port of the metrics endpoint; 0 when disabled.
  int metrics_port() const;
  SagaMetrics* metrics() { return metrics_.get(); }

  // Drains (health NOT_SERVING, no new starts, calls in flight finish up to `drain`), gives up
  // the leases and stops. Idempotent.
  void Shutdown(absl::Duration drain);
  // Blocks until Shutdown has completed.
  void Wait();

  runtime::Runtime* runtime() { return runtime_.get(); }
  store::pg::PgStore* store() { return store_.get(); }

 private:
  Server() = default;
  // Sleeps `d` in slices of at most 100 ms; false as soon as stop_ is set.
  bool SleepUnlessStopped(absl::Duration d);
  void HealthLoop();
  // Deletes finished sagas past the retention, every purge_interval, until stop_.
  void PurgeLoop(absl::Duration retention, absl::Duration interval);

  std::string owner_id_;
  int port_ = 0;
  // Declared first: outlives the runtime (its observer) and the gRPC server (interceptors).
  std::unique_ptr<SagaMetrics> metrics_;
  std::unique_ptr<MetricsHttpServer> metrics_http_;
  // Before the gRPC server: destroyed after it. The API's calls and the participants' replies
  // complete on it.
  std::unique_ptr<::grpc::ServerCompletionQueue> cq_;
  std::unique_ptr<store::pg::PgStore> store_;
  std::unique_ptr<invoke::grpc::GrpcInvoker> invoker_;
  std::unique_ptr<runtime::DefinitionRegistry> registry_;
  std::unique_ptr<runtime::Runtime> runtime_;
  std::unique_ptr<api::SagaService> service_;
  std::unique_ptr<HealthService> health_;
  std::unique_ptr<ReflectionService> reflection_;
  std::unique_ptr<::grpc::Server> grpc_server_;
  std::unique_ptr<rpc::CqRunner> cq_runner_;
  std::unique_ptr<store::pg::PgListener> listener_;
  std::thread listener_thread_;
  std::thread health_thread_;
  std::thread purge_thread_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> serving_{false};
  std::atomic<bool> shut_down_{false};
  std::mutex done_mu_;
  std::condition_variable done_cv_;
  bool done_ = false;
};

// Registers every *.yaml, *.yml and *.json file of `dir` through `registry`.
absl::Status LoadDefinitionsDir(runtime::DefinitionRegistry* registry, const std::string& dir);

}  // namespace saga::server
