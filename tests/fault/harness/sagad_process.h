// SagadProcess: one `sagad` replica as a child process (the binary named by SAGAD_PATH at build
// time, or $SAGA_FAULT_SAGAD), with its log in a file, so that scenarios can SIGKILL, SIGSTOP,
// SIGCONT and SIGTERM it. SAGA_CRASHPOINT is set for the child only.
#pragma once

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace saga::fault {

struct SagadOptions {
  std::string owner_id;      // also the PostgreSQL application_name of its connections
  int port = 0;              // 0: a free port
  std::string database_url;  // without application_name (added from owner_id)
  std::string definitions_dir;
  std::vector<std::string> proto_path;
  std::string lease = "4s";
  std::string poll_interval = "200ms";
  std::string drain_timeout = "20s";
  int db_pool_size = 8;
  std::string crashpoint;  // SAGA_CRASHPOINT of the child ("" none)
  std::string log_path;    // appended to
  std::vector<std::string> extra_args;
};

std::string SagadBinary();
// True if `sagad --help` lists `flag` (e.g. "--metrics-listen"); cached per flag.
bool SagadHasFlag(const std::string& flag);

class SagadProcess {
 public:
  // Forks and execs sagad, then waits (up to `ready_timeout`) until its health says SERVING.
  // The process is returned even if it died early (alive() tells); an error only if it could
  // not be started at all or never served while alive.
  static absl::StatusOr<std::unique_ptr<SagadProcess>> Spawn(
      const SagadOptions& options, absl::Duration ready_timeout = absl::Seconds(60));
  // SIGKILLs the process if it still runs.
  ~SagadProcess();
  SagadProcess(const SagadProcess&) = delete;
  SagadProcess& operator=(const SagadProcess&) = delete;

  pid_t pid() const { return pid_; }
  int port() const { return options_.port; }
  std::string address() const;
  const SagadOptions& options() const { return options_; }

  void Signal(int sig);
  // Waits for the process to exit; true with its wait status if it did within `timeout`.
  bool WaitExit(absl::Duration timeout, int* wait_status = nullptr);
  bool alive();
  // Health status via grpc.health.v1 ("SERVING", "NOT_SERVING", or the RPC error code name).
  std::string Health(absl::Duration deadline = absl::Milliseconds(500)) const;
  // Lines of the log file containing `needle`, from byte offset `from`.
  int CountLogLines(const std::string& needle, size_t from = 0) const;
  size_t LogSize() const;
  // The sum of the series of metric `name` on the replica's /metrics (sagad builds with
  // --metrics-listen; the harness binds it to a free loopback port). kUnavailable if the
  // binary has no metrics endpoint or it cannot be reached.
  absl::StatusOr<double> Metric(const std::string& name) const;
  int metrics_port() const { return metrics_port_; }

 private:
  SagadProcess() = default;
  SagadOptions options_;
  pid_t pid_ = -1;
  int metrics_port_ = 0;
  bool reaped_ = false;
  int wait_status_ = 0;
};

// grpc.health.v1 Check of `address` ("SERVING", "NOT_SERVING", or the error code name).
std::string HealthOf(const std::string& address, absl::Duration deadline);

}  // namespace saga::fault
