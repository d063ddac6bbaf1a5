// Shared helpers of the benchmark tools (saga-bench, bench-participants-ceiling):
//   - CPU accounting per process tree from /proc (utime + stime of a process, of its live
//     descendants, and of its reaped children), of this process (getrusage) and of the machine
//     (/proc/stat);
//   - latency summaries (nearest-rank percentiles);
//   - a small HTTP client for the participant server's admin API.
// Linux only. Thread-compatible (no shared mutable state), except where noted.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "nlohmann/json.hpp"

namespace saga::bench {

// CPU seconds (user + system) of `pid`, its live descendants, and the children it has reaped
// (cutime + cstime). nullopt if `pid` does not exist.
std::optional<double> ProcessTreeCpuSeconds(pid_t pid);

// Context switches (voluntary + involuntary) of every live thread of `pid` and of its live
// descendants' threads. Threads that have exited are not counted.
uint64_t ProcessTreeContextSwitches(pid_t pid);

// CPU seconds (user + system) of this process, all threads (getrusage RUSAGE_SELF).
double SelfCpuSeconds();

// The parent of `pid` (from /proc/<pid>/stat), or nullopt.
std::optional<pid_t> ParentPid(pid_t pid);

// The short command name of `pid` (/proc/<pid>/comm), or "".
std::string ProcessName(pid_t pid);

// Machine-wide CPU time from /proc/stat, in clock ticks.
struct MachineCpu {
  uint64_t busy = 0;   // user + nice + system + irq + softirq + steal
  uint64_t total = 0;  // busy + idle + iowait
  static MachineCpu Now();
};
// Percentage of the machine's CPU capacity used between two snapshots (0..100).
double BusyPercent(const MachineCpu& before, const MachineCpu& after);

// Seconds on a monotonic clock (for intervals).
double MonotonicSeconds();

struct LatencySummary {
  size_t count = 0;
  double mean_ms = 0;
  double p50_ms = 0;
  double p90_ms = 0;
  double p99_ms = 0;
  double max_ms = 0;
};
// Nearest-rank percentiles of `samples_ms` (sorted in place).
LatencySummary Summarize(std::vector<double>& samples_ms);

// Named processes whose CPU is measured between two snapshots, e.g. "sagad=1234".
class CpuMeter {
 public:
  // Adds a process tree. A name may be added several times (the trees are summed).
  void Add(const std::string& name, pid_t pid);
  // Parses "name=PID,name=PID"; false (and `error`) on a malformed entry.
  bool AddList(const std::string& list, std::string* error);
  bool empty() const { return pids_.empty(); }

  // CPU seconds per name now. A process that has exited counts as 0.
  std::map<std::string, double> Snapshot() const;
  // Context switches per name now (live threads only).
  std::map<std::string, uint64_t> ContextSwitches() const;

 private:
  std::vector<std::pair<std::string, pid_t>> pids_;
};

// A client of the participant server's admin API (bench-participants, or the Node.js
// reference server): POST /config, POST /reset, GET /stats.
class AdminClient {
 public:
  // `base_url` like "http://localhost:50072".
  explicit AdminClient(const std::string& base_url);
  ~AdminClient();
  AdminClient(const AdminClient&) = delete;
  AdminClient& operator=(const AdminClient&) = delete;

  // POST `path_and_query`; returns the JSON answer, or nullopt and `error`.
  std::optional<nlohmann::json> Post(const std::string& path_and_query, std::string* error);
  // GET `path_and_query`; returns the JSON answer, or nullopt and `error`.
  std::optional<nlohmann::json> Get(const std::string& path_and_query, std::string* error);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Splits "a=1,b=2" into pairs; false on an entry without '='.
bool ParseKeyValueList(const std::string& text,
                       std::vector<std::pair<std::string, std::string>>* out);

}  // namespace saga::bench
