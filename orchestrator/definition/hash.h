// SHA-256 for content hashes: a definition's canonical form, a saga's input.
// Thread-safe (no shared state); cannot fail.
#pragma once

#include <string>
#include <string_view>

namespace saga::definition {

// The SHA-256 digest of `data` as 64 lowercase hex digits.
std::string Sha256Hex(std::string_view data);

}  // namespace saga::definition
