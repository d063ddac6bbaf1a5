// Helpers for libpq connection strings, which come in two forms: a URI
// ("postgresql://user@host:5432/db?sslmode=disable") or key=value pairs
// ("host=/tmp port=5433 dbname=x"; "" means: everything from PG* environment variables).
//
// Thread-safety: pure functions. They never log or return the string's secrets.
#pragma once

#include <string>
#include <string_view>

namespace saga::store::pg {

// True for "postgresql://..." and "postgres://...".
bool IsConnectionUri(std::string_view conninfo);

// True if `conninfo` names parameter `key` (as a key=value pair or URI query parameter).
bool HasConnectionParameter(std::string_view conninfo, std::string_view key);

// `conninfo` with parameter `key` set to `value`: appended as a URI query parameter
// (percent-encoded) or as a quoted key='value' pair (libpq takes the last occurrence).
std::string WithConnectionParameter(std::string_view conninfo, std::string_view key,
                                    std::string_view value);

// `conninfo` naming database `dbname`: the URI's path is replaced, or dbname='...' appended.
std::string WithDatabase(std::string_view conninfo, std::string_view dbname);

}  // namespace saga::store::pg
