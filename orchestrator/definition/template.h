// Request templates: JSON values in which strings may hold references "${path}".
//
//   "${input.order_id}"           the whole string is one reference: the referenced JSON value
//                                 itself, type preserved (numbers, objects, 64-bit integers).
//   "order ${input.order_id}"     references inside a longer string are interpolated as text.
//   "${input.coupon?}"            a trailing '?' makes a missing value null instead of an error.
//   "$${literal}"                 "$$" escapes a dollar sign.
//
// Roots: input.<path>               the saga input
//        steps.<name>.output.<path> an earlier step's response (the step must be an ancestor)
//        saga.id, saga.idempotency_key
//        step.name, step.idempotency_key
// Paths are dot-separated keys; a numeric segment indexes an array.
// Thread-safe after Parse (Render is const).
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace saga::definition {

namespace internal {
// The parsed form of a template (see template.cc); immutable and shared between copies.
struct TemplateNode;
}  // namespace internal

struct TemplateRef {
  enum class Root { kInput, kStepOutput, kSagaId, kSagaKey, kStepName, kStepKey };
  Root root = Root::kInput;
  // For kStepOutput: the step's name.
  std::string step;
  // Path below the root (for kInput and kStepOutput).
  std::vector<std::string> path;
  bool optional = false;
  // The text as written, for error messages.
  std::string text;
};

// What a template is rendered against.
struct RenderContext {
  const nlohmann::json* input = nullptr;
  // Looks up a step's output by name; returns null if the step has no output.
  std::function<const nlohmann::json*(std::string_view step)> step_output;
  std::string_view saga_id;
  std::string_view saga_key;
  std::string_view step_name;
  std::string_view step_key;
};

class Template {
 public:
  Template() = default;

  // Parses `value`; INVALID_ARGUMENT naming `where` (e.g. "steps[1].request.amount") and the
  // reference for a malformed reference.
  static absl::StatusOr<Template> Parse(const nlohmann::json& value, std::string_view where);

  // Every reference in the template, for validation.
  const std::vector<TemplateRef>& refs() const { return refs_; }
  bool empty() const { return value_.is_null(); }
  const nlohmann::json& raw() const { return value_; }

  // Renders the template. INVALID_ARGUMENT naming the reference if a non-optional reference
  // does not resolve, e.g. "request: ${input.x.y} is missing (input has no 'y' at input.x)".
  // An object member whose value is exactly one optional reference that does not resolve is
  // left out of the object (so that a proto JSON parser sees the field as absent); elsewhere a
  // missing optional reference renders as null (whole value) or "" (inside a longer string).
  // An empty template renders as null.
  absl::StatusOr<nlohmann::json> Render(const RenderContext& ctx) const;

 private:
  nlohmann::json value_;
  std::vector<TemplateRef> refs_;
  // Pre-parsed tree rendered by Render(); null for an empty template.
  std::shared_ptr<const internal::TemplateNode> root_;
};

}  // namespace saga::definition
