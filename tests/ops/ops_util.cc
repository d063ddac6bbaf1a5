#include "tests/ops/ops_util.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "httplib.h"

namespace saga::testing {
namespace {

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Forks and execs sagad; the child's stdout/stderr go to the given fds.
pid_t Spawn(const std::vector<std::string>& args,
            const std::vector<std::pair<std::string, std::string>>& env, int out_fd, int err_fd) {
  std::vector<std::string> full = {SAGAD_PATH};
  full.insert(full.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : full) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t pid = fork();
  if (pid == 0) {
    for (const auto& [k, v] : env) setenv(k.c_str(), v.c_str(), 1);
    dup2(out_fd, 1);
    dup2(err_fd, 2);
    const int null_fd = open("/dev/null", O_RDONLY);
    if (null_fd >= 0) dup2(null_fd, 0);
    execv(argv[0], argv.data());
    std::_Exit(127);
  }
  return pid;
}

int DecodeStatus(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

}  // namespace

SagadProcess::SagadProcess(std::vector<std::string> args, std::string log_path,
                           std::vector<std::pair<std::string, std::string>> env)
    : log_path_(std::move(log_path)) {
  const int fd = open(log_path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  pid_ = Spawn(args, env, fd, fd);
  close(fd);
}

SagadProcess::~SagadProcess() {
  if (running()) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
}

void SagadProcess::Signal(int sig) {
  if (running()) kill(pid_, sig);
}

std::optional<int> SagadProcess::WaitExit(absl::Duration timeout) {
  if (exit_code_.has_value()) return exit_code_;
  const absl::Time deadline = absl::Now() + timeout;
  do {
    int status = 0;
    const pid_t r = waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      exit_code_ = DecodeStatus(status);
      return exit_code_;
    }
    absl::SleepFor(absl::Milliseconds(10));
  } while (absl::Now() < deadline);
  return std::nullopt;
}

std::string SagadProcess::Log() const { return ReadFile(log_path_); }

RunResult RunSagad(const std::vector<std::string>& args,
                   const std::vector<std::pair<std::string, std::string>>& env) {
  char out_path[] = "/tmp/sagad-out-XXXXXX";
  char err_path[] = "/tmp/sagad-err-XXXXXX";
  const int out_fd = mkstemp(out_path);
  const int err_fd = mkstemp(err_path);
  const pid_t pid = Spawn(args, env, out_fd, err_fd);
  int status = 0;
  waitpid(pid, &status, 0);
  close(out_fd);
  close(err_fd);
  RunResult r;
  r.exit_code = DecodeStatus(status);
  r.out = ReadFile(out_path);
  r.err = ReadFile(err_path);
  unlink(out_path);
  unlink(err_path);
  return r;
}

std::string HealthStatus(const std::string& address, absl::Duration timeout) {
  auto channel = grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
  auto stub = grpc::health::v1::Health::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + absl::ToChronoMilliseconds(timeout));
  grpc::health::v1::HealthCheckRequest req;
  grpc::health::v1::HealthCheckResponse resp;
  grpc::Status s = stub->Check(&ctx, req, &resp);
  if (!s.ok()) return absl::StrCat("error ", s.error_code(), ": ", s.error_message());
  return grpc::health::v1::HealthCheckResponse::ServingStatus_Name(resp.status());
}

bool WaitServing(const std::string& address, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    if (HealthStatus(address, absl::Milliseconds(500)) == "SERVING") return true;
    absl::SleepFor(absl::Milliseconds(50));
  }
  return false;
}

absl::StatusOr<std::string> Scrape(int port) {
  httplib::Client client("127.0.0.1", port);
  client.set_connection_timeout(2);
  client.set_read_timeout(5);
  auto res = client.Get("/metrics");
  if (!res) return absl::UnavailableError(absl::StrCat("GET /metrics on port ", port, " failed"));
  if (res->status != 200) {
    return absl::InternalError(absl::StrCat("GET /metrics: HTTP ", res->status));
  }
  const std::string type = res->get_header_value("Content-Type");
  if (!absl::StartsWith(type, "text/plain; version=0.0.4")) {
    return absl::InternalError(absl::StrCat("GET /metrics: Content-Type ", type));
  }
  return res->body;
}

std::string SampleKey(const std::string& name,
                      std::vector<std::pair<std::string, std::string>> labels) {
  if (labels.empty()) return name;
  std::sort(labels.begin(), labels.end());
  std::vector<std::string> parts;
  for (const auto& [k, v] : labels) parts.push_back(absl::StrCat(k, "=\"", v, "\""));
  return absl::StrCat(name, "{", absl::StrJoin(parts, ","), "}");
}

absl::StatusOr<std::map<std::string, double>> ParsePrometheusText(const std::string& text) {
  std::map<std::string, double> out;
  std::set<std::string> typed;
  int line_no = 0;
  auto bad = [&](absl::string_view line, absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat("line ", line_no, " (", line, "): ", why));
  };
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_no;
    if (line.empty()) continue;
    if (line[0] == '#') {
      std::vector<absl::string_view> f = absl::StrSplit(line, absl::MaxSplits(' ', 3));
      if (f.size() >= 4 && f[1] == "TYPE") typed.insert(std::string(f[2]));
      continue;
    }
    size_t i = 0;
    auto name_char = [](char c, bool first) {
      return absl::ascii_isalpha(static_cast<unsigned char>(c)) || c == '_' || c == ':' ||
             (!first && absl::ascii_isdigit(static_cast<unsigned char>(c)));
    };
    while (i < line.size() && name_char(line[i], i == 0)) ++i;
    if (i == 0) return bad(line, "no metric name");
    const std::string name(line.substr(0, i));
    std::vector<std::pair<std::string, std::string>> labels;
    if (i < line.size() && line[i] == '{') {
      ++i;
      while (i < line.size() && line[i] != '}') {
        const size_t start = i;
        while (i < line.size() && name_char(line[i], i == start)) ++i;
        const std::string label(line.substr(start, i - start));
        if (label.empty() || i + 1 >= line.size() || line[i] != '=' || line[i + 1] != '"') {
          return bad(line, "bad label");
        }
        i += 2;
        std::string value;
        while (i < line.size() && line[i] != '"') {
          if (line[i] == '\\' && i + 1 < line.size()) {
            ++i;
            value += line[i] == 'n' ? '\n' : line[i];
          } else {
            value += line[i];
          }
          ++i;
        }
        if (i >= line.size()) return bad(line, "unterminated label value");
        ++i;  // closing quote
        labels.emplace_back(label, value);
        if (i < line.size() && line[i] == ',') ++i;
      }
      if (i >= line.size()) return bad(line, "unterminated labels");
      ++i;  // }
    }
    if (i >= line.size() || line[i] != ' ') return bad(line, "no value");
    std::vector<absl::string_view> rest = absl::StrSplit(line.substr(i + 1), ' ');
    const std::string value_text(rest[0]);
    double value = 0;
    if (value_text == "+Inf") {
      value = std::numeric_limits<double>::infinity();
    } else if (value_text == "-Inf") {
      value = -std::numeric_limits<double>::infinity();
    } else if (value_text == "NaN") {
      value = std::numeric_limits<double>::quiet_NaN();
    } else {
      char* end = nullptr;
      value = std::strtod(value_text.c_str(), &end);
      if (end == value_text.c_str() || *end != '\0') return bad(line, "bad value");
    }
    std::string family = name;
    for (const char* suffix : {"_bucket", "_sum", "_count"}) {
      if (!typed.contains(family) && absl::EndsWith(name, suffix)) {
        family = name.substr(0, name.size() - std::strlen(suffix));
      }
    }
    if (!typed.contains(family)) return bad(line, "no # TYPE before the sample");
    const std::string key = SampleKey(name, std::move(labels));
    if (out.contains(key)) return bad(line, "duplicate sample");
    out[key] = value;
  }
  return out;
}

bool ProcessWithArgumentExists(const std::string& needle) {
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator("/proc", ec)) {
    const std::string pid = entry.path().filename().string();
    if (pid.empty() || !absl::ascii_isdigit(static_cast<unsigned char>(pid[0]))) continue;
    if (pid == std::to_string(getpid())) continue;
    std::string cmdline = ReadFile(entry.path().string() + "/cmdline");
    std::replace(cmdline.begin(), cmdline.end(), '\0', ' ');
    if (cmdline.find(needle) != std::string::npos) return true;
  }
  return false;
}

}  // namespace saga::testing
