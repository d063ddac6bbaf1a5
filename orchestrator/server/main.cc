// sagad: the saga orchestrator daemon. `sagad --help` lists every setting; README "Operating
// sagad" describes logs, metrics, tracing and shutdown.
//
// Exit codes: 0 after a drain (SIGTERM/SIGINT) or for --help/--version/config print; 1 when
// startup fails or on a second signal; 2 for an invalid setting.
#include <pthread.h>
#include <signal.h>

#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "grpc/support/log.h"
#include "orchestrator/common/logging.h"
#include "orchestrator/server/config.h"
#include "orchestrator/server/dev_postgres.h"
#include "orchestrator/server/server.h"
#include "spdlog/spdlog.h"

namespace {

using saga::server::DaemonConfig;
using saga::server::DevPostgres;
using saga::server::Server;

// gRPC's own messages go through spdlog, so that every line of stderr has the chosen format.
void GprLogToSpdlog(gpr_log_func_args* args) {
  spdlog::level::level_enum level = spdlog::level::info;
  if (args->severity == GPR_LOG_SEVERITY_ERROR) level = spdlog::level::err;
  if (args->severity == GPR_LOG_SEVERITY_DEBUG) level = spdlog::level::debug;
  const char* file = args->file != nullptr ? args->file : "";
  if (const char* slash = std::strrchr(file, '/'); slash != nullptr) file = slash + 1;
  spdlog::log(level, "grpc: {} ({}:{})", args->message != nullptr ? args->message : "", file,
              args->line);
}

// What the signal thread and main() share.
struct Lifecycle {
  std::mutex mu;
  std::condition_variable cv;
  bool stop_requested = false;  // guarded by mu
  DevPostgres* dev = nullptr;   // guarded by mu: set while the dev PostgreSQL runs
};

}  // namespace

int main(int argc, char** argv) {
  // Debian's Abseil checks every Mutex acquisition for lock-order cycles unless told not to;
  // that graph upkeep costs a few percent of sagad's CPU under load.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  saga::server::ParsedArgs parsed = saga::server::ParseArgs(argc, argv, std::cout, std::cerr);
  if (parsed.action == saga::server::ParsedArgs::Action::kExit) return parsed.exit_code;
  DaemonConfig& config = parsed.config;
  if (parsed.action == saga::server::ParsedArgs::Action::kPrintConfig) {
    std::cout << saga::server::FormatConfig(config);
    return 0;
  }

  saga::common::InitLogging(*saga::common::ParseLogFormat(config.log_format),
                            *saga::common::ParseLogLevel(config.log_level));
  gpr_set_log_function(&GprLogToSpdlog);

  // Signals are blocked in every thread and handled by a thread of our own: the first
  // SIGTERM/SIGINT drains, a second one exits at once.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  auto life = std::make_shared<Lifecycle>();
  std::thread([life, signals] {
    int sig = 0;
    sigwait(&signals, &sig);
    spdlog::info("{}: draining; a second signal exits at once", strsignal(sig));
    {
      std::lock_guard<std::mutex> lock(life->mu);
      life->stop_requested = true;
    }
    life->cv.notify_all();
    sigwait(&signals, &sig);
    spdlog::warn("second signal ({}): exiting now", strsignal(sig));
    {
      std::lock_guard<std::mutex> lock(life->mu);
      if (life->dev != nullptr) life->dev->RequestStop();
    }
    std::_Exit(1);
  }).detach();

  std::unique_ptr<DevPostgres> dev;
  if (config.dev) {
    absl::StatusOr<std::unique_ptr<DevPostgres>> started = DevPostgres::Start(config.dev_data_dir);
    if (!started.ok()) {
      spdlog::error("sagad: {}", std::string(started.status().message()));
      return 1;
    }
    dev = *std::move(started);
    config.server.database_url = dev->url();
    std::lock_guard<std::mutex> lock(life->mu);
    life->dev = dev.get();
  }
  auto stop_dev = [&] {
    if (dev == nullptr) return;
    dev->Stop();
    std::lock_guard<std::mutex> lock(life->mu);
    life->dev = nullptr;
  };

  spdlog::info("sagad {} starting: listen {}, database {}, metrics {}, definitions {}",
               saga::server::Version(), config.server.listen,
               config.server.database_url.empty()
                   ? std::string("from PG* variables")
                   : saga::server::RedactConnectionString(config.server.database_url),
               config.server.metrics_listen.empty() ? "off" : config.server.metrics_listen,
               config.server.definitions_dir.empty() ? "none" : config.server.definitions_dir);
  absl::StatusOr<std::unique_ptr<Server>> server = Server::Start(config.server);
  if (!server.ok()) {
    spdlog::error("sagad: cannot start: {}", server.status().ToString());
    stop_dev();
    return 1;
  }
  {
    std::unique_lock<std::mutex> lock(life->mu);
    life->cv.wait(lock, [&] { return life->stop_requested; });
  }
  (*server)->Shutdown(config.server.drain_timeout);
  server->reset();
  stop_dev();
  spdlog::info("sagad exited");
  return 0;
}
