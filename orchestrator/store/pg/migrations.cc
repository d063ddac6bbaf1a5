#include "orchestrator/store/pg/migrations.h"

#include <algorithm>
#include <memory>
#include <set>
#include <vector>

#include <pqxx/pqxx>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "orchestrator/store/pg/connection_pool.h"
#include "orchestrator/store/pg/statements.h"

namespace saga::store::pg {
namespace {

// Runs `fn` in its own transaction on `conn`; exceptions become statuses.
template <typename Fn>
absl::Status InTransaction(pqxx::connection& conn, std::string_view op, Fn fn) {
  bool committing = false;
  try {
    pqxx::work txn(conn);
    absl::Status status = fn(txn);
    if (!status.ok()) {
      txn.abort();
      return status;
    }
    committing = true;
    txn.commit();
    return absl::OkStatus();
  } catch (const std::exception& e) {
    return StatusFromException(op, e, committing);
  }
}

absl::Status ApplyLocked(pqxx::connection& conn) {
  std::vector<Migration> known(EmbeddedMigrations().begin(), EmbeddedMigrations().end());
  std::sort(known.begin(), known.end(),
            [](const Migration& a, const Migration& b) { return a.version < b.version; });
  const int newest_known = known.empty() ? 0 : known.back().version;

  absl::Status status = InTransaction(conn, "create saga_schema_migrations", [](pqxx::work& txn) {
    txn.exec(std::string(sql::kCreateMigrationsTable));
    return absl::OkStatus();
  });
  if (!status.ok()) return status;

  std::set<int> applied;
  status = InTransaction(conn, "read saga_schema_migrations", [&](pqxx::work& txn) {
    applied.clear();
    for (const pqxx::row& row :
         txn.exec_prepared(std::string(sql::kSelectMigrationVersions.name))) {
      applied.insert(row[0].as<int>());
    }
    return absl::OkStatus();
  });
  if (!status.ok()) return status;

  if (!applied.empty() && *applied.rbegin() > newest_known) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "the database schema is at migration %d, newer than this binary knows (%d); "
        "upgrade the binary",
        *applied.rbegin(), newest_known));
  }

  for (const Migration& migration : known) {
    if (applied.contains(migration.version)) continue;
    const std::string op =
        absl::StrFormat("apply migration V%03d__%s", migration.version, migration.name);
    status = InTransaction(conn, op, [&](pqxx::work& txn) {
      txn.exec(std::string(migration.sql));
      txn.exec_prepared(std::string(sql::kInsertMigration.name), migration.version,
                        std::string(migration.name));
      return absl::OkStatus();
    });
    if (!status.ok()) {
      // A failed migration is a bug or a damaged database, never a reason to retry blindly.
      if (status.code() != absl::StatusCode::kUnavailable &&
          status.code() != absl::StatusCode::kUnknown) {
        return absl::InternalError(status.message());
      }
      return status;
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ApplyMigrations(const std::string& conninfo) {
  absl::StatusOr<std::unique_ptr<pqxx::connection>> conn =
      OpenConnection(conninfo, sql::kMigrationStatements);
  if (!conn.ok()) return conn.status();
  // Notices such as "relation already exists, skipping" are expected here.
  pqxx::quiet_errorhandler quiet(**conn);

  try {
    pqxx::nontransaction lock_txn(**conn);
    lock_txn.exec_prepared(std::string(sql::kMigrationLock.name), sql::kMigrationLockKey);
  } catch (const std::exception& e) {
    return StatusFromException("lock migrations", e, /*committing=*/false);
  }
  absl::Status status = ApplyLocked(**conn);
  try {
    pqxx::nontransaction unlock_txn(**conn);
    unlock_txn.exec_prepared(std::string(sql::kMigrationUnlock.name), sql::kMigrationLockKey);
  } catch (const std::exception&) {
    // Closing the connection below releases the session lock anyway.
  }
  return status;
}

}  // namespace saga::store::pg
