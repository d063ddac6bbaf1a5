#include "orchestrator/definition/template.h"

#include <charconv>
#include <exception>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace saga::definition {

namespace internal {

// A template value after Parse. Subtrees without references are kept as literals, so Render
// copies them in one go; strings are split into text and references once, here, so Render
// never scans text.
struct TemplateNode {
  enum class Kind { kLiteral, kRef, kInterpolation, kObject, kArray };
  struct Part {
    std::string text;  // used when ref < 0
    int ref = -1;      // index into Template::refs_
  };

  Kind kind = Kind::kLiteral;
  // The member name when this node is a member of a kObject.
  std::string key;
  // kLiteral.
  nlohmann::json literal;
  // kRef.
  int ref = -1;
  // kInterpolation.
  std::vector<Part> parts;
  // kObject (members, with `key` set) and kArray (elements).
  std::vector<TemplateNode> children;
};

}  // namespace internal

namespace {

using internal::TemplateNode;
using nlohmann::json;

constexpr absl::string_view kRootsHint = "expected input, steps, saga or step";

absl::Status Malformed(absl::string_view where, absl::string_view ref_text, absl::string_view why) {
  return absl::InvalidArgumentError(
      absl::StrCat(where, ": malformed reference '", ref_text, "': ", why));
}

bool ValidSegment(absl::string_view segment) {
  for (char c : segment) {
    if (c == '$' || c == '{' || c == '}' || c == ' ' || c == '\t' || c == '\n' || c == '\r') {
      return false;
    }
  }
  return true;
}

// Parses the inside of "${...}" (without the braces).
absl::StatusOr<TemplateRef> ParseRef(absl::string_view inner, absl::string_view where) {
  TemplateRef ref;
  ref.text = absl::StrCat("${", inner, "}");
  if (!inner.empty() && inner.back() == '?') {
    ref.optional = true;
    inner.remove_suffix(1);
  }
  if (inner.empty()) return Malformed(where, ref.text, "empty reference");
  std::vector<std::string> segments = absl::StrSplit(inner, '.');
  for (const std::string& segment : segments) {
    if (segment.empty()) return Malformed(where, ref.text, "empty path segment");
    if (!ValidSegment(segment)) {
      return Malformed(where, ref.text,
                       absl::StrCat("invalid character in path segment '", segment, "'"));
    }
  }
  const std::string& root = segments[0];
  if (root == "input") {
    ref.root = TemplateRef::Root::kInput;
    ref.path.assign(segments.begin() + 1, segments.end());
  } else if (root == "steps") {
    if (segments.size() < 3 || segments[2] != "output") {
      return Malformed(where, ref.text,
                       "expected ${steps.<name>.output} or ${steps.<name>.output.<path>}");
    }
    ref.root = TemplateRef::Root::kStepOutput;
    ref.step = segments[1];
    ref.path.assign(segments.begin() + 3, segments.end());
  } else if (root == "saga") {
    if (segments.size() == 2 && segments[1] == "id") {
      ref.root = TemplateRef::Root::kSagaId;
    } else if (segments.size() == 2 && segments[1] == "idempotency_key") {
      ref.root = TemplateRef::Root::kSagaKey;
    } else {
      return Malformed(where, ref.text, "expected ${saga.id} or ${saga.idempotency_key}");
    }
  } else if (root == "step") {
    if (segments.size() == 2 && segments[1] == "name") {
      ref.root = TemplateRef::Root::kStepName;
    } else if (segments.size() == 2 && segments[1] == "idempotency_key") {
      ref.root = TemplateRef::Root::kStepKey;
    } else {
      return Malformed(where, ref.text, "expected ${step.name} or ${step.idempotency_key}");
    }
  } else {
    return Malformed(where, ref.text, absl::StrCat("unknown root '", root, "' (", kRootsHint, ")"));
  }
  return ref;
}

// Splits one string into text and references.
absl::StatusOr<TemplateNode> ParseString(const std::string& s, absl::string_view where,
                                         std::vector<TemplateRef>& refs) {
  std::vector<TemplateNode::Part> parts;
  std::string text;
  int ref_count = 0;
  size_t i = 0;
  while (i < s.size()) {
    char c = s[i];
    if (c == '$' && i + 1 < s.size() && s[i + 1] == '$') {
      text.push_back('$');
      i += 2;
      continue;
    }
    if (c == '$' && i + 1 < s.size() && s[i + 1] == '{') {
      size_t close = s.find('}', i + 2);
      if (close == std::string::npos) {
        return Malformed(where, absl::string_view(s).substr(i), "no closing '}'");
      }
      auto ref = ParseRef(absl::string_view(s).substr(i + 2, close - i - 2), where);
      if (!ref.ok()) return ref.status();
      if (!text.empty()) {
        parts.push_back({std::move(text), -1});
        text.clear();
      }
      parts.push_back({std::string(), static_cast<int>(refs.size())});
      refs.push_back(*std::move(ref));
      ++ref_count;
      i = close + 1;
      continue;
    }
    text.push_back(c);
    ++i;
  }
  TemplateNode node;
  if (ref_count == 0) {
    node.kind = TemplateNode::Kind::kLiteral;
    node.literal = std::move(text);
    return node;
  }
  if (!text.empty()) parts.push_back({std::move(text), -1});
  if (parts.size() == 1) {
    node.kind = TemplateNode::Kind::kRef;
    node.ref = parts[0].ref;
    return node;
  }
  node.kind = TemplateNode::Kind::kInterpolation;
  node.parts = std::move(parts);
  return node;
}

bool IsLiteral(const TemplateNode& node) { return node.kind == TemplateNode::Kind::kLiteral; }

absl::StatusOr<TemplateNode> ParseNode(const json& value, const std::string& where,
                                       std::vector<TemplateRef>& refs) {
  TemplateNode node;
  if (value.is_string()) return ParseString(value.get_ref<const std::string&>(), where, refs);
  if (value.is_object()) {
    bool all_literal = true;
    node.kind = TemplateNode::Kind::kObject;
    node.children.reserve(value.size());
    for (const auto& [key, member] : value.items()) {
      auto child = ParseNode(member, absl::StrCat(where, ".", key), refs);
      if (!child.ok()) return child.status();
      child->key = key;
      all_literal = all_literal && IsLiteral(*child);
      node.children.push_back(*std::move(child));
    }
    if (all_literal) {
      // Keep the literal with "$$" already unescaped in its strings.
      json literal = json::object();
      for (TemplateNode& child : node.children) {
        literal.emplace(child.key, std::move(child.literal));
      }
      node = TemplateNode();
      node.literal = std::move(literal);
    }
    return node;
  }
  if (value.is_array()) {
    bool all_literal = true;
    node.kind = TemplateNode::Kind::kArray;
    node.children.reserve(value.size());
    for (size_t i = 0; i < value.size(); ++i) {
      auto child = ParseNode(value[i], absl::StrCat(where, "[", i, "]"), refs);
      if (!child.ok()) return child.status();
      all_literal = all_literal && IsLiteral(*child);
      node.children.push_back(*std::move(child));
    }
    if (all_literal) {
      json literal = json::array();
      for (TemplateNode& child : node.children) literal.push_back(std::move(child.literal));
      node = TemplateNode();
      node.literal = std::move(literal);
    }
    return node;
  }
  node.kind = TemplateNode::Kind::kLiteral;
  node.literal = value;
  return node;
}

absl::string_view TypeName(const json& value) {
  switch (value.type()) {
    case json::value_t::null:
      return "null";
    case json::value_t::object:
      return "an object";
    case json::value_t::array:
      return "an array";
    case json::value_t::string:
      return "a string";
    case json::value_t::boolean:
      return "a boolean";
    default:
      return "a number";
  }
}

// The text of the reference's path up to (not including) segment `n`, e.g. "input.x".
std::string Location(const TemplateRef& ref, size_t n) {
  std::string location = ref.root == TemplateRef::Root::kInput
                             ? std::string("input")
                             : absl::StrCat("steps.", ref.step, ".output");
  for (size_t i = 0; i < n; ++i) absl::StrAppend(&location, ".", ref.path[i]);
  return location;
}

// Why segment `n` of the reference's path does not resolve in `parent`.
std::string WhyMissing(const TemplateRef& ref, size_t n, const json& parent) {
  const std::string& segment = ref.path[n];
  const std::string location = Location(ref, n);
  if (parent.is_object()) {
    std::string subject = ref.root == TemplateRef::Root::kInput
                              ? std::string("input")
                              : absl::StrCat("the output of step '", ref.step, "'");
    return absl::StrCat(subject, " has no '", segment, "'",
                        n == 0 ? "" : absl::StrCat(" at ", location));
  }
  if (parent.is_array()) {
    size_t index = 0;
    auto [end, ec] = std::from_chars(segment.data(), segment.data() + segment.size(), index);
    if (ec != std::errc() || end != segment.data() + segment.size()) {
      return absl::StrCat(location, " is an array and '", segment, "' is not an index");
    }
    return absl::StrCat(location, " has ", parent.size(), " elements, no index ", segment);
  }
  return absl::StrCat(location, " is ", TypeName(parent), ", not an object or array");
}

// Resolves one reference. Sets *out to the value, or to null when the reference is optional
// and does not resolve. `scratch` holds values that are not part of the context. Builds no
// strings unless the reference is missing.
absl::Status Resolve(const TemplateRef& ref, const RenderContext& ctx, json& scratch,
                     const json** out) {
  *out = nullptr;
  auto missing = [&ref](absl::string_view why) -> absl::Status {
    if (ref.optional) return absl::OkStatus();
    return absl::InvalidArgumentError(
        absl::StrCat("request: ", ref.text, " is missing (", why, ")"));
  };
  const json* cur = nullptr;
  switch (ref.root) {
    case TemplateRef::Root::kSagaId:
      scratch = std::string(ctx.saga_id);
      *out = &scratch;
      return absl::OkStatus();
    case TemplateRef::Root::kSagaKey:
      scratch = std::string(ctx.saga_key);
      *out = &scratch;
      return absl::OkStatus();
    case TemplateRef::Root::kStepName:
      scratch = std::string(ctx.step_name);
      *out = &scratch;
      return absl::OkStatus();
    case TemplateRef::Root::kStepKey:
      scratch = std::string(ctx.step_key);
      *out = &scratch;
      return absl::OkStatus();
    case TemplateRef::Root::kInput:
      cur = ctx.input;
      if (cur == nullptr) return missing("there is no input");
      break;
    case TemplateRef::Root::kStepOutput:
      if (ctx.step_output) cur = ctx.step_output(ref.step);
      if (cur == nullptr) return missing(absl::StrCat("step '", ref.step, "' has no output"));
      break;
  }
  for (size_t n = 0; n < ref.path.size(); ++n) {
    const std::string& segment = ref.path[n];
    const json* next = nullptr;
    if (cur->is_object()) {
      auto it = cur->find(segment);
      if (it != cur->end()) next = &*it;
    } else if (cur->is_array()) {
      size_t index = 0;
      auto [end, ec] = std::from_chars(segment.data(), segment.data() + segment.size(), index);
      if (ec == std::errc() && end == segment.data() + segment.size() && index < cur->size()) {
        next = &(*cur)[index];
      }
    }
    if (next == nullptr) {
      if (ref.optional) return absl::OkStatus();
      return missing(WhyMissing(ref, n, *cur));
    }
    cur = next;
  }
  *out = cur;
  return absl::OkStatus();
}

class Renderer {
 public:
  Renderer(const std::vector<TemplateRef>& refs, const RenderContext& ctx)
      : refs_(refs), ctx_(ctx) {}

  // Renders `node` into `out`. Sets *omit when the node is exactly one optional reference that
  // did not resolve (its parent object leaves the member out).
  absl::Status Render(const TemplateNode& node, json& out, bool* omit) {
    switch (node.kind) {
      case TemplateNode::Kind::kLiteral:
        out = node.literal;
        return absl::OkStatus();
      case TemplateNode::Kind::kRef: {
        const json* value = nullptr;
        absl::Status status = Resolve(refs_[static_cast<size_t>(node.ref)], ctx_, scratch_, &value);
        if (!status.ok()) return status;
        if (value == nullptr) {
          out = nullptr;
          if (omit != nullptr) *omit = true;
        } else {
          out = *value;
        }
        return absl::OkStatus();
      }
      case TemplateNode::Kind::kInterpolation: {
        std::string text;
        for (const TemplateNode::Part& part : node.parts) {
          if (part.ref < 0) {
            text += part.text;
            continue;
          }
          const json* value = nullptr;
          absl::Status status =
              Resolve(refs_[static_cast<size_t>(part.ref)], ctx_, scratch_, &value);
          if (!status.ok()) return status;
          if (value == nullptr) continue;
          if (value->is_string()) {
            text += value->get_ref<const std::string&>();
          } else {
            text += value->dump(-1, ' ', false, json::error_handler_t::replace);
          }
        }
        out = std::move(text);
        return absl::OkStatus();
      }
      case TemplateNode::Kind::kObject: {
        out = json::object();
        for (const TemplateNode& child : node.children) {
          json value;
          bool omitted = false;
          absl::Status status = Render(child, value, &omitted);
          if (!status.ok()) return status;
          if (!omitted) out.emplace(child.key, std::move(value));
        }
        return absl::OkStatus();
      }
      case TemplateNode::Kind::kArray: {
        out = json::array();
        out.get_ref<json::array_t&>().reserve(node.children.size());
        for (const TemplateNode& child : node.children) {
          json value;
          absl::Status status = Render(child, value, nullptr);
          if (!status.ok()) return status;
          out.push_back(std::move(value));
        }
        return absl::OkStatus();
      }
    }
    return absl::InternalError("template: unknown node kind");
  }

 private:
  const std::vector<TemplateRef>& refs_;
  const RenderContext& ctx_;
  json scratch_;
};

}  // namespace

absl::StatusOr<Template> Template::Parse(const nlohmann::json& value, std::string_view where_text) {
  const absl::string_view where(where_text.data(), where_text.size());
  Template result;
  if (value.is_null()) return result;
  try {
    auto root = ParseNode(value, std::string(where), result.refs_);
    if (!root.ok()) return root.status();
    result.value_ = value;
    result.root_ = std::make_shared<const TemplateNode>(*std::move(root));
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": ", e.what()));
  }
  return result;
}

absl::StatusOr<nlohmann::json> Template::Render(const RenderContext& ctx) const {
  json out;
  if (root_ == nullptr) return out;
  try {
    Renderer renderer(refs_, ctx);
    absl::Status status = renderer.Render(*root_, out, nullptr);
    if (!status.ok()) return status;
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("request: rendering failed: ", e.what()));
  }
  return out;
}

}  // namespace saga::definition
