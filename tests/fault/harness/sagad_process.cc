#include "tests/fault/harness/sagad_process.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "tests/fault/harness/util.h"
#include "tests/support/net.h"

namespace saga::fault {

std::string SagadBinary() {
#ifdef SAGAD_PATH
  return EnvString("SAGA_FAULT_SAGAD", SAGAD_PATH);
#else
  return EnvString("SAGA_FAULT_SAGAD", "sagad");
#endif
}

bool SagadHasFlag(const std::string& flag) {
  static std::mutex mu;
  static std::map<std::string, bool>* cache = new std::map<std::string, bool>();
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache->find(flag);
  if (it != cache->end()) return it->second;
  const CommandResult help = RunCommand({SagadBinary(), "--help"}, absl::Seconds(20));
  const bool has = help.output.find(flag) != std::string::npos;
  (*cache)[flag] = has;
  return has;
}

std::string HealthOf(const std::string& address, absl::Duration deadline) {
  auto stub = grpc::health::v1::Health::NewStub(
      grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + deadline));
  grpc::health::v1::HealthCheckResponse resp;
  grpc::Status s = stub->Check(&ctx, {}, &resp);
  if (!s.ok()) {
    const std::string name =
        absl::StatusCodeToString(static_cast<absl::StatusCode>(s.error_code()));
    return name.empty() ? "ERROR" : name;
  }
  return resp.status() == grpc::health::v1::HealthCheckResponse::SERVING ? "SERVING"
                                                                         : "NOT_SERVING";
}

absl::StatusOr<std::unique_ptr<SagadProcess>> SagadProcess::Spawn(const SagadOptions& options,
                                                                  absl::Duration ready_timeout) {
  std::unique_ptr<SagadProcess> p(new SagadProcess());
  p->options_ = options;
  if (p->options_.port == 0) p->options_.port = testing::FreeLoopbackPort();
  const SagadOptions& o = p->options_;
  std::vector<std::string> argv = {
      SagadBinary(),
      "--listen",
      absl::StrCat("127.0.0.1:", o.port),
      "--database-url",
      absl::StrCat(o.database_url, absl::StrContains(o.database_url, "?") ? "&" : "?",
                   "application_name=", o.owner_id),
      "--definitions",
      o.definitions_dir,
      "--owner-id",
      o.owner_id,
      "--lease",
      o.lease,
      "--poll-interval",
      o.poll_interval,
      "--drain-timeout",
      o.drain_timeout,
      "--db-pool-size",
      absl::StrCat(o.db_pool_size)};
  for (const auto& dir : o.proto_path) {
    argv.push_back("--proto-path");
    argv.push_back(dir);
  }
  if (SagadHasFlag("--metrics-listen")) {
    // Loopback only, and a port of its own (the default 0.0.0.0:9090 would be shared).
    p->metrics_port_ = testing::FreeLoopbackPort();
    argv.push_back("--metrics-listen");
    argv.push_back(absl::StrCat("127.0.0.1:", p->metrics_port_));
  }
  argv.insert(argv.end(), o.extra_args.begin(), o.extra_args.end());
  const pid_t pid = fork();
  if (pid < 0) return absl::InternalError("fork failed");
  if (pid == 0) {
    const int fd = open(o.log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
      close(fd);
    }
    if (o.crashpoint.empty()) {
      unsetenv("SAGA_CRASHPOINT");
    } else {
      setenv("SAGA_CRASHPOINT", o.crashpoint.c_str(), 1);
    }
    // Unblock what the test may have blocked.
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    execv(args[0], args.data());
    _exit(127);
  }
  p->pid_ = pid;
  const absl::Time deadline = absl::Now() + ready_timeout;
  while (absl::Now() < deadline) {
    if (!p->alive()) return p;  // died early (e.g. a crash point during recovery)
    if (HealthOf(p->address(), absl::Milliseconds(300)) == "SERVING") return p;
    absl::SleepFor(absl::Milliseconds(50));
  }
  return absl::DeadlineExceededError(absl::StrCat("sagad ", o.owner_id, " did not serve within ",
                                                  absl::FormatDuration(ready_timeout), "; log ",
                                                  o.log_path));
}

SagadProcess::~SagadProcess() {
  if (pid_ > 0 && !reaped_) {
    kill(pid_, SIGKILL);
    kill(pid_, SIGCONT);
    waitpid(pid_, nullptr, 0);
  }
}

std::string SagadProcess::address() const { return absl::StrCat("127.0.0.1:", options_.port); }

void SagadProcess::Signal(int sig) {
  if (pid_ > 0 && !reaped_) kill(pid_, sig);
}

bool SagadProcess::WaitExit(absl::Duration timeout, int* wait_status) {
  const absl::Time deadline = absl::Now() + timeout;
  while (!reaped_) {
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      reaped_ = true;
      wait_status_ = status;
      break;
    }
    if (absl::Now() >= deadline) return false;
    absl::SleepFor(absl::Milliseconds(5));
  }
  if (wait_status != nullptr) *wait_status = wait_status_;
  return true;
}

bool SagadProcess::alive() { return !WaitExit(absl::ZeroDuration()); }

std::string SagadProcess::Health(absl::Duration deadline) const {
  return HealthOf(address(), deadline);
}

size_t SagadProcess::LogSize() const {
  std::ifstream in(options_.log_path, std::ios::ate | std::ios::binary);
  return in ? static_cast<size_t>(in.tellg()) : 0;
}

int SagadProcess::CountLogLines(const std::string& needle, size_t from) const {
  std::ifstream in(options_.log_path, std::ios::binary);
  in.seekg(static_cast<std::streamoff>(from));
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    if (line.find(needle) != std::string::npos) ++n;
  }
  return n;
}

absl::StatusOr<double> SagadProcess::Metric(const std::string& name) const {
  if (metrics_port_ == 0) return absl::UnavailableError("sagad has no --metrics-listen");
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return absl::UnavailableError("socket");
  timeval tv{.tv_sec = 5, .tv_usec = 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(metrics_port_));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return absl::UnavailableError(absl::StrCat("cannot connect to metrics port ", metrics_port_));
  }
  const std::string req = "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
  (void)!write(fd, req.data(), req.size());
  std::string body;
  char buf[8192];
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0) body.append(buf, static_cast<size_t>(n));
  close(fd);
  double sum = 0;
  bool found = false;
  std::istringstream in(body);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(name, 0) != 0 || line.size() <= name.size()) continue;
    const char next = line[name.size()];
    if (next != ' ' && next != '{') continue;
    const auto space = line.rfind(' ');
    sum += std::strtod(line.c_str() + space + 1, nullptr);
    found = true;
  }
  if (!found) return absl::NotFoundError(absl::StrCat("metric ", name, " not exported"));
  return sum;
}

}  // namespace saga::fault
