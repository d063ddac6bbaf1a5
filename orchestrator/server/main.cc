// sagad: the saga orchestrator daemon.
#include <signal.h>

#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <thread>

#include "CLI/CLI.hpp"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "orchestrator/server/server.h"
#include "spdlog/spdlog.h"

namespace {

bool ParseDurationFlag(const std::string& text, absl::Duration* out) {
  return absl::ParseDuration(text, out) && *out >= absl::ZeroDuration();
}

}  // namespace

int main(int argc, char** argv) {
  saga::server::Config config;
  CLI::App app{"sagad: runs sagas across gRPC participant services, recorded in PostgreSQL"};
  std::string lease = "10s", poll = "1s", drain = "20s", database_url_file;
  app.add_option("--listen", config.listen, "gRPC listen address")
      ->envname("SAGA_LISTEN")
      ->capture_default_str();
  app.add_option("--database-url", config.database_url,
                 "PostgreSQL connection string (URI or key=value); empty uses PG* variables")
      ->envname("SAGA_DATABASE_URL");
  app.add_option("--database-url-file", database_url_file,
                 "file holding the connection string (for secrets)")
      ->envname("SAGA_DATABASE_URL_FILE");
  app.add_option("--definitions", config.definitions_dir,
                 "folder of workflow files (*.yaml, *.yml, *.json) registered at startup")
      ->envname("SAGA_DEFINITIONS");
  app.add_option("--proto-path", config.proto_path,
                 "folders searched for participants' .proto files (repeatable; SAGA_PROTO_PATH "
                 "separates them with ':')")
      ->envname("SAGA_PROTO_PATH")
      ->delimiter(':');
  app.add_option("--owner-id", config.owner_id, "replica identity (default host-pid-random)")
      ->envname("SAGA_OWNER_ID");
  app.add_option("--lease", lease, "saga lease duration")->envname("SAGA_LEASE")->capture_default_str();
  app.add_option("--poll-interval", poll, "how often due sagas are looked for")
      ->envname("SAGA_POLL_INTERVAL")
      ->capture_default_str();
  app.add_option("--drain-timeout", drain, "how long SIGTERM waits for calls in flight")
      ->envname("SAGA_DRAIN_TIMEOUT")
      ->capture_default_str();
  app.add_option("--db-pool-size", config.db_pool_size, "database connections for reads")
      ->envname("SAGA_DB_POOL_SIZE")
      ->capture_default_str();
  app.add_option("--committers", config.committers, "database connections that group-commit")
      ->envname("SAGA_COMMITTERS")
      ->capture_default_str();
  app.add_option("--workers", config.workers, "threads running saga decisions")
      ->envname("SAGA_WORKERS")
      ->capture_default_str();
  app.add_option("--max-active", config.max_active, "sagas held in memory at most")
      ->envname("SAGA_MAX_ACTIVE")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  if (!database_url_file.empty()) {
    std::ifstream in(database_url_file);
    if (!in) {
      std::cerr << "sagad: cannot read --database-url-file " << database_url_file << "\n";
      return 2;
    }
    std::stringstream ss;
    ss << in.rdbuf();
    config.database_url = std::string(absl::StripTrailingAsciiWhitespace(ss.str()));
  }
  if (!ParseDurationFlag(lease, &config.lease) || !ParseDurationFlag(poll, &config.poll_interval) ||
      !ParseDurationFlag(drain, &config.drain_timeout)) {
    std::cerr << "sagad: durations are written like 500ms, 10s or 1m\n";
    return 2;
  }
  config.renew_interval = config.lease / 3;

  // Signals are handled on a thread of our own: the first SIGTERM/SIGINT drains, a second one
  // exits at once.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  absl::StatusOr<std::unique_ptr<saga::server::Server>> server = saga::server::Server::Start(config);
  if (!server.ok()) {
    std::cerr << "sagad: " << server.status().message() << "\n";
    return 1;
  }
  saga::server::Server* raw = server->get();
  std::thread([raw, signals, drain = config.drain_timeout] {
    int sig = 0;
    sigwait(&signals, &sig);
    std::thread([raw, drain] { raw->Shutdown(drain); }).detach();
    sigwait(&signals, &sig);
    spdlog::warn("second signal: exiting now");
    std::_Exit(1);
  }).detach();
  raw->Wait();
  server->reset();
  return 0;
}
