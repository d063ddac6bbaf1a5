#include "orchestrator/definition/loader.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <exception>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "google/protobuf/compiler/importer.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/descriptor.pb.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"
#include "nlohmann/json.hpp"
#include "orchestrator/definition/hash.h"

#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/exceptions.h>
#include <yaml-cpp/mark.h>
#include <yaml-cpp/parser.h>

#ifndef SAGA_PROTOBUF_INCLUDE_DIR
#define SAGA_PROTOBUF_INCLUDE_DIR "/usr/include"
#endif

namespace saga::definition {
namespace {

namespace pb = google::protobuf;
using nlohmann::json;

// Parsing limits (reliability.md §5.5). Aliases are allowed, a few of them: an alias bomb
// is stopped by the alias count and, above all, by the node count, which counts every node an
// alias expands to.
constexpr int kMaxDepth = 64;
constexpr int64_t kMaxNodes = 100000;
constexpr int kMaxAliases = 100;
constexpr int kMaxTemplateDepth = 32;
// Bounds on durations.
constexpr absl::Duration kMaxTimeout = absl::Hours(1);
constexpr absl::Duration kMaxBackoff = absl::Hours(1);
// Integers beyond this magnitude lose precision in google.protobuf.Value (a double).
constexpr uint64_t kMaxExactDoubleInteger = uint64_t{1} << 53;

// ---------------------------------------------------------------------------------------------
// Errors while reading text: a message and, where known, a 1-based line and column.

struct SourceError {
  std::string message;
  int line = 0;  // 0: unknown
  int column = 0;
};

[[noreturn]] void Fail(const YAML::Mark& mark, std::string message) {
  SourceError error{std::move(message)};
  if (!mark.is_null()) {
    error.line = mark.line + 1;
    error.column = mark.column + 1;
  }
  throw error;
}

absl::Status SourceStatus(absl::string_view source, const SourceError& error) {
  if (error.line > 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ":", error.line, ":", error.column, ": ", error.message));
  }
  return absl::InvalidArgumentError(absl::StrCat(source, ": ", error.message));
}

// Line and column (1-based) of byte `offset` in `text`.
std::pair<int, int> LineColumn(absl::string_view text, size_t offset) {
  offset = std::min(offset, text.size());
  int line = 1;
  size_t line_start = 0;
  for (size_t i = 0; i < offset; ++i) {
    if (text[i] == '\n') {
      ++line;
      line_start = i + 1;
    }
  }
  return {line, static_cast<int>(offset - line_start) + 1};
}

// Returns the offset of the first byte that is not valid UTF-8, or npos.
size_t FindInvalidUtf8(absl::string_view text) {
  size_t i = 0;
  const size_t n = text.size();
  while (i < n) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    int length = 0;
    uint32_t code = 0;
    if ((c & 0xE0) == 0xC0) {
      length = 2;
      code = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      length = 3;
      code = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      length = 4;
      code = c & 0x07;
    } else {
      return i;
    }
    if (i + static_cast<size_t>(length) > n) return i;
    for (int k = 1; k < length; ++k) {
      const auto cc = static_cast<unsigned char>(text[i + static_cast<size_t>(k)]);
      if ((cc & 0xC0) != 0x80) return i;
      code = (code << 6) | (cc & 0x3F);
    }
    const bool overlong = (length == 2 && code < 0x80) || (length == 3 && code < 0x800) ||
                          (length == 4 && code < 0x10000);
    if (overlong || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF)) return i;
    i += static_cast<size_t>(length);
  }
  return absl::string_view::npos;
}

// Where each node of the parsed document was, by JSON pointer ("/steps/1/retry"); filled for
// YAML only. Used to put line numbers on schema errors.
using Marks = absl::flat_hash_map<std::string, std::pair<int, int>>;

// ---------------------------------------------------------------------------------------------
// YAML -> JSON. The event parser is used rather than YAML::Node so that aliases can be counted
// and bounded before they are expanded, depth is bounded while parsing, and every node keeps
// its line and column.

bool IsDecimalInteger(absl::string_view s) {
  if (!s.empty() && (s[0] == '-' || s[0] == '+')) s.remove_prefix(1);
  if (s.empty()) return false;
  return std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

bool IsFloat(absl::string_view s) {
  // [-+]? ( \. [0-9]+ | [0-9]+ ( \. [0-9]* )? ) ( [eE] [-+]? [0-9]+ )?   (YAML 1.2 core schema)
  size_t i = 0;
  auto digits = [&] {
    size_t start = i;
    while (i < s.size() && s[i] >= '0' && s[i] <= '9') ++i;
    return i - start;
  };
  if (i < s.size() && (s[i] == '-' || s[i] == '+')) ++i;
  if (i < s.size() && s[i] == '.') {
    ++i;
    if (digits() == 0) return false;
  } else {
    if (digits() == 0) return false;
    if (i < s.size() && s[i] == '.') {
      ++i;
      digits();
    }
  }
  if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
    ++i;
    if (i < s.size() && (s[i] == '-' || s[i] == '+')) ++i;
    if (digits() == 0) return false;
  }
  return i == s.size();
}

json ParseYamlInteger(absl::string_view s, const YAML::Mark& mark) {
  absl::string_view digits = s;
  bool negative = false;
  if (!digits.empty() && (digits[0] == '-' || digits[0] == '+')) {
    negative = digits[0] == '-';
    digits.remove_prefix(1);
  }
  int base = 10;
  if (digits.size() > 2 && digits[0] == '0' && (digits[1] == 'x' || digits[1] == 'o')) {
    base = digits[1] == 'x' ? 16 : 8;
    digits.remove_prefix(2);
  }
  uint64_t magnitude = 0;
  auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), magnitude, base);
  if (ec == std::errc::result_out_of_range ||
      (negative &&
       magnitude > uint64_t{1} + static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))) {
    Fail(mark, absl::StrCat("integer ", s, " is out of the 64-bit range"));
  }
  if (ec != std::errc() || end != digits.data() + digits.size()) {
    Fail(mark, absl::StrCat("'", s, "' is not an integer"));
  }
  if (!negative) return json(magnitude);
  if (magnitude == 0) return json(int64_t{0});
  return json(static_cast<int64_t>(~(magnitude - 1)));  // -magnitude without overflow
}

json ParseYamlFloat(absl::string_view s, const YAML::Mark& mark) {
  std::string lower = absl::AsciiStrToLower(s);
  if (lower == ".nan") return json("NaN");
  if (lower == ".inf" || lower == "+.inf") return json("Infinity");
  if (lower == "-.inf") return json("-Infinity");
  absl::string_view digits = s;
  if (!digits.empty() && digits[0] == '+') digits.remove_prefix(1);
  double value = 0;
  auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), value);
  if (ec == std::errc::result_out_of_range) {
    Fail(mark, absl::StrCat("number ", s, " is out of range"));
  }
  if (ec != std::errc() || end != digits.data() + digits.size()) {
    Fail(mark, absl::StrCat("'", s, "' is not a number"));
  }
  return json(value);
}

// A plain (unquoted) scalar, typed by the YAML 1.2 core schema.
json PlainScalar(const std::string& s, const YAML::Mark& mark) {
  if (s.empty() || s == "~" || s == "null" || s == "Null" || s == "NULL") return json(nullptr);
  if (s == "true" || s == "True" || s == "TRUE") return json(true);
  if (s == "false" || s == "False" || s == "FALSE") return json(false);
  if (IsDecimalInteger(s)) return ParseYamlInteger(s, mark);
  if (s.size() > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'o')) {
    const bool hex = s[1] == 'x';
    const bool all = std::all_of(s.begin() + 2, s.end(), [hex](char c) {
      return hex ? absl::ascii_isxdigit(static_cast<unsigned char>(c)) : (c >= '0' && c <= '7');
    });
    if (all) return ParseYamlInteger(s, mark);
  }
  if (IsFloat(s)) return ParseYamlFloat(s, mark);
  std::string lower = absl::AsciiStrToLower(s);
  if (lower == ".nan" || lower == ".inf" || lower == "+.inf" || lower == "-.inf") {
    return ParseYamlFloat(s, mark);
  }
  return json(s);
}

constexpr absl::string_view kYamlTagPrefix = "tag:yaml.org,2002:";

json TypedScalar(const std::string& tag, const std::string& value, const YAML::Mark& mark) {
  if (tag == "!") return json(value);  // quoted or block scalar
  if (tag == "?" || tag.empty()) return PlainScalar(value, mark);
  if (absl::StartsWith(tag, kYamlTagPrefix)) {
    absl::string_view type = absl::string_view(tag).substr(kYamlTagPrefix.size());
    if (type == "str") return json(value);
    if (type == "null") return json(nullptr);
    if (type == "bool") {
      json v = PlainScalar(value, mark);
      if (!v.is_boolean()) Fail(mark, absl::StrCat("'", value, "' is not a boolean"));
      return v;
    }
    if (type == "int") {
      if (!IsDecimalInteger(value)) Fail(mark, absl::StrCat("'", value, "' is not an integer"));
      return ParseYamlInteger(value, mark);
    }
    if (type == "float") {
      if (IsDecimalInteger(value)) return ParseYamlFloat(value, mark);
      std::string lower = absl::AsciiStrToLower(value);
      if (!IsFloat(value) && lower != ".nan" && lower != ".inf" && lower != "+.inf" &&
          lower != "-.inf") {
        Fail(mark, absl::StrCat("'", value, "' is not a number"));
      }
      return ParseYamlFloat(value, mark);
    }
  }
  Fail(mark, absl::StrCat("unsupported YAML tag '", tag, "'"));
}

void CheckContainerTag(const std::string& tag, absl::string_view kind, const YAML::Mark& mark) {
  if (tag.empty() || tag == "?" || tag == "!" || tag == absl::StrCat(kYamlTagPrefix, kind)) return;
  Fail(mark, absl::StrCat("unsupported YAML tag '", tag, "'"));
}

class YamlToJson final : public YAML::EventHandler {
 public:
  explicit YamlToJson(Marks* marks) : marks_(marks) {}

  bool done() const { return done_; }
  json TakeResult() { return std::move(result_); }

  void OnDocumentStart(const YAML::Mark& /*mark*/) override {}
  void OnDocumentEnd() override {}

  void OnNull(const YAML::Mark& mark, YAML::anchor_t anchor) override {
    if (KeyExpected()) Fail(mark, "a mapping key must not be empty");
    CountNodes(1, mark);
    RecordMark(mark);
    AddValue(json(nullptr), anchor, 1);
  }

  void OnAlias(const YAML::Mark& mark, YAML::anchor_t anchor) override {
    if (++aliases_ > kMaxAliases) {
      Fail(mark, absl::StrCat("more than ", kMaxAliases, " YAML aliases"));
    }
    auto it = anchors_.find(anchor);
    if (it == anchors_.end()) Fail(mark, "alias to an unknown or unfinished anchor");
    if (KeyExpected()) Fail(mark, "an alias cannot be a mapping key");
    CountNodes(it->second.nodes, mark);
    RecordMark(mark);
    AddValue(json(it->second.value), 0, it->second.nodes);
  }

  void OnScalar(const YAML::Mark& mark, const std::string& tag, YAML::anchor_t anchor,
                const std::string& value) override {
    if (value.find('\0') != std::string::npos) Fail(mark, "NUL character in a string");
    CountNodes(1, mark);
    if (KeyExpected()) {
      SetKey(value, mark);
      if (anchor != 0) anchors_[anchor] = Anchored{json(value), 1};
      return;
    }
    RecordMark(mark);
    AddValue(TypedScalar(tag, value, mark), anchor, 1);
  }

  void OnSequenceStart(const YAML::Mark& mark, const std::string& tag, YAML::anchor_t anchor,
                       YAML::EmitterStyle::value /*style*/) override {
    CheckContainerTag(tag, "seq", mark);
    Push(json::array(), mark, anchor);
  }
  void OnSequenceEnd() override { Pop(); }

  void OnMapStart(const YAML::Mark& mark, const std::string& tag, YAML::anchor_t anchor,
                  YAML::EmitterStyle::value /*style*/) override {
    CheckContainerTag(tag, "map", mark);
    Push(json::object(), mark, anchor);
  }
  void OnMapEnd() override { Pop(); }

 private:
  struct Frame {
    json value;
    YAML::anchor_t anchor = 0;
    int64_t nodes_before = 0;
    std::string pointer;
    bool has_key = false;
    std::string key;
  };
  struct Anchored {
    json value;
    int64_t nodes = 0;
  };

  bool KeyExpected() const {
    return !stack_.empty() && stack_.back().value.is_object() && !stack_.back().has_key;
  }

  void CountNodes(int64_t n, const YAML::Mark& mark) {
    nodes_ += n;
    if (nodes_ > kMaxNodes) {
      Fail(mark, absl::StrCat("the document has more than ", kMaxNodes,
                              " nodes (counting what aliases expand to)"));
    }
  }

  // The pointer of the next value added to the innermost container.
  std::string ChildPointer() const {
    if (stack_.empty()) return std::string();
    const Frame& top = stack_.back();
    if (top.value.is_object()) return absl::StrCat(top.pointer, "/", top.key);
    return absl::StrCat(top.pointer, "/", top.value.size());
  }

  // Records where the next value starts (mapping members are recorded at their key).
  void RecordMark(const YAML::Mark& mark) {
    if (!stack_.empty() && stack_.back().value.is_object()) return;
    if (!mark.is_null()) {
      marks_->emplace(ChildPointer(), std::make_pair(mark.line + 1, mark.column + 1));
    }
  }

  void SetKey(const std::string& key, const YAML::Mark& mark) {
    Frame& top = stack_.back();
    if (top.value.contains(key)) Fail(mark, absl::StrCat("duplicate key '", key, "'"));
    top.key = key;
    top.has_key = true;
    if (!mark.is_null()) {
      marks_->emplace(ChildPointer(), std::make_pair(mark.line + 1, mark.column + 1));
    }
  }

  void AddValue(json value, YAML::anchor_t anchor, int64_t nodes) {
    if (anchor != 0) anchors_[anchor] = Anchored{value, nodes};
    if (stack_.empty()) {
      result_ = std::move(value);
      done_ = true;
      return;
    }
    Frame& top = stack_.back();
    if (top.value.is_object()) {
      top.value.emplace(std::move(top.key), std::move(value));
      top.key.clear();
      top.has_key = false;
    } else {
      top.value.push_back(std::move(value));
    }
  }

  void Push(json value, const YAML::Mark& mark, YAML::anchor_t anchor) {
    if (KeyExpected()) Fail(mark, "a mapping key must be a scalar");
    if (stack_.size() >= static_cast<size_t>(kMaxDepth)) {
      Fail(mark, absl::StrCat("nesting is deeper than ", kMaxDepth, " levels"));
    }
    CountNodes(1, mark);
    RecordMark(mark);
    Frame frame;
    frame.pointer = ChildPointer();
    frame.value = std::move(value);
    frame.anchor = anchor;
    frame.nodes_before = nodes_ - 1;
    stack_.push_back(std::move(frame));
  }

  void Pop() {
    Frame frame = std::move(stack_.back());
    stack_.pop_back();
    AddValue(std::move(frame.value), frame.anchor, nodes_ - frame.nodes_before);
  }

  Marks* marks_;
  std::vector<Frame> stack_;
  absl::flat_hash_map<YAML::anchor_t, Anchored> anchors_;
  int64_t nodes_ = 0;
  int aliases_ = 0;
  json result_;
  bool done_ = false;
};

json ParseYaml(absl::string_view text, Marks* marks) {
  std::istringstream in{std::string(text)};
  YAML::Parser parser(in);
  YamlToJson builder(marks);
  if (!parser.HandleNextDocument(builder) || !builder.done()) {
    throw SourceError{"the document is empty"};
  }
  json result = builder.TakeResult();
  YamlToJson rest(marks);
  if (parser.HandleNextDocument(rest)) {
    throw SourceError{"more than one YAML document ('---'); a definition is one document"};
  }
  return result;
}

// JSON text goes through nlohmann::json: exact for 64-bit integers and strict JSON. The
// callback bounds depth and size and rejects duplicate keys and NUL characters.
json ParseJson(absl::string_view text) {
  int64_t nodes = 0;
  std::vector<std::set<std::string>> keys;
  json::parser_callback_t callback = [&](int depth, json::parse_event_t event,
                                         json& parsed) -> bool {
    switch (event) {
      case json::parse_event_t::object_start:
      case json::parse_event_t::array_start:
        if (depth >= kMaxDepth) {
          throw SourceError{absl::StrCat("nesting is deeper than ", kMaxDepth, " levels")};
        }
        if (event == json::parse_event_t::object_start) keys.emplace_back();
        ++nodes;
        break;
      case json::parse_event_t::key: {
        const auto& key = parsed.get_ref<const std::string&>();
        if (key.find('\0') != std::string::npos) throw SourceError{"NUL character in a key"};
        if (!keys.empty() && !keys.back().insert(key).second) {
          throw SourceError{absl::StrCat("duplicate key '", key, "'")};
        }
        break;
      }
      case json::parse_event_t::object_end:
        if (!keys.empty()) keys.pop_back();
        break;
      case json::parse_event_t::value:
        ++nodes;
        if (parsed.is_string() &&
            parsed.get_ref<const std::string&>().find('\0') != std::string::npos) {
          throw SourceError{"NUL character in a string"};
        }
        break;
      default:
        break;
    }
    if (nodes > kMaxNodes) {
      throw SourceError{absl::StrCat("the document has more than ", kMaxNodes, " nodes")};
    }
    return true;
  };
  try {
    return json::parse(text.begin(), text.end(), callback);
  } catch (const json::parse_error& e) {
    // e.what(): "[json.exception.parse_error.101] parse error at line 1, column 5: <what>"
    absl::string_view what = e.what();
    size_t colon = what.find(": ", what.find("parse error"));
    std::string detail =
        colon == absl::string_view::npos ? std::string(what) : std::string(what.substr(colon + 2));
    auto [line, column] = LineColumn(text, e.byte == 0 ? 0 : e.byte - 1);
    throw SourceError{std::move(detail), line, column};
  }
}

// ---------------------------------------------------------------------------------------------
// Checking the JSON against the SagaDefinition schema before protobuf parses it, so that every
// error names the field path (and line) and says what was expected.

std::string Describe(const json& value) {
  switch (value.type()) {
    case json::value_t::null:
      return "null";
    case json::value_t::object:
      return "an object";
    case json::value_t::array:
      return "a list";
    case json::value_t::boolean:
      return absl::StrCat("boolean ", value.get<bool>() ? "true" : "false");
    case json::value_t::string: {
      std::string s = value.get<std::string>();
      if (s.size() > 40) s = absl::StrCat(s.substr(0, 40), "...");
      return absl::StrCat("string \"", s, "\"");
    }
    default:
      return absl::StrCat("number ", value.dump());
  }
}

const pb::FieldDescriptor* FindField(const pb::Descriptor* message, absl::string_view key) {
  if (const auto* field = message->FindFieldByName(std::string(key))) return field;
  for (int i = 0; i < message->field_count(); ++i) {
    if (message->field(i)->json_name() == key) return message->field(i);
  }
  return nullptr;
}

std::string FieldNames(const pb::Descriptor* message) {
  std::vector<std::string> names;
  for (int i = 0; i < message->field_count(); ++i) names.push_back(message->field(i)->name());
  return absl::StrJoin(names, ", ");
}

bool IsWellKnown(const pb::Descriptor* message) {
  return absl::StartsWith(message->full_name(), "google.protobuf.");
}

class SchemaChecker {
 public:
  explicit SchemaChecker(const Marks& marks) : marks_(marks) {}

  void CheckMessage(const json& value, const pb::Descriptor* message, const std::string& path,
                    const std::string& pointer) const {
    if (message->full_name() == "google.protobuf.Value") {
      CheckValueLiteral(value, path, pointer);
      return;
    }
    if (IsWellKnown(message) || value.is_null()) return;
    if (!value.is_object()) {
      Error(path, pointer,
            absl::StrCat("expected an object (", message->name(), "), got ", Describe(value)));
    }
    for (const auto& [key, member] : value.items()) {
      const std::string member_path = path.empty() ? key : absl::StrCat(path, ".", key);
      const std::string member_pointer = absl::StrCat(pointer, "/", key);
      const pb::FieldDescriptor* field = FindField(message, key);
      if (field == nullptr) {
        Error(path.empty() ? std::string("(top level)") : path, member_pointer,
              absl::StrCat("unknown field '", key, "' (valid fields: ", FieldNames(message), ")"));
      }
      CheckField(member, field, member_path, member_pointer);
    }
  }

 private:
  [[noreturn]] void Error(const std::string& path, const std::string& pointer,
                          absl::string_view what) const {
    SourceError error{absl::StrCat(path, ": ", what)};
    // The nearest node with a known position: the node itself, else its closest ancestor.
    std::string p = pointer;
    while (true) {
      auto it = marks_.find(p);
      if (it != marks_.end()) {
        error.line = it->second.first;
        error.column = it->second.second;
        break;
      }
      if (p.empty()) break;
      p.resize(p.rfind('/'));
    }
    throw error;
  }

  void CheckField(const json& value, const pb::FieldDescriptor* field, const std::string& path,
                  const std::string& pointer) const {
    if (value.is_null()) return;  // protobuf reads null as "not set"
    if (field->is_map()) {
      if (!value.is_object()) {
        Error(path, pointer,
              absl::StrCat("expected a mapping of names to entries, got ", Describe(value)));
      }
      const pb::FieldDescriptor* value_field = field->message_type()->map_value();
      for (const auto& [key, entry] : value.items()) {
        CheckSingular(entry, value_field, absl::StrCat(path, ".", key),
                      absl::StrCat(pointer, "/", key));
      }
      return;
    }
    if (field->is_repeated()) {
      if (!value.is_array()) {
        Error(path, pointer, absl::StrCat("expected a list, got ", Describe(value)));
      }
      for (size_t i = 0; i < value.size(); ++i) {
        std::string element_path = absl::StrCat(path, "[", i, "]");
        const json& element = value[i];
        if (element.is_object()) {
          auto name = element.find("name");
          if (name != element.end() && name->is_string()) {
            absl::StrAppend(&element_path, " (", name->get<std::string>(), ")");
          }
        }
        CheckSingular(element, field, element_path, absl::StrCat(pointer, "/", i));
      }
      return;
    }
    CheckSingular(value, field, path, pointer);
  }

  void CheckSingular(const json& value, const pb::FieldDescriptor* field, const std::string& path,
                     const std::string& pointer) const {
    using Type = pb::FieldDescriptor::CppType;
    switch (field->cpp_type()) {
      case Type::CPPTYPE_MESSAGE:
        CheckMessage(value, field->message_type(), path, pointer);
        return;
      case Type::CPPTYPE_STRING:
        if (!value.is_string()) {
          const bool duration = absl::StrContains(field->name(), "timeout") ||
                                absl::StrContains(field->name(), "backoff");
          Error(path, pointer,
                absl::StrCat(duration ? "expected a duration string such as \"2s\" or "
                                        "\"500ms\", got "
                                      : "expected a string, got ",
                             Describe(value)));
        }
        return;
      case Type::CPPTYPE_BOOL:
        if (!value.is_boolean()) {
          Error(path, pointer,
                absl::StrCat("expected a boolean (true or false), got ", Describe(value)));
        }
        return;
      case Type::CPPTYPE_DOUBLE:
      case Type::CPPTYPE_FLOAT:
        if (value.is_number()) return;
        if (value.is_string()) {
          const auto& s = value.get_ref<const std::string&>();
          if (s == "NaN" || s == "Infinity" || s == "-Infinity" || IsFloat(s)) return;
        }
        Error(path, pointer, absl::StrCat("expected a number, got ", Describe(value)));
      case Type::CPPTYPE_ENUM:
        if (value.is_string() || value.is_number_integer()) return;
        Error(path, pointer, absl::StrCat("expected an enum value name, got ", Describe(value)));
      case Type::CPPTYPE_INT32:
      case Type::CPPTYPE_INT64:
      case Type::CPPTYPE_UINT32:
      case Type::CPPTYPE_UINT64:
        CheckInteger(value, field, path, pointer);
        return;
    }
  }

  void CheckInteger(const json& value, const pb::FieldDescriptor* field, const std::string& path,
                    const std::string& pointer) const {
    using Type = pb::FieldDescriptor::CppType;
    json number = value;
    if (value.is_string()) {
      // proto3 JSON also accepts integers written as strings.
      const auto& s = value.get_ref<const std::string&>();
      if (!IsDecimalInteger(s) || s[0] == '+') {
        Error(path, pointer, absl::StrCat("expected an integer, got ", Describe(value)));
      }
      number = json::parse(s, nullptr, /*allow_exceptions=*/false);
    }
    if (!number.is_number_integer()) {
      Error(path, pointer, absl::StrCat("expected an integer, got ", Describe(value)));
    }
    const bool is_unsigned = number.is_number_unsigned();
    const int64_t as_signed = is_unsigned ? 0 : number.get<int64_t>();
    const uint64_t as_unsigned = is_unsigned ? number.get<uint64_t>() : 0;
    bool in_range = true;
    switch (field->cpp_type()) {
      case Type::CPPTYPE_INT32:
        in_range = is_unsigned ? as_unsigned <= static_cast<uint64_t>(INT32_MAX)
                               : (as_signed >= INT32_MIN && as_signed <= INT32_MAX);
        break;
      case Type::CPPTYPE_INT64:
        in_range = !is_unsigned || as_unsigned <= static_cast<uint64_t>(INT64_MAX);
        break;
      case Type::CPPTYPE_UINT32:
        in_range = is_unsigned ? as_unsigned <= UINT32_MAX : as_signed >= 0;
        break;
      default:
        in_range = is_unsigned || as_signed >= 0;
        break;
    }
    if (!in_range) {
      Error(path, pointer,
            absl::StrCat(number.dump(), " is out of range for ", field->cpp_type_name()));
    }
  }

  // Request templates are google.protobuf.Value: any JSON, but numbers are doubles there, so an
  // integer literal beyond 2^53 would silently change. References are not affected.
  // Templates nest at most kMaxTemplateDepth levels: each level is two messages in protobuf
  // (Value and Struct or ListValue), whose parsers stop at 100 nested messages.
  void CheckValueLiteral(const json& value, const std::string& path, const std::string& pointer,
                         int depth = 0) const {
    if ((value.is_object() || value.is_array()) && depth >= kMaxTemplateDepth) {
      Error(path, pointer,
            absl::StrCat("request templates nest at most ", kMaxTemplateDepth, " levels"));
    }
    if (value.is_object()) {
      for (const auto& [key, member] : value.items()) {
        CheckValueLiteral(member, absl::StrCat(path, ".", key), absl::StrCat(pointer, "/", key),
                          depth + 1);
      }
    } else if (value.is_array()) {
      for (size_t i = 0; i < value.size(); ++i) {
        CheckValueLiteral(value[i], absl::StrCat(path, "[", i, "]"), absl::StrCat(pointer, "/", i),
                          depth + 1);
      }
    } else if (value.is_number_integer()) {
      const uint64_t magnitude =
          value.is_number_unsigned()
              ? value.get<uint64_t>()
              : (value.get<int64_t>() < 0
                     ? uint64_t{0} - static_cast<uint64_t>(value.get<int64_t>())
                     : static_cast<uint64_t>(value.get<int64_t>()));
      if (magnitude > kMaxExactDoubleInteger) {
        Error(path, pointer,
              absl::StrCat("integer ", value.dump(),
                           " cannot be kept exactly in a request template (numbers there are "
                           "doubles); write it as a string: \"",
                           value.dump(), "\""));
      }
    } else if (value.is_number_float() && !std::isfinite(value.get<double>())) {
      Error(path, pointer, "numbers must be finite");
    }
  }

  const Marks& marks_;
};

// ---------------------------------------------------------------------------------------------
// Validation and compilation.

bool ValidName(absl::string_view name, size_t max_length, bool allow_dot) {
  if (name.empty() || name.size() > max_length) return false;
  return std::all_of(name.begin(), name.end(), [allow_dot](char c) {
    return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' ||
           (allow_dot && c == '.');
  });
}

bool ValidIdentifier(absl::string_view s) {
  if (s.empty()) return false;
  if (!absl::ascii_isalpha(static_cast<unsigned char>(s[0])) && s[0] != '_') return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '_';
  });
}

// Splits "package.Service/Method" into the service's full name and the method name.
bool SplitMethod(absl::string_view text, std::string* service, std::string* method) {
  size_t slash = text.find('/');
  if (slash == absl::string_view::npos || text.find('/', slash + 1) != absl::string_view::npos) {
    return false;
  }
  absl::string_view service_part = text.substr(0, slash);
  absl::string_view method_part = text.substr(slash + 1);
  if (!ValidIdentifier(method_part) || service_part.empty()) return false;
  size_t start = 0;
  while (true) {
    size_t dot = service_part.find('.', start);
    absl::string_view piece = service_part.substr(
        start, dot == absl::string_view::npos ? absl::string_view::npos : dot - start);
    if (!ValidIdentifier(piece)) return false;
    if (dot == absl::string_view::npos) break;
    start = dot + 1;
  }
  *service = std::string(service_part);
  *method = std::string(method_part);
  return true;
}

struct CodeName {
  absl::string_view name;
  absl::StatusCode code;
};
constexpr CodeName kCodeNames[] = {
    {"CANCELLED", absl::StatusCode::kCancelled},
    {"UNKNOWN", absl::StatusCode::kUnknown},
    {"INVALID_ARGUMENT", absl::StatusCode::kInvalidArgument},
    {"DEADLINE_EXCEEDED", absl::StatusCode::kDeadlineExceeded},
    {"NOT_FOUND", absl::StatusCode::kNotFound},
    {"ALREADY_EXISTS", absl::StatusCode::kAlreadyExists},
    {"PERMISSION_DENIED", absl::StatusCode::kPermissionDenied},
    {"RESOURCE_EXHAUSTED", absl::StatusCode::kResourceExhausted},
    {"FAILED_PRECONDITION", absl::StatusCode::kFailedPrecondition},
    {"ABORTED", absl::StatusCode::kAborted},
    {"OUT_OF_RANGE", absl::StatusCode::kOutOfRange},
    {"UNIMPLEMENTED", absl::StatusCode::kUnimplemented},
    {"INTERNAL", absl::StatusCode::kInternal},
    {"UNAVAILABLE", absl::StatusCode::kUnavailable},
    {"DATA_LOSS", absl::StatusCode::kDataLoss},
    {"UNAUTHENTICATED", absl::StatusCode::kUnauthenticated},
};

// google.protobuf.Value -> JSON. Numbers that are whole and exact become integers, so that a
// literal `quantity: 1` renders as 1, not 1.0.
json ValueToJson(const pb::Value& value) {
  switch (value.kind_case()) {
    case pb::Value::kNullValue:
    case pb::Value::KIND_NOT_SET:
      return json(nullptr);
    case pb::Value::kNumberValue: {
      const double d = value.number_value();
      const double limit = static_cast<double>(kMaxExactDoubleInteger);
      if (std::isfinite(d) && std::trunc(d) == d && d >= -limit && d <= limit) {
        return json(static_cast<int64_t>(d));
      }
      return json(d);
    }
    case pb::Value::kStringValue:
      return json(value.string_value());
    case pb::Value::kBoolValue:
      return json(value.bool_value());
    case pb::Value::kStructValue: {
      json out = json::object();
      for (const auto& [key, member] : value.struct_value().fields()) {
        out.emplace(key, ValueToJson(member));
      }
      return out;
    }
    case pb::Value::kListValue: {
      json out = json::array();
      for (const auto& element : value.list_value().values()) out.push_back(ValueToJson(element));
      return out;
    }
  }
  return json(nullptr);
}

class DescriptorPoolErrors final : public pb::DescriptorPool::ErrorCollector {
 public:
  void AddError(const std::string& filename, const std::string& element_name,
                const pb::Message* /*descriptor*/, ErrorLocation /*location*/,
                const std::string& message) override {
    errors_.push_back(absl::StrCat(filename, ": ", element_name, ": ", message));
  }
  std::string Text() const { return absl::StrJoin(errors_, "; "); }

 private:
  std::vector<std::string> errors_;
};

class ImportErrors final : public pb::compiler::MultiFileErrorCollector {
 public:
  void AddError(const std::string& filename, int line, int column,
                const std::string& message) override {
    if (line >= 0) {
      errors_.push_back(absl::StrCat(filename, ":", line + 1, ":", column + 1, ": ", message));
    } else {
      errors_.push_back(absl::StrCat(filename, ": ", message));
    }
  }
  void Clear() { errors_.clear(); }
  std::string Text() const { return absl::StrJoin(errors_, "; "); }

 private:
  std::vector<std::string> errors_;
};

// Looks for .proto files in memory first, then in each search folder, then (for
// google/protobuf/*.proto only) in the system's protobuf include folder.
class CompositeSourceTree final : public pb::compiler::SourceTree {
 public:
  CompositeSourceTree(const std::map<std::string, std::string>& files,
                      const std::vector<std::string>& search_path)
      : files_(files) {
    for (const std::string& folder : search_path) disk_.MapPath("", folder);
    disk_.MapPath("google/protobuf", absl::StrCat(SAGA_PROTOBUF_INCLUDE_DIR, "/google/protobuf"));
  }

  pb::io::ZeroCopyInputStream* Open(const std::string& filename) override {
    auto it = files_.find(filename);
    if (it != files_.end()) {
      return new pb::io::ArrayInputStream(it->second.data(), static_cast<int>(it->second.size()));
    }
    pb::io::ZeroCopyInputStream* stream = disk_.Open(filename);
    if (stream == nullptr) last_error_ = disk_.GetLastErrorMessage();
    return stream;
  }

  std::string GetLastErrorMessage() override { return last_error_; }

 private:
  const std::map<std::string, std::string>& files_;
  pb::compiler::DiskSourceTree disk_;
  std::string last_error_ = "File not found.";
};

class Compiler {
 public:
  Compiler(const v1::SagaDefinition& proto, std::string source)
      : proto_(proto), source_(std::move(source)), def_(std::make_shared<Definition>()) {}

  // Everything that needs no descriptors: names, participants, graph, policies, templates.
  absl::Status CheckStructure();
  // Builds the descriptor set from .proto files.
  absl::StatusOr<std::string> ImportProtos(const ProtoSources& sources);
  // Builds the pool from `descriptor_set`, resolves methods, checks request fields, and
  // finishes the Definition.
  absl::StatusOr<std::shared_ptr<Definition>> Finish(std::string descriptor_set, int version);

 private:
  absl::Status Error(absl::string_view path, absl::string_view what) const {
    return absl::InvalidArgumentError(absl::StrCat(source_, ": ", path, ": ", what));
  }

  absl::Status CheckPolicyFields(const v1::RetryPolicy& policy, const std::string& path) const;
  absl::Status CheckDuration(const std::string& text, const std::string& path, bool is_timeout,
                             absl::Duration* out) const;
  absl::Status MergePolicy(const v1::RetryPolicy* specific, const std::string& specific_path,
                           const v1::RetryPolicy& general, const std::string& general_path,
                           int default_attempts, RetryPolicy* out) const;
  absl::Status MergeTimeout(const std::string& specific, const std::string& specific_path,
                            const std::string& general, const std::string& general_path,
                            absl::Duration* out) const;
  absl::Status CheckGraph();
  absl::Status CheckStepRefs(const Template& request, int step, bool is_compensation,
                             const std::string& path) const;
  absl::Status ResolveCall(const pb::DescriptorPool& pool, int step, bool is_compensation,
                           CallSpec* call) const;
  absl::Status CheckRequestFields(const json& value, const pb::Descriptor* message,
                                  const std::string& path) const;

  const v1::SagaDefinition& proto_;
  std::string source_;
  std::shared_ptr<Definition> def_;
  // "steps[1] (charge)" per step.
  std::vector<std::string> labels_;
  // ancestors_[i][j]: step j runs (transitively) before step i.
  std::vector<std::vector<bool>> ancestors_;
  // Participants by name, sorted.
  std::vector<std::string> participant_names_;
};

absl::Status Compiler::CheckDuration(const std::string& text, const std::string& path,
                                     bool is_timeout, absl::Duration* out) const {
  absl::Duration d;
  if (!absl::ParseDuration(text, &d)) {
    return Error(path, absl::StrCat("invalid duration '", text,
                                    "' (write a number and a unit, e.g. \"2s\", \"500ms\", "
                                    "\"1m30s\")"));
  }
  const absl::Duration limit = is_timeout ? kMaxTimeout : kMaxBackoff;
  if (is_timeout && d <= absl::ZeroDuration()) {
    return Error(path, absl::StrCat("timeout must be positive, got '", text, "'"));
  }
  if (d < absl::ZeroDuration()) {
    return Error(path, absl::StrCat("must not be negative, got '", text, "'"));
  }
  if (d > limit) {
    return Error(
        path, absl::StrCat("'", text, "' is more than the limit of ", absl::FormatDuration(limit)));
  }
  *out = d;
  return absl::OkStatus();
}

absl::Status Compiler::CheckPolicyFields(const v1::RetryPolicy& policy,
                                         const std::string& path) const {
  if (policy.max_attempts() > static_cast<uint32_t>(kMaxAttemptsLimit)) {
    return Error(absl::StrCat(path, ".max_attempts"),
                 absl::StrCat(policy.max_attempts(), " is more than the limit of ",
                              kMaxAttemptsLimit, " (0 means the default)"));
  }
  absl::Duration d;
  if (!policy.initial_backoff().empty()) {
    auto status =
        CheckDuration(policy.initial_backoff(), absl::StrCat(path, ".initial_backoff"), false, &d);
    if (!status.ok()) return status;
  }
  if (!policy.max_backoff().empty()) {
    auto status =
        CheckDuration(policy.max_backoff(), absl::StrCat(path, ".max_backoff"), false, &d);
    if (!status.ok()) return status;
  }
  if (policy.has_backoff_multiplier()) {
    const double m = policy.backoff_multiplier();
    if (!std::isfinite(m) || m < 1) {
      return Error(absl::StrCat(path, ".backoff_multiplier"),
                   absl::StrCat("must be a finite number >= 1, got ", m));
    }
  }
  if (policy.has_jitter()) {
    const double j = policy.jitter();
    if (!std::isfinite(j) || j < 0 || j > 1) {
      return Error(absl::StrCat(path, ".jitter"), absl::StrCat("must be between 0 and 1, got ", j));
    }
  }
  for (int i = 0; i < policy.retryable_codes_size(); ++i) {
    const std::string& name = policy.retryable_codes(i);
    const std::string code_path = absl::StrCat(path, ".retryable_codes[", i, "]");
    if (name == "OK") return Error(code_path, "OK is not an error code");
    bool found = std::any_of(std::begin(kCodeNames), std::end(kCodeNames),
                             [&name](const CodeName& c) { return c.name == name; });
    if (!found) {
      return Error(code_path, absl::StrCat("unknown gRPC status code '", name,
                                           "' (use names such as UNAVAILABLE, "
                                           "DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED)"));
    }
  }
  return absl::OkStatus();
}

// Overwrites the fields of `out` that `policy` sets. `policy` has been checked.
void ApplyPolicy(const v1::RetryPolicy& policy, RetryPolicy* out) {
  if (policy.max_attempts() != 0) out->max_attempts = static_cast<int>(policy.max_attempts());
  if (!policy.initial_backoff().empty()) {
    (void)absl::ParseDuration(policy.initial_backoff(), &out->initial_backoff);
  }
  if (!policy.max_backoff().empty()) {
    (void)absl::ParseDuration(policy.max_backoff(), &out->max_backoff);
  }
  if (policy.has_backoff_multiplier()) out->multiplier = policy.backoff_multiplier();
  if (policy.has_jitter()) out->jitter = policy.jitter();
  if (policy.retryable_codes_size() > 0) {
    out->retryable_codes.clear();
    for (const std::string& name : policy.retryable_codes()) {
      for (const CodeName& c : kCodeNames) {
        if (c.name == name) out->retryable_codes.push_back(c.code);
      }
    }
  }
}

absl::Status Compiler::MergePolicy(const v1::RetryPolicy* specific,
                                   const std::string& specific_path, const v1::RetryPolicy& general,
                                   const std::string& general_path, int default_attempts,
                                   RetryPolicy* out) const {
  RetryPolicy policy;
  policy.max_attempts = default_attempts;
  ApplyPolicy(general, &policy);
  std::string path = general_path;
  if (specific != nullptr) {
    ApplyPolicy(*specific, &policy);
    path = specific_path;
  }
  if (policy.max_backoff < policy.initial_backoff) {
    return Error(path, absl::StrCat("max_backoff ", absl::FormatDuration(policy.max_backoff),
                                    " is less than initial_backoff ",
                                    absl::FormatDuration(policy.initial_backoff)));
  }
  *out = std::move(policy);
  return absl::OkStatus();
}

absl::Status Compiler::MergeTimeout(const std::string& specific, const std::string& specific_path,
                                    const std::string& general, const std::string& general_path,
                                    absl::Duration* out) const {
  if (!specific.empty()) return CheckDuration(specific, specific_path, true, out);
  if (!general.empty()) return CheckDuration(general, general_path, true, out);
  *out = kDefaultTimeout;
  return absl::OkStatus();
}

absl::Status Compiler::CheckStructure() {
  const v1::SagaDefinition& p = proto_;
  if (p.name().empty()) return Error("name", "required");
  if (!ValidName(p.name(), 128, true)) {
    return Error("name", absl::StrCat("'", p.name(),
                                      "' is not valid (use A-Z, a-z, 0-9, '.', '_', '-'; at "
                                      "most 128 bytes)"));
  }
  def_->name = p.name();
  def_->proto = p;

  // Participants.
  for (const auto& [name, participant] : p.participants()) participant_names_.push_back(name);
  std::sort(participant_names_.begin(), participant_names_.end());
  for (const std::string& name : participant_names_) {
    const v1::Participant& participant = p.participants().at(name);
    const std::string path = absl::StrCat("participants.", name);
    if (!ValidName(name, 64, true)) {
      return Error(path, "participant names use A-Z, a-z, 0-9, '.', '_', '-' (at most 64 bytes)");
    }
    if (participant.target().empty()) return Error(absl::StrCat(path, ".target"), "required");
    if (participant.protos().empty()) {
      return Error(absl::StrCat(path, ".protos"),
                   "list the .proto files that define the participant's services");
    }
    for (int i = 0; i < participant.protos_size(); ++i) {
      const std::string& file = participant.protos(i);
      const bool bad = file.empty() || file[0] == '/' || absl::StrContains(file, "\\") ||
                       absl::StrContains(file, "//") || file == ".." ||
                       absl::StartsWith(file, "../") || absl::StrContains(file, "/../") ||
                       absl::EndsWith(file, "/..") || absl::StartsWith(file, "./") ||
                       absl::StrContains(file, "/./") || !absl::EndsWith(file, ".proto");
      if (bad) {
        return Error(absl::StrCat(path, ".protos[", i, "]"),
                     absl::StrCat("'", file,
                                  "' must be a relative path to a .proto file, without '.' or "
                                  "'..' segments"));
      }
    }
  }

  // Definition-level policies.
  for (const auto& [policy, path] :
       {std::pair<const v1::RetryPolicy*, std::string>{&p.retry(), "retry"},
        {&p.compensation_retry(), "compensation_retry"}}) {
    auto status = CheckPolicyFields(*policy, path);
    if (!status.ok()) return status;
  }
  RetryPolicy scratch;
  {
    auto status = MergePolicy(nullptr, "", p.retry(), "retry", kDefaultMaxAttempts, &scratch);
    if (!status.ok()) return status;
    status = MergePolicy(nullptr, "", p.compensation_retry(), "compensation_retry",
                         kDefaultCompensationMaxAttempts, &scratch);
    if (!status.ok()) return status;
  }
  absl::Duration timeout;
  if (!p.timeout().empty()) {
    auto status = CheckDuration(p.timeout(), "timeout", true, &timeout);
    if (!status.ok()) return status;
  }
  if (!p.compensation_timeout().empty()) {
    auto status = CheckDuration(p.compensation_timeout(), "compensation_timeout", true, &timeout);
    if (!status.ok()) return status;
  }

  // Steps: names first, so that later checks can refer to any step.
  if (p.steps().empty()) return Error("steps", "at least one step is required");
  if (p.steps_size() > kMaxSteps) {
    return Error("steps", absl::StrCat(p.steps_size(), " steps; the limit is ", kMaxSteps));
  }
  def_->steps.resize(static_cast<size_t>(p.steps_size()));
  for (int i = 0; i < p.steps_size(); ++i) {
    const v1::Step& step = p.steps(i);
    std::string label = absl::StrCat("steps[", i, "]");
    if (step.name().empty()) return Error(absl::StrCat(label, ".name"), "required");
    if (!ValidName(step.name(), 64, false)) {
      return Error(absl::StrCat(label, ".name"),
                   absl::StrCat("'", step.name(),
                                "' is not valid (use A-Z, a-z, 0-9, '_', '-'; at most 64 bytes)"));
    }
    auto [it, inserted] = def_->step_index.emplace(step.name(), i);
    if (!inserted) {
      return Error(absl::StrCat(label, ".name"), absl::StrCat("duplicate step name '", step.name(),
                                                              "' (also steps[", it->second, "])"));
    }
    labels_.push_back(absl::StrCat(label, " (", step.name(), ")"));
    StepSpec& spec = def_->steps[static_cast<size_t>(i)];
    spec.name = step.name();
    spec.index = i;
  }

  for (int i = 0; i < p.steps_size(); ++i) {
    const v1::Step& step = p.steps(i);
    const std::string& label = labels_[static_cast<size_t>(i)];
    StepSpec& spec = def_->steps[static_cast<size_t>(i)];
    if (!step.kind().empty() && step.kind() != "call") {
      return Error(absl::StrCat(label, ".kind"), absl::StrCat("unknown step kind '", step.kind(),
                                                              "' (the only kind is \"call\")"));
    }
    spec.kind = StepKind::kCall;
    if (step.participant().empty()) return Error(absl::StrCat(label, ".participant"), "required");
    auto participant = p.participants().find(step.participant());
    if (participant == p.participants().end()) {
      return Error(
          absl::StrCat(label, ".participant"),
          absl::StrCat("unknown participant '", step.participant(), "' (declared: ",
                       participant_names_.empty() ? std::string("none")
                                                  : absl::StrJoin(participant_names_, ", "),
                       ")"));
    }
    spec.participant = step.participant();
    spec.target = participant->second.target();

    std::string service, method;
    if (step.method().empty()) return Error(absl::StrCat(label, ".method"), "required");
    if (!SplitMethod(step.method(), &service, &method)) {
      return Error(absl::StrCat(label, ".method"),
                   absl::StrCat("'", step.method(),
                                "' is not a method name of the form package.Service/Method"));
    }
    spec.action.method_name = step.method();
    {
      auto status = CheckPolicyFields(step.retry(), absl::StrCat(label, ".retry"));
      if (!status.ok()) return status;
      status =
          MergePolicy(step.has_retry() ? &step.retry() : nullptr, absl::StrCat(label, ".retry"),
                      p.retry(), "retry", kDefaultMaxAttempts, &spec.action.retry);
      if (!status.ok()) return status;
      status = MergeTimeout(step.timeout(), absl::StrCat(label, ".timeout"), p.timeout(), "timeout",
                            &spec.action.timeout);
      if (!status.ok()) return status;
    }
    if (step.has_compensation()) {
      const v1::Compensation& comp = step.compensation();
      const std::string path = absl::StrCat(label, ".compensation");
      if (comp.method().empty()) return Error(absl::StrCat(path, ".method"), "required");
      if (!SplitMethod(comp.method(), &service, &method)) {
        return Error(absl::StrCat(path, ".method"),
                     absl::StrCat("'", comp.method(),
                                  "' is not a method name of the form package.Service/Method"));
      }
      CallSpec call;
      call.method_name = comp.method();
      auto status = CheckPolicyFields(comp.retry(), absl::StrCat(path, ".retry"));
      if (!status.ok()) return status;
      status = MergePolicy(comp.has_retry() ? &comp.retry() : nullptr, absl::StrCat(path, ".retry"),
                           p.compensation_retry(), "compensation_retry",
                           kDefaultCompensationMaxAttempts, &call.retry);
      if (!status.ok()) return status;
      status = MergeTimeout(comp.timeout(), absl::StrCat(path, ".timeout"),
                            p.compensation_timeout(), "compensation_timeout", &call.timeout);
      if (!status.ok()) return status;
      spec.compensation = std::move(call);
    }
  }

  if (auto status = CheckGraph(); !status.ok()) return status;

  // Templates, now that the graph (and so each step's ancestors) is known.
  for (int i = 0; i < p.steps_size(); ++i) {
    const v1::Step& step = p.steps(i);
    const std::string& label = labels_[static_cast<size_t>(i)];
    StepSpec& spec = def_->steps[static_cast<size_t>(i)];
    if (step.has_request()) {
      const std::string path = absl::StrCat(label, ".request");
      auto request = Template::Parse(ValueToJson(step.request()), path);
      if (!request.ok()) {
        return absl::InvalidArgumentError(absl::StrCat(source_, ": ", request.status().message()));
      }
      if (auto status = CheckStepRefs(*request, i, false, path); !status.ok()) return status;
      spec.action.request = *std::move(request);
    }
    if (spec.compensation.has_value() && step.compensation().has_request()) {
      const std::string path = absl::StrCat(label, ".compensation.request");
      auto request = Template::Parse(ValueToJson(step.compensation().request()), path);
      if (!request.ok()) {
        return absl::InvalidArgumentError(absl::StrCat(source_, ": ", request.status().message()));
      }
      if (auto status = CheckStepRefs(*request, i, true, path); !status.ok()) return status;
      spec.compensation->request = *std::move(request);
    }
  }
  return absl::OkStatus();
}

absl::Status Compiler::CheckGraph() {
  const v1::SagaDefinition& p = proto_;
  const size_t n = def_->steps.size();
  for (size_t i = 0; i < n; ++i) {
    const v1::Step& step = p.steps(static_cast<int>(i));
    StepSpec& spec = def_->steps[i];
    const std::string path = absl::StrCat(labels_[i], ".after");
    if (!step.after_set() && step.after().empty()) {
      if (i > 0) spec.after.push_back(static_cast<int>(i) - 1);
      continue;
    }
    for (int k = 0; k < step.after_size(); ++k) {
      const std::string& name = step.after(k);
      auto it = def_->step_index.find(name);
      if (it == def_->step_index.end()) {
        return Error(path, absl::StrCat("unknown step '", name, "'"));
      }
      if (it->second == static_cast<int>(i)) {
        return Error(path, absl::StrCat("step '", name, "' cannot run after itself"));
      }
      if (std::find(spec.after.begin(), spec.after.end(), it->second) != spec.after.end()) {
        return Error(path, absl::StrCat("'", name, "' is listed twice"));
      }
      spec.after.push_back(it->second);
    }
  }
  for (size_t i = 0; i < n; ++i) {
    for (int a : def_->steps[i].after) {
      def_->steps[static_cast<size_t>(a)].successors.push_back(static_cast<int>(i));
    }
  }

  // Cycle detection by depth-first search over `after` edges.
  enum class Color { kWhite, kGray, kBlack };
  std::vector<Color> color(n, Color::kWhite);
  std::vector<int> stack;
  std::vector<int> order;  // topological: ancestors first
  std::function<absl::Status(int)> visit = [&](int v) -> absl::Status {
    color[static_cast<size_t>(v)] = Color::kGray;
    stack.push_back(v);
    for (int a : def_->steps[static_cast<size_t>(v)].after) {
      if (color[static_cast<size_t>(a)] == Color::kGray) {
        // stack: ... a ... v; v runs after a, which (transitively) runs after v.
        auto from = std::find(stack.begin(), stack.end(), a);
        std::vector<std::string> names;
        for (auto it = from; it != stack.end(); ++it) {
          names.push_back(def_->steps[static_cast<size_t>(*it)].name);
        }
        names.push_back(def_->steps[static_cast<size_t>(a)].name);
        return Error(absl::StrCat(labels_[static_cast<size_t>(a)], ".after"),
                     absl::StrCat("cycle: ", absl::StrJoin(names, " runs after ")));
      }
      if (color[static_cast<size_t>(a)] == Color::kWhite) {
        if (auto status = visit(a); !status.ok()) return status;
      }
    }
    stack.pop_back();
    color[static_cast<size_t>(v)] = Color::kBlack;
    order.push_back(v);
    return absl::OkStatus();
  };
  for (size_t i = 0; i < n; ++i) {
    if (color[i] == Color::kWhite) {
      if (auto status = visit(static_cast<int>(i)); !status.ok()) return status;
    }
  }

  ancestors_.assign(n, std::vector<bool>(n, false));
  for (int v : order) {
    auto& mine = ancestors_[static_cast<size_t>(v)];
    for (int a : def_->steps[static_cast<size_t>(v)].after) {
      mine[static_cast<size_t>(a)] = true;
      const auto& theirs = ancestors_[static_cast<size_t>(a)];
      for (size_t k = 0; k < n; ++k) {
        if (theirs[k]) mine[k] = true;
      }
    }
  }
  return absl::OkStatus();
}

absl::Status Compiler::CheckStepRefs(const Template& request, int step, bool is_compensation,
                                     const std::string& path) const {
  for (const TemplateRef& ref : request.refs()) {
    if (ref.root != TemplateRef::Root::kStepOutput) continue;
    auto it = def_->step_index.find(ref.step);
    if (it == def_->step_index.end()) {
      return Error(path, absl::StrCat("unknown step '", ref.step, "' in ", ref.text));
    }
    const int other = it->second;
    if (other == step) {
      if (is_compensation) continue;
      return Error(path, absl::StrCat("a step's request cannot use its own output (", ref.text,
                                      "); only its compensation can"));
    }
    if (!ancestors_[static_cast<size_t>(step)][static_cast<size_t>(other)]) {
      return Error(path, absl::StrCat("step '", ref.step, "' does not run before step '",
                                      def_->steps[static_cast<size_t>(step)].name,
                                      "' (it is not in its `after` chain), so ", ref.text,
                                      " cannot be used here"));
    }
  }
  return absl::OkStatus();
}

void AddWithDependencies(const pb::FileDescriptor* file, std::set<std::string>* seen,
                         std::vector<const pb::FileDescriptor*>* out) {
  if (!seen->insert(file->name()).second) return;
  for (int i = 0; i < file->dependency_count(); ++i) {
    AddWithDependencies(file->dependency(i), seen, out);
  }
  out->push_back(file);
}

absl::StatusOr<std::string> Compiler::ImportProtos(const ProtoSources& sources) {
  CompositeSourceTree tree(sources.files, sources.search_path);
  ImportErrors errors;
  pb::compiler::Importer importer(&tree, &errors);
  std::set<std::string> seen;
  std::vector<const pb::FileDescriptor*> files;
  for (const std::string& name : participant_names_) {
    const v1::Participant& participant = proto_.participants().at(name);
    for (int i = 0; i < participant.protos_size(); ++i) {
      errors.Clear();
      const pb::FileDescriptor* file = importer.Import(participant.protos(i));
      if (file == nullptr) {
        std::string where =
            sources.search_path.empty()
                ? std::string("no proto search path")
                : absl::StrCat("search path: ", absl::StrJoin(sources.search_path, ", "));
        return Error(absl::StrCat("participants.", name, ".protos[", i, "]"),
                     absl::StrCat("cannot load '", participant.protos(i), "': ", errors.Text(),
                                  " (", where, ")"));
      }
      AddWithDependencies(file, &seen, &files);
    }
  }
  pb::FileDescriptorSet set;
  for (const pb::FileDescriptor* file : files) file->CopyTo(set.add_file());
  std::string out;
  {
    pb::io::StringOutputStream stream(&out);
    pb::io::CodedOutputStream coded(&stream);
    coded.SetSerializationDeterministic(true);
    if (!set.SerializeToCodedStream(&coded)) {
      return absl::InternalError(absl::StrCat(source_, ": cannot serialize the descriptor set"));
    }
  }
  return out;
}

absl::Status Compiler::CheckRequestFields(const json& value, const pb::Descriptor* message,
                                          const std::string& path) const {
  if (!value.is_object()) return absl::OkStatus();
  for (const auto& [key, member] : value.items()) {
    const pb::FieldDescriptor* field = FindField(message, key);
    if (field == nullptr) {
      return Error(path, absl::StrCat("unknown field '", key, "' in ", message->full_name(),
                                      " (valid fields: ", FieldNames(message), ")"));
    }
    if (field->cpp_type() != pb::FieldDescriptor::CPPTYPE_MESSAGE || field->is_map() ||
        IsWellKnown(field->message_type())) {
      continue;
    }
    const std::string member_path = absl::StrCat(path, ".", key);
    if (field->is_repeated()) {
      if (!member.is_array()) continue;
      for (size_t i = 0; i < member.size(); ++i) {
        auto status = CheckRequestFields(member[i], field->message_type(),
                                         absl::StrCat(member_path, "[", i, "]"));
        if (!status.ok()) return status;
      }
    } else {
      auto status = CheckRequestFields(member, field->message_type(), member_path);
      if (!status.ok()) return status;
    }
  }
  return absl::OkStatus();
}

absl::Status Compiler::ResolveCall(const pb::DescriptorPool& pool, int step, bool is_compensation,
                                   CallSpec* call) const {
  const StepSpec& spec = def_->steps[static_cast<size_t>(step)];
  const std::string& label = labels_[static_cast<size_t>(step)];
  const std::string base = is_compensation ? absl::StrCat(label, ".compensation") : label;
  const std::string path = absl::StrCat(base, ".method");
  std::string service_name, method_name;
  if (!SplitMethod(call->method_name, &service_name, &method_name)) {
    return Error(path, "not of the form package.Service/Method");
  }

  // The participant's files and everything they import.
  const v1::Participant& participant = proto_.participants().at(spec.participant);
  std::set<std::string> seen;
  std::vector<const pb::FileDescriptor*> files;
  for (int i = 0; i < participant.protos_size(); ++i) {
    const pb::FileDescriptor* file = pool.FindFileByName(participant.protos(i));
    if (file == nullptr) {
      return Error(absl::StrCat("participants.", spec.participant, ".protos[", i, "]"),
                   absl::StrCat("'", participant.protos(i), "' is not in the descriptor set"));
    }
    AddWithDependencies(file, &seen, &files);
  }
  std::vector<std::string> services;
  const pb::ServiceDescriptor* service = nullptr;
  for (const pb::FileDescriptor* file : files) {
    for (int i = 0; i < file->service_count(); ++i) {
      services.push_back(file->service(i)->full_name());
      if (file->service(i)->full_name() == service_name) service = file->service(i);
    }
  }
  if (service == nullptr) {
    std::string offered = services.empty()
                              ? std::string("they define no services")
                              : absl::StrCat("they define: ", absl::StrJoin(services, ", "));
    if (pool.FindServiceByName(service_name) != nullptr) {
      return Error(path,
                   absl::StrCat("service ", service_name, " is not in the protos of participant '",
                                spec.participant, "' (", offered, ")"));
    }
    return Error(path, absl::StrCat("unknown service '", service_name, "' for participant '",
                                    spec.participant, "' (", offered, ")"));
  }
  const pb::MethodDescriptor* method = service->FindMethodByName(method_name);
  if (method == nullptr) {
    std::vector<std::string> methods;
    for (int i = 0; i < service->method_count(); ++i) methods.push_back(service->method(i)->name());
    return Error(path, absl::StrCat("unknown method '", method_name, "' in service ", service_name,
                                    "; it has: ", absl::StrJoin(methods, ", ")));
  }
  if (method->client_streaming() || method->server_streaming()) {
    const char* kind = method->client_streaming() && method->server_streaming()
                           ? "bidirectional streaming"
                           : (method->client_streaming() ? "client streaming" : "server streaming");
    return Error(path, absl::StrCat("method ", call->method_name, " is ", kind,
                                    "; only unary methods can be called"));
  }
  call->method = method;

  // The request template against the method's input message.
  const json& raw = call->request.raw();
  const std::string request_path = absl::StrCat(base, ".request");
  if (raw.is_null() || raw.is_object()) {
    return CheckRequestFields(raw, method->input_type(), request_path);
  }
  const bool single_ref = raw.is_string() && call->request.refs().size() == 1 &&
                          raw.get_ref<const std::string&>() == call->request.refs()[0].text;
  if (!single_ref) {
    return Error(request_path, absl::StrCat("expected an object with the fields of ",
                                            method->input_type()->full_name(),
                                            " or a single ${...} reference, got ", Describe(raw)));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<const pb::DescriptorPool>> BuildPool(
    absl::string_view descriptor_set, absl::string_view source) {
  pb::FileDescriptorSet set;
  if (!set.ParseFromArray(descriptor_set.data(), static_cast<int>(descriptor_set.size()))) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": the descriptor set is not a valid FileDescriptorSet"));
  }
  auto pool = std::make_shared<pb::DescriptorPool>();
  for (const pb::FileDescriptorProto& file : set.file()) {
    DescriptorPoolErrors errors;
    if (pool->BuildFileCollectingErrors(file, &errors) == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(source, ": descriptor set: cannot build ",
                                                     file.name(), ": ", errors.Text()));
    }
  }
  return std::shared_ptr<const pb::DescriptorPool>(std::move(pool));
}

absl::StatusOr<std::shared_ptr<Definition>> Compiler::Finish(std::string descriptor_set,
                                                             int version) {
  auto pool = BuildPool(descriptor_set, source_);
  if (!pool.ok()) return pool.status();
  for (size_t i = 0; i < def_->steps.size(); ++i) {
    StepSpec& spec = def_->steps[i];
    if (auto status = ResolveCall(**pool, static_cast<int>(i), false, &spec.action); !status.ok()) {
      return status;
    }
    if (spec.compensation.has_value()) {
      if (auto status = ResolveCall(**pool, static_cast<int>(i), true, &*spec.compensation);
          !status.ok()) {
        return status;
      }
    }
  }
  def_->version = version;
  def_->content_hash = Sha256Hex(absl::StrCat(CanonicalJson(proto_), descriptor_set));
  def_->descriptor_set = std::move(descriptor_set);
  def_->pool = *std::move(pool);
  return std::move(def_);
}

}  // namespace

absl::StatusOr<saga::v1::SagaDefinition> ParseDefinitionText(std::string_view text_view,
                                                             std::string_view source_name) {
  const absl::string_view text(text_view.data(), text_view.size());
  const std::string source =
      source_name.empty() ? std::string("definition") : std::string(source_name);
  if (text.size() > kMaxDefinitionBytes) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": the definition is ", text.size(),
                                                   " bytes; the limit is ", kMaxDefinitionBytes,
                                                   " (1 MiB)"));
  }
  if (size_t bad = FindInvalidUtf8(text); bad != absl::string_view::npos) {
    auto [line, column] = LineColumn(text, bad);
    return SourceStatus(source, SourceError{"invalid UTF-8", line, column});
  }
  try {
    Marks marks;
    json doc;
    const size_t first = text.find_first_not_of(" \t\r\n");
    const bool looks_like_json = first != absl::string_view::npos && text[first] == '{';
    if (looks_like_json) {
      try {
        doc = ParseJson(text);
      } catch (const SourceError& json_error) {
        // Perhaps a YAML flow mapping; if YAML cannot read it either, report the JSON error.
        try {
          doc = ParseYaml(text, &marks);
        } catch (const SourceError&) {
          throw json_error;
        } catch (const YAML::Exception&) {
          throw json_error;
        }
      }
    } else {
      doc = ParseYaml(text, &marks);
    }
    if (!doc.is_object()) {
      throw SourceError{absl::StrCat("a definition must be a mapping (name, participants, "
                                     "steps, ...), got ",
                                     Describe(doc)),
                        first == absl::string_view::npos ? 0 : 1, 1};
    }
    try {
      SchemaChecker(marks).CheckMessage(doc, v1::SagaDefinition::descriptor(), "", "");
    } catch (const SourceError& error) {
      if (looks_like_json && error.line == 0) {
        // nlohmann::json keeps no positions; yaml-cpp reads JSON as well and does. Use its
        // position when it finds the same error.
        try {
          Marks json_marks;
          json again = ParseYaml(text, &json_marks);
          SchemaChecker(json_marks).CheckMessage(again, v1::SagaDefinition::descriptor(), "", "");
        } catch (const SourceError& located) {
          if (located.message == error.message) throw located;
        } catch (const YAML::Exception&) {
        }
      }
      throw;
    }

    v1::SagaDefinition proto;
    pb::util::JsonParseOptions options;
    options.ignore_unknown_fields = false;
    const std::string json_text = doc.dump(-1, ' ', false, json::error_handler_t::replace);
    auto status = pb::util::JsonStringToMessage(json_text, &proto, options);
    if (!status.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(source, ": ", status.ToString()));
    }
    // `after: []` is not visible in the proto (an empty list); remember that it was written.
    if (auto steps = doc.find("steps"); steps != doc.end() && steps->is_array()) {
      for (size_t i = 0; i < steps->size() && i < static_cast<size_t>(proto.steps_size()); ++i) {
        const json& step = (*steps)[i];
        auto after = step.is_object() ? step.find("after") : step.end();
        if (step.is_object() && after != step.end() && !after->is_null()) {
          proto.mutable_steps(static_cast<int>(i))->set_after_set(true);
        }
      }
    }
    return proto;
  } catch (const SourceError& e) {
    return SourceStatus(source, e);
  } catch (const YAML::Exception& e) {
    SourceError error{e.msg};
    if (!e.mark.is_null()) {
      error.line = e.mark.line + 1;
      error.column = e.mark.column + 1;
      // '{' and '}' end flow collections, so an unquoted ${...} inside one breaks it.
      const size_t start = text.rfind('\n', static_cast<size_t>(std::max(e.mark.pos, 1)) - 1);
      const size_t line_start = start == absl::string_view::npos ? 0 : start + 1;
      const absl::string_view line =
          text.substr(line_start, text.find('\n', line_start) - line_start);
      if (absl::StrContains(line, "${")) {
        absl::StrAppend(&error.message,
                        " (inside [...] or {...}, quote references: \"${input.x}\")");
      }
    }
    return SourceStatus(source, error);
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", e.what()));
  }
}

absl::StatusOr<std::shared_ptr<Definition>> Compile(const saga::v1::SagaDefinition& proto,
                                                    const ProtoSources& sources,
                                                    std::string_view source_name) {
  const std::string source =
      source_name.empty() ? std::string("definition") : std::string(source_name);
  try {
    Compiler compiler(proto, source);
    if (auto status = compiler.CheckStructure(); !status.ok()) return status;
    auto descriptor_set = compiler.ImportProtos(sources);
    if (!descriptor_set.ok()) return descriptor_set.status();
    return compiler.Finish(*std::move(descriptor_set), 0);
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", e.what()));
  }
}

absl::StatusOr<std::shared_ptr<Definition>> CompileStored(const saga::v1::SagaDefinition& proto,
                                                          std::string_view descriptor_set,
                                                          int version) {
  const std::string source = absl::StrCat("definition ", proto.name(), " v", version);
  try {
    Compiler compiler(proto, source);
    if (auto status = compiler.CheckStructure(); !status.ok()) return status;
    return compiler.Finish(std::string(descriptor_set), version);
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", e.what()));
  }
}

std::string CanonicalJson(const saga::v1::SagaDefinition& proto) {
  pb::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  std::string out;
  if (!pb::util::MessageToJsonString(proto, &out, options).ok()) return out;
  // Map entries (participants, request objects) come out in hash order; nlohmann::json keeps
  // object keys sorted, so a round trip makes the text deterministic.
  try {
    return json::parse(out).dump(-1, ' ', false, json::error_handler_t::replace);
  } catch (const std::exception&) {
    return out;
  }
}

}  // namespace saga::definition
