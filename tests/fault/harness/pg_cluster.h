// PgCluster: a PostgreSQL 15 server of the test's own (initdb + pg_ctl on a data directory in
// a temp dir, listening on 127.0.0.1 and a free port), so that a scenario can stop it, restart it
// in immediate mode (a crash: no checkpoint, WAL replay at start) or keep it down. When the
// test runs as root, the server runs as the `postgres` user through `runuser` (initdb refuses
// root). Authentication is `trust` on loopback; the data directory is removed at destruction.
//
// fsync=off: the faults are process crashes, not machine crashes, so writes that reached the
// kernel survive `pg_ctl stop -m immediate`; synchronous_commit stays on, so an acknowledged
// commit has its WAL written before the reply.
//
// Binaries: $SAGA_FAULT_PG_BIN, else /usr/lib/postgresql/15/bin. Thread-compatible.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace saga::fault {

class PgCluster {
 public:
  // initdb, start, CREATE DATABASE sagas.
  static absl::StatusOr<std::unique_ptr<PgCluster>> Create(
      std::vector<std::string> extra_settings = {});
  ~PgCluster();
  PgCluster(const PgCluster&) = delete;
  PgCluster& operator=(const PgCluster&) = delete;

  absl::Status Start();
  // mode: "immediate" (crash-like), "fast" or "smart".
  absl::Status Stop(const std::string& mode = "immediate");
  bool running() const { return running_; }

  int port() const { return port_; }
  const std::string& dir() const { return dir_; }
  // A connection URI for database `sagas` carrying application_name (the harness names each
  // sagad's connections after its owner id).
  std::string Url(const std::string& application_name = "saga-fault") const;
  // The server log (for reports).
  std::string LogTail(size_t bytes = 4000) const;

 private:
  PgCluster() = default;
  std::string bin_;
  std::string dir_;
  std::string data_;
  std::string log_;
  int port_ = 0;
  bool running_ = false;
};

}  // namespace saga::fault
