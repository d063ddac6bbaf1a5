// Shared helpers of the benchmark tools; see bench_util.h.
#include "bench/bench_util.h"

#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <unordered_map>

#include "httplib.h"

namespace saga::bench {
namespace {

struct ProcStat {
  pid_t ppid = 0;
  uint64_t ticks = 0;  // utime + stime + cutime + cstime
};

// Reads /proc/<pid>/stat. The command name (field 2) is in parentheses and may hold spaces,
// so the fields are counted from the last ')'.
std::optional<ProcStat> ReadProcStat(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  if (!in) return std::nullopt;
  std::string line;
  std::getline(in, line);
  const size_t close = line.rfind(')');
  if (close == std::string::npos) return std::nullopt;
  std::istringstream fields(line.substr(close + 1));
  std::vector<std::string> f;
  std::string token;
  while (fields >> token) f.push_back(token);
  // f[0] is field 3 (state): ppid is field 4, utime..cstime are fields 14..17.
  if (f.size() < 15) return std::nullopt;
  ProcStat stat;
  stat.ppid = static_cast<pid_t>(std::strtol(f[1].c_str(), nullptr, 10));
  for (int i = 11; i <= 14; ++i) {
    stat.ticks += std::strtoull(f[static_cast<size_t>(i)].c_str(), nullptr, 10);
  }
  return stat;
}

double TicksPerSecond() {
  static const double ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
  return ticks;
}

// pid -> stat of every process.
std::unordered_map<pid_t, ProcStat> AllProcesses() {
  std::unordered_map<pid_t, ProcStat> all;
  DIR* dir = opendir("/proc");
  if (dir == nullptr) return all;
  while (dirent* entry = readdir(dir)) {
    char* end = nullptr;
    const long pid = std::strtol(entry->d_name, &end, 10);
    if (end == entry->d_name || *end != '\0' || pid <= 0) continue;
    if (auto stat = ReadProcStat(static_cast<pid_t>(pid))) {
      all.emplace(static_cast<pid_t>(pid), *stat);
    }
  }
  closedir(dir);
  return all;
}

// Every pid of the tree rooted at `root` (root first); empty if root does not exist.
std::vector<pid_t> TreePids(const std::unordered_map<pid_t, ProcStat>& all, pid_t root) {
  std::vector<pid_t> out;
  if (all.find(root) == all.end()) return out;
  std::unordered_multimap<pid_t, pid_t> children;
  for (const auto& [pid, stat] : all) children.emplace(stat.ppid, pid);
  std::vector<pid_t> todo = {root};
  while (!todo.empty()) {
    const pid_t pid = todo.back();
    todo.pop_back();
    out.push_back(pid);
    auto range = children.equal_range(pid);
    for (auto c = range.first; c != range.second; ++c) todo.push_back(c->second);
  }
  return out;
}

// Sum of voluntary + involuntary context switches over /proc/<pid>/task/*/status.
uint64_t ThreadContextSwitches(pid_t pid) {
  const std::string dir = "/proc/" + std::to_string(pid) + "/task";
  DIR* tasks = opendir(dir.c_str());
  if (tasks == nullptr) return 0;
  uint64_t total = 0;
  while (dirent* entry = readdir(tasks)) {
    if (entry->d_name[0] == '.') continue;
    std::ifstream in(dir + "/" + entry->d_name + "/status");
    std::string line;
    while (std::getline(in, line)) {
      if (line.rfind("voluntary_ctxt_switches:", 0) == 0 ||
          line.rfind("nonvoluntary_ctxt_switches:", 0) == 0) {
        total += std::strtoull(line.c_str() + line.find(':') + 1, nullptr, 10);
      }
    }
  }
  closedir(tasks);
  return total;
}

double TreeSeconds(const std::unordered_map<pid_t, ProcStat>& all, pid_t root) {
  uint64_t ticks = 0;
  for (pid_t pid : TreePids(all, root)) ticks += all.at(pid).ticks;
  return static_cast<double>(ticks) / TicksPerSecond();
}

}  // namespace

std::optional<double> ProcessTreeCpuSeconds(pid_t pid) {
  const auto all = AllProcesses();
  if (all.find(pid) == all.end()) return std::nullopt;
  return TreeSeconds(all, pid);
}

uint64_t ProcessTreeContextSwitches(pid_t pid) {
  uint64_t total = 0;
  for (pid_t p : TreePids(AllProcesses(), pid)) total += ThreadContextSwitches(p);
  return total;
}

double SelfCpuSeconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  auto seconds = [](const timeval& tv) {
    return static_cast<double>(tv.tv_sec) + static_cast<double>(tv.tv_usec) / 1e6;
  };
  return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

std::optional<pid_t> ParentPid(pid_t pid) {
  auto stat = ReadProcStat(pid);
  if (!stat) return std::nullopt;
  return stat->ppid;
}

std::string ProcessName(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/comm");
  std::string name;
  std::getline(in, name);
  return name;
}

MachineCpu MachineCpu::Now() {
  MachineCpu cpu;
  std::ifstream in("/proc/stat");
  std::string label;
  in >> label;  // "cpu"
  uint64_t v[8] = {};
  for (auto& x : v) in >> x;
  // user nice system idle iowait irq softirq steal
  cpu.busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
  cpu.total = cpu.busy + v[3] + v[4];
  return cpu;
}

double BusyPercent(const MachineCpu& before, const MachineCpu& after) {
  const double total = static_cast<double>(after.total - before.total);
  if (total <= 0) return 0;
  return 100.0 * static_cast<double>(after.busy - before.busy) / total;
}

double MonotonicSeconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

LatencySummary Summarize(std::vector<double>& samples_ms) {
  LatencySummary s;
  s.count = samples_ms.size();
  if (samples_ms.empty()) return s;
  std::sort(samples_ms.begin(), samples_ms.end());
  double sum = 0;
  for (double x : samples_ms) sum += x;
  s.mean_ms = sum / static_cast<double>(s.count);
  // Nearest rank: the smallest sample with at least p% of the samples at or below it.
  auto rank = [&](double p) {
    size_t r = static_cast<size_t>(std::ceil(p / 100.0 * static_cast<double>(s.count)));
    r = std::clamp<size_t>(r, 1, s.count);
    return samples_ms[r - 1];
  };
  s.p50_ms = rank(50);
  s.p90_ms = rank(90);
  s.p99_ms = rank(99);
  s.max_ms = samples_ms.back();
  return s;
}

void CpuMeter::Add(const std::string& name, pid_t pid) { pids_.emplace_back(name, pid); }

bool CpuMeter::AddList(const std::string& list, std::string* error) {
  std::vector<std::pair<std::string, std::string>> pairs;
  if (!ParseKeyValueList(list, &pairs)) {
    *error = "expected name=PID[,name=PID...], got \"" + list + "\"";
    return false;
  }
  for (const auto& [name, value] : pairs) {
    char* end = nullptr;
    const long pid = std::strtol(value.c_str(), &end, 10);
    if (name.empty() || end == value.c_str() || *end != '\0' || pid <= 0) {
      *error = "bad process entry \"" + name + "=" + value + "\"";
      return false;
    }
    Add(name, static_cast<pid_t>(pid));
  }
  return true;
}

std::map<std::string, double> CpuMeter::Snapshot() const {
  const auto all = AllProcesses();
  std::map<std::string, double> out;
  for (const auto& [name, pid] : pids_) out[name] += TreeSeconds(all, pid);
  return out;
}

std::map<std::string, uint64_t> CpuMeter::ContextSwitches() const {
  const auto all = AllProcesses();
  std::map<std::string, uint64_t> out;
  for (const auto& [name, root] : pids_) {
    for (pid_t pid : TreePids(all, root)) out[name] += ThreadContextSwitches(pid);
  }
  return out;
}

struct AdminClient::Impl {
  std::unique_ptr<httplib::Client> client;
};

AdminClient::AdminClient(const std::string& base_url) : impl_(std::make_unique<Impl>()) {
  impl_->client = std::make_unique<httplib::Client>(base_url);
  impl_->client->set_connection_timeout(5, 0);
  impl_->client->set_read_timeout(60, 0);
}

AdminClient::~AdminClient() = default;

namespace {

std::optional<nlohmann::json> ToJson(const httplib::Result& result, const std::string& what,
                                     std::string* error) {
  if (!result) {
    *error = what + ": " + httplib::to_string(result.error());
    return std::nullopt;
  }
  if (result->status != 200) {
    *error = what + ": HTTP " + std::to_string(result->status) + " " + result->body;
    return std::nullopt;
  }
  nlohmann::json body = nlohmann::json::parse(result->body, nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded()) {
    *error = what + ": the answer is not JSON";
    return std::nullopt;
  }
  return body;
}

}  // namespace

std::optional<nlohmann::json> AdminClient::Post(const std::string& path_and_query,
                                                std::string* error) {
  return ToJson(impl_->client->Post(path_and_query.c_str()), "POST " + path_and_query, error);
}

std::optional<nlohmann::json> AdminClient::Get(const std::string& path_and_query,
                                               std::string* error) {
  return ToJson(impl_->client->Get(path_and_query.c_str()), "GET " + path_and_query, error);
}

bool ParseKeyValueList(const std::string& text,
                       std::vector<std::pair<std::string, std::string>>* out) {
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    if (item.empty()) continue;
    const size_t eq = item.find('=');
    if (eq == std::string::npos) return false;
    out->emplace_back(item.substr(0, eq), item.substr(eq + 1));
  }
  return true;
}

}  // namespace saga::bench
