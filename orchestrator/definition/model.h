// The compiled form of a saga definition: validated, with durations parsed, steps indexed,
// the dependency graph built, templates parsed and every method resolved against the
// participants' descriptors. Immutable once built; shared between threads as
// std::shared_ptr<const Definition>.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "orchestrator/definition/template.h"
#include "saga/v1/definition.pb.h"

namespace google::protobuf {
class DescriptorPool;
class MethodDescriptor;
}  // namespace google::protobuf

namespace saga::definition {

// Defaults applied where a workflow file says nothing (documented in the README).
inline constexpr int kDefaultMaxAttempts = 3;
inline constexpr int kDefaultCompensationMaxAttempts = 10;
inline constexpr absl::Duration kDefaultInitialBackoff = absl::Milliseconds(100);
inline constexpr absl::Duration kDefaultMaxBackoff = absl::Seconds(10);
inline constexpr double kDefaultBackoffMultiplier = 2.0;
inline constexpr double kDefaultJitter = 0.2;
inline constexpr absl::Duration kDefaultTimeout = absl::Seconds(10);
// Limits.
inline constexpr int kMaxSteps = 100;
inline constexpr int kMaxAttemptsLimit = 100;
inline constexpr size_t kMaxDefinitionBytes = 1 << 20;

struct RetryPolicy {
  int max_attempts = kDefaultMaxAttempts;
  absl::Duration initial_backoff = kDefaultInitialBackoff;
  absl::Duration max_backoff = kDefaultMaxBackoff;
  double multiplier = kDefaultBackoffMultiplier;
  double jitter = kDefaultJitter;
  // Codes retried; any other non-OK code is a business failure.
  std::vector<absl::StatusCode> retryable_codes = {
      absl::StatusCode::kUnavailable, absl::StatusCode::kDeadlineExceeded,
      absl::StatusCode::kResourceExhausted, absl::StatusCode::kAborted};

  bool IsRetryable(absl::StatusCode code) const {
    for (auto c : retryable_codes) {
      if (c == code) return true;
    }
    return false;
  }
};

// One gRPC call: a step's forward call or its compensation.
struct CallSpec {
  // "package.Service/Method" as written.
  std::string method_name;
  // Resolved in the definition's descriptor pool; never null in a compiled Definition.
  const google::protobuf::MethodDescriptor* method = nullptr;
  Template request;
  RetryPolicy retry;
  absl::Duration timeout = kDefaultTimeout;
};

enum class StepKind { kCall };

struct StepSpec {
  std::string name;
  int index = 0;
  StepKind kind = StepKind::kCall;
  std::string participant;
  // gRPC target of the participant.
  std::string target;
  CallSpec action;
  std::optional<CallSpec> compensation;
  // Indices of the steps this one runs after, and of the steps that run after it.
  std::vector<int> after;
  std::vector<int> successors;
};

struct Definition {
  std::string name;
  int version = 0;
  // The definition as registered (defaults not filled in).
  saga::v1::SagaDefinition proto;
  std::vector<StepSpec> steps;
  absl::flat_hash_map<std::string, int> step_index;
  // Serialized google.protobuf.FileDescriptorSet of every .proto the participants need,
  // dependencies first. Stored with the definition so that a version never changes.
  std::string descriptor_set;
  // Hex SHA-256 over the canonical proto and the descriptor set.
  std::string content_hash;
  // Owns every descriptor the CallSpecs point into.
  std::shared_ptr<const google::protobuf::DescriptorPool> pool;

  const StepSpec* FindStep(std::string_view step_name) const {
    auto it = step_index.find(absl::string_view(step_name.data(), step_name.size()));
    return it == step_index.end() ? nullptr : &steps[static_cast<size_t>(it->second)];
  }
};

}  // namespace saga::definition
