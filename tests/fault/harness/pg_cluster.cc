#include "tests/fault/harness/pg_cluster.h"

#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

#include <pqxx/pqxx>

#include "absl/strings/str_cat.h"
#include "tests/fault/harness/util.h"
#include "tests/support/net.h"

namespace saga::fault {
namespace {

void ChownToPostgres(const std::string& path) {
  if (!IsRoot()) return;
  if (passwd* pw = getpwnam("postgres")) {
    (void)!chown(path.c_str(), pw->pw_uid, pw->pw_gid);
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<PgCluster>> PgCluster::Create(std::vector<std::string> extra) {
  std::unique_ptr<PgCluster> c(new PgCluster());
  c->bin_ = EnvString("SAGA_FAULT_PG_BIN", "/usr/lib/postgresql/15/bin");
  absl::StatusOr<std::string> dir = MakeTempDir("saga-fault-pg");
  if (!dir.ok()) return dir.status();
  c->dir_ = *dir;
  c->data_ = c->dir_ + "/data";
  c->log_ = c->dir_ + "/postgres.log";
  ChownToPostgres(c->dir_);
  c->port_ = testing::FreeLoopbackPort();
  CommandResult init = RunCommand({c->bin_ + "/initdb", "-D", c->data_, "-U", "postgres",
                                   "--auth=trust", "-E", "UTF8", "--no-sync", "--locale=C"},
                                  absl::Seconds(120), /*as_postgres=*/true);
  if (init.exit_code != 0) {
    return absl::UnavailableError(
        absl::StrCat("initdb failed (", init.exit_code, "): ", init.output));
  }
  {
    std::ofstream conf(c->data_ + "/postgresql.conf", std::ios::app);
    conf << "\n# saga fault suite\n"
         << "listen_addresses = '127.0.0.1'\n"
         << "port = " << c->port_ << "\n"
         << "unix_socket_directories = '" << c->dir_ << "'\n"
         << "max_connections = 200\n"
         << "fsync = off\n"
         << "full_page_writes = off\n"
         << "synchronous_commit = on\n"
         << "shared_buffers = 128MB\n"
         << "log_min_messages = warning\n"
         << "log_connections = off\n";
    for (const auto& s : extra) conf << s << "\n";
  }
  if (absl::Status s = c->Start(); !s.ok()) return s;
  try {
    pqxx::connection conn(absl::StrCat("postgresql://postgres@127.0.0.1:", c->port_,
                                       "/postgres?application_name=saga-fault-setup"));
    pqxx::nontransaction txn(conn);
    txn.exec("CREATE DATABASE sagas");
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("CREATE DATABASE sagas: ", e.what()));
  }
  return c;
}

PgCluster::~PgCluster() {
  if (running_) (void)Stop("immediate");
  if (EnvInt("SAGA_FAULT_KEEP", 0) == 0) RemoveTree(dir_);
}

absl::Status PgCluster::Start() {
  CommandResult r =
      RunCommand({bin_ + "/pg_ctl", "-D", data_, "-l", log_, "-w", "-t", "120", "start"},
                 absl::Seconds(150), /*as_postgres=*/true);
  if (r.exit_code != 0) {
    return absl::UnavailableError(
        absl::StrCat("pg_ctl start failed (", r.exit_code, "): ", r.output, "\n", LogTail()));
  }
  running_ = true;
  return absl::OkStatus();
}

absl::Status PgCluster::Stop(const std::string& mode) {
  CommandResult r =
      RunCommand({bin_ + "/pg_ctl", "-D", data_, "-m", mode, "-w", "-t", "60", "stop"},
                 absl::Seconds(90), /*as_postgres=*/true);
  if (r.exit_code != 0) {
    return absl::UnavailableError(
        absl::StrCat("pg_ctl stop failed (", r.exit_code, "): ", r.output));
  }
  running_ = false;
  return absl::OkStatus();
}

std::string PgCluster::Url(const std::string& application_name) const {
  return absl::StrCat("postgresql://postgres@127.0.0.1:", port_,
                      "/sagas?application_name=", application_name);
}

std::string PgCluster::LogTail(size_t bytes) const {
  std::ifstream in(log_);
  std::stringstream ss;
  ss << in.rdbuf();
  std::string s = ss.str();
  return s.size() > bytes ? s.substr(s.size() - bytes) : s;
}

}  // namespace saga::fault
