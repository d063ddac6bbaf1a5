// Calling participants. The runtime sees only this interface; invoke/grpc implements it with
// dynamic gRPC calls built from the definition's descriptors.
// Thread-safe: Call may be invoked from any thread; `done` runs exactly once, on an invoker
// thread, and must not block.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/time/time.h"

namespace google::protobuf {
class MethodDescriptor;
}  // namespace google::protobuf

namespace saga::invoke {

struct CallRequest {
  // gRPC target, e.g. "localhost:50051".
  std::string target;
  // The method; its descriptor pool must outlive the call (hold `keep_alive`).
  const google::protobuf::MethodDescriptor* method = nullptr;
  std::shared_ptr<const void> keep_alive;
  // The request message as proto3 JSON.
  std::string request_json;
  // Per-attempt deadline, measured from the call.
  absl::Duration timeout = absl::Seconds(10);
  // Metadata sent with the call: saga-id, saga-step, idempotency-key, traceparent.
  std::vector<std::pair<std::string, std::string>> metadata;
};

struct CallResult {
  // The participant's status (DEADLINE_EXCEEDED when the deadline passed). A request that
  // does not fit the method's message is INVALID_ARGUMENT without any call made.
  absl::Status status;
  // The response as JSON (proto field names, default values included) when status is OK.
  std::string response_json;
};

class Invoker {
 public:
  virtual ~Invoker() = default;
  virtual void Call(CallRequest request, absl::AnyInvocable<void(CallResult) &&> done) = 0;
};

}  // namespace saga::invoke
