#include "orchestrator/store/pg/conninfo.h"

#include <cctype>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"

namespace saga::store::pg {
namespace {

// This Abseil build has its own string_view type.
absl::string_view Absl(std::string_view text) {
  return absl::string_view(text.data(), text.size());
}

std::string PercentEncode(absl::string_view text) {
  std::string out;
  for (unsigned char c : text) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out.push_back(static_cast<char>(c));
    } else {
      absl::StrAppendFormat(&out, "%%%02X", c);
    }
  }
  return out;
}

std::string QuoteValue(absl::string_view value) {
  std::string out = "'";
  for (char c : value) {
    if (c == '\'' || c == '\\') out.push_back('\\');
    out.push_back(c);
  }
  out.push_back('\'');
  return out;
}

// Splits a URI into [scheme://authority] [/path] [?query].
struct UriParts {
  absl::string_view prefix;
  absl::string_view path;
  absl::string_view query;  // without '?'
  bool has_query = false;
};

UriParts SplitUri(absl::string_view uri) {
  UriParts parts;
  size_t scheme_end = uri.find("://");
  size_t authority_start = scheme_end == absl::string_view::npos ? 0 : scheme_end + 3;
  size_t query_start = uri.find('?', authority_start);
  absl::string_view before_query = uri.substr(0, query_start);
  size_t path_start = before_query.find('/', authority_start);
  if (path_start == absl::string_view::npos) {
    parts.prefix = before_query;
  } else {
    parts.prefix = before_query.substr(0, path_start);
    parts.path = before_query.substr(path_start);
  }
  if (query_start != absl::string_view::npos) {
    parts.has_query = true;
    parts.query = uri.substr(query_start + 1);
  }
  return parts;
}

}  // namespace

bool IsConnectionUri(std::string_view conninfo) {
  absl::string_view trimmed = absl::StripLeadingAsciiWhitespace(Absl(conninfo));
  return absl::StartsWith(trimmed, "postgresql://") || absl::StartsWith(trimmed, "postgres://");
}

bool HasConnectionParameter(std::string_view conninfo, std::string_view key) {
  if (IsConnectionUri(conninfo)) {
    UriParts parts = SplitUri(absl::StripAsciiWhitespace(Absl(conninfo)));
    for (absl::string_view pair : absl::StrSplit(parts.query, '&')) {
      absl::string_view name = pair.substr(0, pair.find('='));
      if (name == Absl(key)) return true;
    }
    return false;
  }
  // key=value pairs: look for the key at a word start followed by optional spaces and '='.
  size_t pos = 0;
  while ((pos = conninfo.find(key, pos)) != absl::string_view::npos) {
    bool word_start =
        pos == 0 || absl::ascii_isspace(static_cast<unsigned char>(conninfo[pos - 1]));
    size_t after = pos + key.size();
    while (after < conninfo.size() &&
           absl::ascii_isspace(static_cast<unsigned char>(conninfo[after]))) {
      ++after;
    }
    if (word_start && after < conninfo.size() && conninfo[after] == '=') return true;
    pos += key.size();
  }
  return false;
}

std::string WithConnectionParameter(std::string_view conninfo, std::string_view key,
                                    std::string_view value) {
  if (IsConnectionUri(conninfo)) {
    absl::string_view uri = absl::StripAsciiWhitespace(Absl(conninfo));
    UriParts parts = SplitUri(uri);
    std::string separator = !parts.has_query ? "?" : (parts.query.empty() ? "" : "&");
    return absl::StrCat(uri, separator, PercentEncode(Absl(key)), "=", PercentEncode(Absl(value)));
  }
  absl::string_view trimmed = absl::StripTrailingAsciiWhitespace(Absl(conninfo));
  return absl::StrCat(trimmed, trimmed.empty() ? "" : " ", Absl(key), "=", QuoteValue(Absl(value)));
}

std::string WithDatabase(std::string_view conninfo, std::string_view dbname) {
  if (IsConnectionUri(conninfo)) {
    UriParts parts = SplitUri(absl::StripAsciiWhitespace(Absl(conninfo)));
    std::string out = absl::StrCat(parts.prefix, "/", PercentEncode(Absl(dbname)));
    // A dbname query parameter would override the path: drop it.
    std::string query;
    for (absl::string_view pair : absl::StrSplit(parts.query, '&', absl::SkipEmpty())) {
      if (pair.substr(0, pair.find('=')) == "dbname") continue;
      absl::StrAppend(&query, query.empty() ? "" : "&", pair);
    }
    if (!query.empty()) absl::StrAppend(&out, "?", query);
    return out;
  }
  return WithConnectionParameter(conninfo, "dbname", dbname);
}

}  // namespace saga::store::pg
