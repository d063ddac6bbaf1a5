// TestDatabase: a fresh, uniquely named, empty PostgreSQL database for one test, dropped when
// the object is destroyed. The server comes from SAGA_TEST_DATABASE_URL, or, when unset, from
// the libpq environment (PGHOST, PGPORT, PGUSER, PGPASSWORD, as exported by `pg_virtualenv`).
// The base string may be key=value pairs or a postgresql:// URI; url() names the new database
// in the same form.
//
// CREATE DATABASE is slow (it copies template1), so a background thread keeps up to two
// databases created ahead (no more than the tests left to run in this process) and runs the
// DROPs (WITH (FORCE)) after the owners are destroyed; whatever is left is dropped by a
// GoogleTest environment after the last test.
//
// TESTONLY (target saga::store_pg_testing). Thread-safe after Create.
//
// Status codes: Create returns kUnavailable when no server is reachable (the message says how
// to provide one); Execute returns kInternal with the server's message.
#pragma once

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace saga::store::pg {

class TestDatabase {
 public:
  static absl::StatusOr<std::unique_ptr<TestDatabase>> Create();
  // Drops the database (terminating any connection still open to it), in the background.
  ~TestDatabase();
  TestDatabase(const TestDatabase&) = delete;
  TestDatabase& operator=(const TestDatabase&) = delete;

  // Connection string of the new database.
  const std::string& url() const { return url_; }
  const std::string& name() const { return name_; }

  // Runs SQL (one or more statements, no parameters) on the test database, for test setup
  // and inspection.
  absl::Status Execute(const std::string& sql);
  // Runs a query and returns the first column of the first row as text ("" if no row or NULL).
  absl::StatusOr<std::string> QueryValue(const std::string& sql);

 private:
  TestDatabase(std::string name, std::string url);

  const std::string name_;
  const std::string url_;
};

}  // namespace saga::store::pg
