#include "orchestrator/server/dev_postgres.h"

#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "spdlog/spdlog.h"

extern char** environ;

namespace saga::server {
namespace fs = std::filesystem;
namespace {

constexpr int kPort = 5432;
// sockaddr_un.sun_path is 108 bytes; PostgreSQL also needs room for ".lock".
constexpr size_t kMaxSocketPath = 100;

struct RunAs {
  bool switch_user = false;
  uid_t uid = 0;
  gid_t gid = 0;
};

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string Tail(const std::string& path, int lines) {
  const std::string text = ReadFile(path);
  std::vector<absl::string_view> all = absl::StrSplit(text, '\n', absl::SkipWhitespace());
  const size_t from = all.size() > static_cast<size_t>(lines) ? all.size() - lines : 0;
  return absl::StrJoin(all.begin() + static_cast<std::ptrdiff_t>(from), all.end(), " | ");
}

// Runs argv[0] (an absolute path) with `argv`, as `as`, in `cwd`, with stdout and stderr
// appended to `log_path` and the PG* variables removed from the environment. Returns the exit
// code (128 + signal when killed).
absl::StatusOr<int> Run(const std::vector<std::string>& argv, const RunAs& as,
                        const std::string& cwd, const std::string& log_path) {
  // Everything the child needs is prepared before fork(): after it, only async-signal-safe
  // calls are made.
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  std::vector<char*> env;
  for (char** e = environ; *e != nullptr; ++e) {
    if (std::strncmp(*e, "PG", 2) != 0) env.push_back(*e);
  }
  env.push_back(nullptr);
  const int log_fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log_fd < 0) {
    return absl::InternalError(absl::StrCat("cannot open ", log_path, ": ", std::strerror(errno)));
  }
  if (as.switch_user) (void)fchown(log_fd, as.uid, as.gid);
  const int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  const pid_t pid = fork();
  if (pid < 0) {
    close(log_fd);
    if (null_fd >= 0) close(null_fd);
    return absl::InternalError(absl::StrCat("fork: ", std::strerror(errno)));
  }
  if (pid == 0) {
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    if (null_fd >= 0) dup2(null_fd, 0);
    dup2(log_fd, 1);
    dup2(log_fd, 2);
    if (as.switch_user) {
      if (setgroups(0, nullptr) != 0 || setgid(as.gid) != 0 || setuid(as.uid) != 0) _exit(126);
    }
    if (chdir(cwd.c_str()) != 0) _exit(125);
    execve(args[0], args.data(), env.data());
    _exit(127);
  }
  close(log_fd);
  if (null_fd >= 0) close(null_fd);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return absl::InternalError(absl::StrCat("waitpid: ", std::strerror(errno)));
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  return 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

// Can `as` read, write and search `dir`? (Run as that user in a child.)
bool Reachable(const std::string& dir, const RunAs& as) {
  const pid_t pid = fork();
  if (pid < 0) return false;
  if (pid == 0) {
    if (as.switch_user) {
      if (setgroups(0, nullptr) != 0 || setgid(as.gid) != 0 || setuid(as.uid) != 0) _exit(2);
    }
    _exit(access(dir.c_str(), R_OK | W_OK | X_OK) == 0 ? 0 : 1);
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

void ChownTree(const fs::path& root, uid_t uid, gid_t gid) {
  (void)lchown(root.c_str(), uid, gid);
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(root, ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    (void)lchown(it->path().c_str(), uid, gid);
  }
}

// A value for postgresql.conf or a libpq key=value string: '...' with ' and \ escaped.
std::string QuoteConf(const std::string& s) {
  std::string out = "'";
  for (const char c : s) {
    if (c == '\'' || c == '\\') out += '\\';
    out += c;
  }
  return out + "'";
}

bool IsVersion(const std::string& name) {
  int v = 0;
  return absl::SimpleAtoi(name, &v) && v > 0;
}

// Waits until process `pid` has exited (or is a zombie nobody reaps).
void WaitUntilGone(int pid, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    if (kill(pid, 0) != 0 && errno == ESRCH) return;
    const std::string stat = ReadFile(absl::StrCat("/proc/", pid, "/stat"));
    const size_t paren = stat.rfind(')');
    if (stat.empty() ||
        (paren != std::string::npos && paren + 2 < stat.size() && stat[paren + 2] == 'Z')) {
      return;
    }
    absl::SleepFor(absl::Milliseconds(10));
  }
}

}  // namespace

absl::StatusOr<std::string> FindPostgresBinDir(const std::string& root, const std::string& prefer) {
  auto complete = [](const fs::path& bin) {
    std::error_code ec;
    return fs::exists(bin / "initdb", ec) && fs::exists(bin / "pg_ctl", ec) &&
           fs::exists(bin / "postgres", ec);
  };
  if (!prefer.empty() && complete(fs::path(root) / prefer / "bin")) {
    return (fs::path(root) / prefer / "bin").string();
  }
  int best = -1;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(root, ec)) {
    const std::string name = entry.path().filename().string();
    int v = 0;
    if (IsVersion(name) && absl::SimpleAtoi(name, &v) && v > best &&
        complete(entry.path() / "bin")) {
      best = v;
    }
  }
  if (best < 0) {
    return absl::NotFoundError(absl::StrCat(
        "--dev needs PostgreSQL: no ", root,
        "/<version>/bin with initdb, pg_ctl and postgres (Debian: apt-get install postgresql)"));
  }
  return (fs::path(root) / std::to_string(best) / "bin").string();
}

absl::StatusOr<std::unique_ptr<DevPostgres>> DevPostgres::Start(const std::string& dir) {
  std::unique_ptr<DevPostgres> pg(new DevPostgres());
  std::error_code ec;
  const fs::path abs = fs::absolute(dir, ec).lexically_normal();
  pg->dir_ = abs.string();
  while (pg->dir_.size() > 1 && pg->dir_.back() == '/') pg->dir_.pop_back();
  fs::create_directories(pg->dir_, ec);
  if (ec) {
    return absl::FailedPreconditionError(
        absl::StrCat("--dev-data-dir: cannot create ", pg->dir_, ": ", ec.message()));
  }
  chmod(pg->dir_.c_str(), 0700);
  pg->pgdata_ = pg->dir_ + "/pgdata";

  // One sagad per folder.
  const std::string lock_path = pg->dir_ + "/sagad.lock";
  pg->lock_fd_ = open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (pg->lock_fd_ < 0 || flock(pg->lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("--dev-data-dir ", pg->dir_, " is in use by another sagad --dev"));
  }

  // Who runs PostgreSQL.
  RunAs as;
  if (geteuid() == 0) {
    const passwd* pw = getpwnam("postgres");
    if (pw == nullptr) pw = getpwnam("nobody");
    if (pw == nullptr) {
      return absl::FailedPreconditionError(
          "--dev as root needs a `postgres` or `nobody` user to run PostgreSQL as");
    }
    as = {.switch_user = true, .uid = pw->pw_uid, .gid = pw->pw_gid};
    pg->user_ = pw->pw_name;
    ChownTree(pg->dir_, as.uid, as.gid);
    if (!Reachable(pg->dir_, as)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "--dev: PostgreSQL runs as user '", pg->user_, "', which cannot reach ", pg->dir_,
          " (a parent folder is not searchable); use a --dev-data-dir it can reach, e.g. "
          "under /tmp"));
    }
  } else {
    const passwd* pw = getpwuid(geteuid());
    pg->user_ = pw != nullptr ? pw->pw_name : absl::StrCat(geteuid());
  }
  pg->switch_user_ = as.switch_user;
  pg->uid_ = as.uid;
  pg->gid_ = as.gid;

  // Binaries: those of an existing cluster's version, else the newest.
  std::string cluster_version(absl::StripAsciiWhitespace(ReadFile(pg->pgdata_ + "/PG_VERSION")));
  absl::StatusOr<std::string> bin = FindPostgresBinDir("/usr/lib/postgresql", cluster_version);
  if (!bin.ok()) return bin.status();
  pg->bin_ = *bin;
  pg->version_ = fs::path(pg->bin_).parent_path().filename().string();
  if (!cluster_version.empty() && cluster_version != pg->version_) {
    return absl::FailedPreconditionError(absl::StrCat(
        "--dev: ", pg->pgdata_, " is a PostgreSQL ", cluster_version, " cluster but only ",
        pg->version_, " is installed; remove the folder or install postgresql-", cluster_version));
  }

  const std::string initdb_log = pg->dir_ + "/initdb.log";
  const std::string pg_ctl_log = pg->dir_ + "/pg_ctl.log";
  if (cluster_version.empty()) {
    fs::remove_all(pg->pgdata_, ec);  // a half-made cluster from an interrupted initdb
    spdlog::info("dev mode: creating a PostgreSQL {} cluster in {}", pg->version_, pg->pgdata_);
    absl::StatusOr<int> rc =
        Run({pg->bin_ + "/initdb", "-D", pg->pgdata_, "-U", "sagad", "-A", "trust", "-E", "UTF8",
             "--no-locale", "--no-sync", "--no-instructions"},
            as, pg->dir_, initdb_log);
    if (!rc.ok()) return rc.status();
    if (*rc != 0) {
      return absl::InternalError(
          absl::StrCat("--dev: initdb failed (exit ", *rc, "): ", Tail(initdb_log, 3)));
    }
    std::ofstream conf(pg->pgdata_ + "/postgresql.conf", std::ios::app);
    conf << "\n# sagad --dev: socket settings are written at each start.\n"
            "include_if_exists = 'sagad_dev.conf'\n";
  }

  // The socket lives in the data folder unless its path is too long.
  pg->socket_dir_ = pg->dir_;
  if (pg->socket_dir_.size() + std::strlen("/.s.PGSQL.5432") > kMaxSocketPath) {
    std::string tmpl = "/tmp/sagad-dev-XXXXXX";
    if (mkdtemp(tmpl.data()) == nullptr) {
      return absl::InternalError(absl::StrCat("mkdtemp: ", std::strerror(errno)));
    }
    pg->socket_dir_ = tmpl;
    pg->temp_socket_dir_ = true;
    if (as.switch_user) (void)chown(tmpl.c_str(), as.uid, as.gid);
  }

  absl::StatusOr<int> status =
      Run({pg->bin_ + "/pg_ctl", "-D", pg->pgdata_, "status"}, as, pg->dir_, pg_ctl_log);
  if (!status.ok()) return status.status();
  if (*status == 0) {
    // Left running by a sagad that was killed: adopt it (its socket is in postmaster.pid).
    std::vector<std::string> lines =
        absl::StrSplit(ReadFile(pg->pgdata_ + "/postmaster.pid"), '\n');
    if (lines.size() >= 5 && !lines[4].empty()) {
      if (pg->temp_socket_dir_) fs::remove(pg->socket_dir_, ec);
      pg->temp_socket_dir_ = absl::StartsWith(lines[4], "/tmp/sagad-dev-");
      pg->socket_dir_ = lines[4];
    }
    spdlog::warn(
        "dev mode: PostgreSQL was already running in {} (left by an earlier sagad?); "
        "using it",
        pg->pgdata_);
  } else {
    {
      std::ofstream conf(pg->pgdata_ + "/sagad_dev.conf", std::ios::trunc);
      conf << "# Written by sagad --dev at each start.\n"
           << "listen_addresses = ''\n"
           << "unix_socket_directories = " << QuoteConf(pg->socket_dir_) << "\n"
           << "port = " << kPort << "\n";
    }
    if (as.switch_user) (void)chown((pg->pgdata_ + "/sagad_dev.conf").c_str(), as.uid, as.gid);
    absl::StatusOr<int> rc = Run({pg->bin_ + "/pg_ctl", "-D", pg->pgdata_, "-l",
                                  pg->dir_ + "/postgres.log", "-w", "-t", "60", "start"},
                                 as, pg->dir_, pg_ctl_log);
    if (!rc.ok()) return rc.status();
    if (*rc != 0) {
      return absl::InternalError(absl::StrCat("--dev: pg_ctl start failed (exit ", *rc,
                                              "): ", Tail(pg->dir_ + "/postgres.log", 3)));
    }
  }
  pg->url_ = absl::StrCat("host=", QuoteConf(pg->socket_dir_), " port=", kPort,
                          " user=sagad dbname=postgres");
  spdlog::info("dev mode: {}", pg->Describe());
  return pg;
}

std::string DevPostgres::Describe() const {
  return absl::StrCat("PostgreSQL ", version_, " running as ", user_, ", data in ", pgdata_,
                      ", log ", dir_, "/postgres.log; connect with: psql \"", url_, "\"");
}

int DevPostgres::PostmasterPid() const {
  const std::string pid_text = ReadFile(pgdata_ + "/postmaster.pid");
  int pid = 0;
  if (!absl::SimpleAtoi(pid_text.substr(0, pid_text.find('\n')), &pid) || pid <= 1) return 0;
  return pid;
}

void DevPostgres::RequestStop() {
  if (const int pid = PostmasterPid(); pid > 0) kill(pid, SIGINT);  // fast shutdown
}

void DevPostgres::Stop() {
  if (stopped_) return;
  stopped_ = true;
  if (!pgdata_.empty() && !bin_.empty()) {
    const RunAs as{.switch_user = switch_user_, .uid = uid_, .gid = gid_};
    const int pid = PostmasterPid();
    absl::StatusOr<int> rc =
        Run({bin_ + "/pg_ctl", "-D", pgdata_, "-m", "fast", "-w", "-t", "60", "stop"}, as, dir_,
            dir_ + "/pg_ctl.log");
    // pg_ctl returns once postmaster.pid is gone; the process exits a moment later.
    if (pid > 0) WaitUntilGone(pid, absl::Seconds(10));
    if (rc.ok() && *rc == 0) {
      spdlog::info("dev mode: PostgreSQL stopped");
    } else {
      spdlog::warn("dev mode: pg_ctl stop failed ({}); see {}/pg_ctl.log",
                   rc.ok() ? absl::StrCat("exit ", *rc) : rc.status().ToString(), dir_);
    }
  }
  if (temp_socket_dir_) {
    std::error_code ec;
    fs::remove_all(socket_dir_, ec);
  }
  if (lock_fd_ >= 0) {
    close(lock_fd_);
    lock_fd_ = -1;
  }
}

DevPostgres::~DevPostgres() { Stop(); }

}  // namespace saga::server
