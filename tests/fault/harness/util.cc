#include "tests/fault/harness/util.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"

namespace saga::fault {

int64_t EnvInt(const char* name, int64_t fallback) {
  const char* v = std::getenv(name);
  int64_t out = 0;
  if (v != nullptr && absl::SimpleAtoi(v, &out)) return out;
  return fallback;
}

double EnvDouble(const char* name, double fallback) {
  const char* v = std::getenv(name);
  double out = 0;
  if (v != nullptr && absl::SimpleAtod(v, &out)) return out;
  return fallback;
}

std::string EnvString(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v == nullptr || *v == '\0' ? fallback : std::string(v);
}

bool QuickMode() { return EnvInt("SAGA_FAULT_QUICK", 0) != 0; }

uint64_t ScenarioSeed() {
  const char* v = std::getenv("SAGA_FAULT_SEED");
  uint64_t out = 0;
  if (v != nullptr && absl::SimpleAtoi(v, &out)) return out;
  return static_cast<uint64_t>(absl::ToUnixMicros(absl::Now())) % 1000000007ULL;
}

absl::StatusOr<std::string> MakeTempDir(const std::string& prefix) {
  std::string tmpl =
      absl::StrCat(std::filesystem::temp_directory_path().string(), "/", prefix, "-XXXXXX");
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  if (mkdtemp(buf.data()) == nullptr) {
    return absl::InternalError(absl::StrCat("mkdtemp ", tmpl, " failed"));
  }
  chmod(buf.data(), 0755);
  return std::string(buf.data());
}

void RemoveTree(const std::string& path) {
  std::error_code ec;
  std::filesystem::remove_all(path, ec);
}

bool IsRoot() { return geteuid() == 0; }

CommandResult RunCommand(const std::vector<std::string>& argv_in, absl::Duration timeout,
                         bool as_postgres) {
  std::vector<std::string> argv;
  if (as_postgres && IsRoot()) argv = {"/usr/sbin/runuser", "-u", "postgres", "--"};
  argv.insert(argv.end(), argv_in.begin(), argv_in.end());
  CommandResult result;
  int pipefd[2];
  if (pipe(pipefd) != 0) return result;
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(pipefd[1], 1);
    dup2(pipefd[1], 2);
    close(pipefd[0]);
    close(pipefd[1]);
    setpgid(0, 0);
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    execv(args[0], args.data());
    _exit(127);
  }
  close(pipefd[1]);
  fcntl(pipefd[0], F_SETFL, O_NONBLOCK);
  const absl::Time deadline = absl::Now() + timeout;
  int status = 0;
  char buf[4096];
  for (;;) {
    ssize_t n;
    while ((n = read(pipefd[0], buf, sizeof(buf))) > 0) {
      result.output.append(buf, static_cast<size_t>(n));
    }
    if (waitpid(pid, &status, WNOHANG) == pid) {
      while ((n = read(pipefd[0], buf, sizeof(buf))) > 0) {
        result.output.append(buf, static_cast<size_t>(n));
      }
      break;
    }
    if (absl::Now() > deadline) {
      kill(-pid, SIGKILL);
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      close(pipefd[0]);
      result.output += "\n[timed out]";
      return result;
    }
    absl::SleepFor(absl::Milliseconds(10));
  }
  close(pipefd[0]);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return result;
}

namespace {

// "0100007F:C350" -> 50000.
int PortOf(const std::string& addr) {
  const auto colon = addr.rfind(':');
  if (colon == std::string::npos) return 0;
  return static_cast<int>(std::strtol(addr.c_str() + colon + 1, nullptr, 16));
}

}  // namespace

std::set<int> LocalTcpPorts(pid_t pid) {
  std::set<std::string> inodes;
  const std::string fd_dir = absl::StrCat("/proc/", pid, "/fd");
  if (DIR* dir = opendir(fd_dir.c_str())) {
    while (dirent* e = readdir(dir)) {
      char target[256];
      const std::string path = fd_dir + "/" + e->d_name;
      const ssize_t n = readlink(path.c_str(), target, sizeof(target) - 1);
      if (n <= 0) continue;
      target[n] = '\0';
      std::string t(target);
      if (t.rfind("socket:[", 0) == 0) inodes.insert(t.substr(8, t.size() - 9));
    }
    closedir(dir);
  }
  std::set<int> ports;
  for (const char* table : {"/proc/net/tcp", "/proc/net/tcp6"}) {
    std::ifstream in(table);
    std::string line;
    std::getline(in, line);  // header
    while (std::getline(in, line)) {
      std::vector<std::string> f = absl::StrSplit(line, ' ', absl::SkipEmpty());
      if (f.size() < 10) continue;
      if (inodes.contains(f[9])) ports.insert(PortOf(f[1]));
    }
  }
  return ports;
}

int64_t RssKiB(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) {
      std::vector<std::string> f = absl::StrSplit(line, ' ', absl::SkipEmpty());
      int64_t kib = 0;
      if (f.size() >= 2 && absl::SimpleAtoi(f[1], &kib)) return kib;
    }
  }
  return 0;
}

double Percentile(std::vector<double>& values, double p) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const double rank = p / 100.0 * static_cast<double>(values.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(rank));
  const size_t hi = std::min(values.size() - 1, lo + 1);
  const double frac = rank - static_cast<double>(lo);
  return values[lo] + (values[hi] - values[lo]) * frac;
}

}  // namespace saga::fault
