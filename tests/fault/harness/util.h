// Small utilities of the fault harness: environment knobs, free ports, temp dirs, running
// commands (as the `postgres` user when we are root), and the local TCP ports of a process.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace saga::fault {

// Integer / double / string / duration from the environment, else `fallback`.
int64_t EnvInt(const char* name, int64_t fallback);
double EnvDouble(const char* name, double fallback);
std::string EnvString(const char* name, const std::string& fallback);
// SAGA_FAULT_QUICK=1: scenarios run at their quick size.
bool QuickMode();
// SAGA_FAULT_SEED, else a seed derived from the time (printed by every scenario).
uint64_t ScenarioSeed();

// A fresh directory under $TMPDIR (or /tmp), mode 0755.
absl::StatusOr<std::string> MakeTempDir(const std::string& prefix);
void RemoveTree(const std::string& path);

struct CommandResult {
  int exit_code = -1;  // -1: did not finish in time (killed)
  std::string output;  // stdout and stderr
};
// Runs argv (no shell) with a timeout. `as_postgres`: through `runuser -u postgres --` when
// the process is root (initdb and postgres refuse to run as root).
CommandResult RunCommand(const std::vector<std::string>& argv, absl::Duration timeout,
                         bool as_postgres = false);
bool IsRoot();

// The local ports of the TCP sockets open in process `pid` (from /proc/<pid>/fd and
// /proc/net/tcp{,6}).
std::set<int> LocalTcpPorts(pid_t pid);

// Resident set size of `pid` in KiB (0 if unknown).
int64_t RssKiB(pid_t pid);

// Percentile p (0..100) of `values` (sorted in place); 0 for none.
double Percentile(std::vector<double>& values, double p);

}  // namespace saga::fault
