// DevPostgres: the private PostgreSQL of `sagad --dev`.
//
// Start(dir) makes `dir` (created if needed, mode 0700) hold a PostgreSQL cluster in
// dir/pgdata, initialized on first use with the newest /usr/lib/postgresql/<version>/bin/initdb
// (or, for an existing cluster, the binaries of its version), and starts it with pg_ctl,
// listening only on a unix socket in `dir` (in a /tmp folder when `dir`'s path is too long for
// a socket). The superuser is `sagad` with trust authentication over that socket; sagad uses
// the `postgres` database. A second start reuses the cluster, so sagas survive restarts; a
// server left running by a killed sagad is adopted. Stop() runs `pg_ctl stop -m fast`.
//
// As root (initdb refuses to run as root), PostgreSQL runs as the `postgres` system user, or
// `nobody` when there is none, and `dir` is given to that user: it must be able to reach `dir`
// (every parent folder searchable).
//
// Output of initdb and pg_ctl goes to dir/initdb.log and dir/pg_ctl.log; the server logs to
// dir/postgres.log. A lock file (dir/sagad.lock) keeps a second sagad from using the same dir.
//
// Thread-safety: Start, Stop and the destructor belong to one thread (main); RequestStop may be
// called from another thread. Start must run before other threads that might fork exist, or at
// least while none holds a lock the child would need (the child only calls async-signal-safe
// functions).
//
// Status codes: NOT_FOUND (no PostgreSQL installed), FAILED_PRECONDITION (the dir is in use by
// another sagad, or not reachable by the PostgreSQL user), INTERNAL (initdb or pg_ctl failed;
// the message ends with the last lines of their log).
#pragma once

#include <sys/types.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace saga::server {

class DevPostgres {
 public:
  static absl::StatusOr<std::unique_ptr<DevPostgres>> Start(const std::string& dir);
  // Stop().
  ~DevPostgres();
  DevPostgres(const DevPostgres&) = delete;
  DevPostgres& operator=(const DevPostgres&) = delete;

  // libpq connection string (key=value) of the `postgres` database as user `sagad`.
  const std::string& url() const { return url_; }
  // The absolute data folder (the argument of Start).
  const std::string& dir() const { return dir_; }
  // "PostgreSQL 15" and where it is, for a log line.
  std::string Describe() const;

  // `pg_ctl stop -m fast`, waiting until the server is gone. Idempotent.
  void Stop();
  // Asks the postmaster for a fast shutdown (SIGINT) and returns at once.
  void RequestStop();

 private:
  DevPostgres() = default;
  // The postmaster's pid from postmaster.pid; 0 if none.
  int PostmasterPid() const;

  std::string dir_;
  std::string pgdata_;
  std::string bin_;
  std::string version_;
  std::string socket_dir_;
  bool temp_socket_dir_ = false;
  std::string url_;
  bool switch_user_ = false;
  uid_t uid_ = 0;
  gid_t gid_ = 0;
  std::string user_;
  int lock_fd_ = -1;
  bool stopped_ = false;
};

// The newest `<root>/<version>/bin` that holds initdb, pg_ctl and postgres, or
// `<root>/<prefer>/bin` when `prefer` is non-empty and installed. NOT_FOUND if none.
absl::StatusOr<std::string> FindPostgresBinDir(const std::string& root = "/usr/lib/postgresql",
                                               const std::string& prefer = "");

}  // namespace saga::server
