// Helpers for the operations tests: running the real sagad binary as a child process, gRPC
// health checks, and scraping and parsing the Prometheus text format.
// TESTONLY. Not thread-safe (one test thread).
#pragma once

#include <sys/types.h>

#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "tests/support/net.h"  // FreeLoopbackPort, ListeningLoopbackSocket

namespace saga::testing {

// A child sagad (SAGAD_PATH) with stdout and stderr appended to `log_path`.
class SagadProcess {
 public:
  SagadProcess(std::vector<std::string> args, std::string log_path,
               std::vector<std::pair<std::string, std::string>> env = {});
  // Kills the child (SIGKILL) if it still runs.
  ~SagadProcess();
  SagadProcess(const SagadProcess&) = delete;
  SagadProcess& operator=(const SagadProcess&) = delete;

  pid_t pid() const { return pid_; }
  void Signal(int sig);
  // The exit code (128 + signal if killed by one), or nullopt if it is still running after
  // `timeout`.
  std::optional<int> WaitExit(absl::Duration timeout);
  bool running() const { return pid_ > 0 && !exit_code_.has_value(); }
  std::string Log() const;

 private:
  pid_t pid_ = -1;
  std::string log_path_;
  std::optional<int> exit_code_;
};

// Runs sagad to completion with `args` and extra environment variables; captures stdout and
// stderr separately.
struct RunResult {
  int exit_code = -1;
  std::string out;
  std::string err;
};
RunResult RunSagad(const std::vector<std::string>& args,
                   const std::vector<std::pair<std::string, std::string>>& env = {});

// grpc.health.v1.Health/Check("") against `address`: "SERVING", "NOT_SERVING", or the error.
std::string HealthStatus(const std::string& address, absl::Duration timeout = absl::Seconds(1));
// Polls HealthStatus until it is SERVING.
bool WaitServing(const std::string& address, absl::Duration timeout);

// GET http://127.0.0.1:<port>/metrics.
absl::StatusOr<std::string> Scrape(int port);

// Prometheus text format: sample key -> value. Keys are canonical: name{a="x",b="y"} with the
// labels sorted by name (no braces without labels). INVALID_ARGUMENT for a malformed line or a
// sample without a preceding # TYPE.
absl::StatusOr<std::map<std::string, double>> ParsePrometheusText(const std::string& text);
std::string SampleKey(const std::string& name,
                      std::vector<std::pair<std::string, std::string>> labels = {});

// True if a process other than this one has `needle` in its command line.
bool ProcessWithArgumentExists(const std::string& needle);

}  // namespace saga::testing
