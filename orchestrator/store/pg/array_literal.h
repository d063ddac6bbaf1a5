// ArrayLiteral builds the text form of a one-dimensional PostgreSQL array ('{"a","b",NULL}'),
// the way the store passes many values in one parameter (libpqxx 6.4 has no array parameters);
// the SQL casts it ($1::uuid[], $2::jsonb[], ...) and expands it with unnest().
//
// Every element is double-quoted with '"' and '\' backslash-escaped, so any text (braces,
// commas, quotes, whitespace, the word NULL, unicode, the empty string) round-trips exactly;
// SQL NULL elements are written as an unquoted NULL. A NUL byte cannot be sent to PostgreSQL
// at all: Build() then fails with kInvalidArgument.
//
// Thread-compatible (one builder per thread).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace saga::store::pg {

class ArrayLiteral {
 public:
  ArrayLiteral() = default;

  void Add(std::string_view element);
  void Add(int64_t element);
  void AddBool(bool element);
  void AddNull();
  // Adds the element, or NULL for nullopt.
  void AddOptional(const std::optional<std::string>& element);

  size_t size() const { return size_; }

  // The literal, e.g. {"a","b\\"c",NULL}. kInvalidArgument if an element held a NUL byte.
  absl::StatusOr<std::string> Build() const;

 private:
  void StartElement();

  std::string text_ = "{";
  size_t size_ = 0;
  bool has_nul_ = false;
};

// Convenience for tests and small call sites.
absl::StatusOr<std::string> EncodeArrayLiteral(const std::vector<std::optional<std::string>>& v);

}  // namespace saga::store::pg
