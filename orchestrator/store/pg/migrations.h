// The schema migrations embedded into the binary at build time (see embed_migrations.cmake),
// and the runner that applies them.
//
// Thread-safety: EmbeddedMigrations() returns immutable data. ApplyMigrations may run
// concurrently in several processes on one database: it serializes them with a session-level
// advisory lock.
//
// Status codes of ApplyMigrations: kUnavailable (cannot connect), kFailedPrecondition (the
// database holds a migration newer than this binary knows), kInternal (a migration failed).
#pragma once

#include <span>
#include <string>
#include <string_view>

#include "absl/status/status.h"

namespace saga::store::pg {

struct Migration {
  int version;
  std::string_view name;
  std::string_view sql;
};

// Sorted by version, which is unique.
std::span<const Migration> EmbeddedMigrations();

// Connects with `conninfo` and applies every embedded migration that the database lacks, each
// in its own transaction, recorded in saga_schema_migrations.
absl::Status ApplyMigrations(const std::string& conninfo);

}  // namespace saga::store::pg
