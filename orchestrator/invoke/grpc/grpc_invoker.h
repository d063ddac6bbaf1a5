// GrpcInvoker: the production Invoker. It calls participants' unary gRPC methods dynamically,
// from descriptors only (no generated code): the request JSON is converted to protobuf wire
// bytes with the method's input type, sent with grpc::GenericStub's completion-queue API as an
// asynchronous unary call, and the reply is rendered back to JSON with the output type.
// (Not gRPC 1.51's callback API: it runs on a process-wide "alternative" queue whose threads
// (cores/2, at least 2) pass every event to each other and nap 100 ms after each idle second.)
//
// Results (CallResult::status):
//   - OK: response_json holds the reply, proto field names, default values included; 64-bit
//     integers are JSON strings (proto3 JSON).
//   - INVALID_ARGUMENT, without any call made: `method` is null, streaming, or the request
//     JSON does not fit the input type ("request does not fit pkg.Req: <parser message>"),
//     or `target` is empty.
//   - INTERNAL: the reply bytes are not a valid message of the output type
//     ("malformed response from pkg.Svc.Method").
//   - UNAVAILABLE: the call was cancelled because the invoker is being destroyed (the outcome
//     at the participant is unknown).
//   - DEADLINE_EXCEEDED when `timeout` passed (without any call made when it is <= 0);
//     absl::InfiniteDuration() means no deadline.
//   - anything else: the participant's (or gRPC's) status, code and message unchanged
//     (e.g. UNAVAILABLE when the target cannot be reached, RESOURCE_EXHAUSTED for a reply larger
//     than max_receive_message_bytes).
//
// Metadata: keys are lower-cased; pairs whose key is still not a legal gRPC key ([0-9a-z_.-]),
// or is reserved ("grpc-...", "te", "content-type"), are dropped; in a value that is not printable
// ASCII (unless the key ends in "-bin") the offending bytes and '%' are percent-encoded. gRPC would
// abort the process on such metadata otherwise.
//
// Caching: one channel (or `channels_per_target`) per target for the invoker's lifetime; per
// MethodDescriptor the gRPC path and type URLs; per DescriptorPool a type resolver. A pool's
// cache entries are tied to the lifetime of the request's `keep_alive` (a weak reference), so
// a new pool at a reused address is never confused with a dead one. Pass `keep_alive`: without
// it, descriptors of pools other than the generated pool are not cached (slow path).
//
// Threads: the reply is handled, and `done` runs, on the completion queue's thread that read it
// (no further thread hop): the queue of the options, or the invoker's own with one thread. One
// more thread, started on the first such error, runs `done` for errors found before calling.
// No thread per call, channel or target.
//
// Thread-safety: Call may be invoked concurrently from any thread. `done` runs exactly once, on
// one of the invoker's threads, never inside Call and never while the invoker holds a lock; it
// must not block (it holds up other completions). The destructor cancels calls in flight and
// returns after every `done` has returned; Call must not race with destruction.
#pragma once

#include <memory>

#include "orchestrator/invoke/invoker.h"

namespace grpc {
class ChannelCredentials;
class CompletionQueue;
}  // namespace grpc

namespace saga::invoke::grpc {

struct GrpcInvokerOptions {
  // Largest reply accepted; larger ones fail with RESOURCE_EXHAUSTED. Values < 1 mean the
  // default (4 MiB).
  int max_receive_message_bytes = 4 << 20;
  // Credentials for every channel; null means insecure (plaintext).
  std::shared_ptr<::grpc::ChannelCredentials> credentials;
  // Channels (each with its own connection) per target, used round-robin. Values < 1 mean 1.
  int channels_per_target = 1;
  // The completion queue that calls complete on; its events must be run by a
  // saga::rpc::CqRunner (sagad passes its server's queue, so that one thread handles the API
  // and the replies). It must outlive the invoker. Null: the invoker makes its own queue and
  // runs it on one thread of its own.
  ::grpc::CompletionQueue* completion_queue = nullptr;
};

class GrpcInvoker final : public saga::invoke::Invoker {
 public:
  // Never fails. Creates no channel before the first call to a target.
  static std::unique_ptr<GrpcInvoker> Create(GrpcInvokerOptions options);

  GrpcInvoker(const GrpcInvoker&) = delete;
  GrpcInvoker& operator=(const GrpcInvoker&) = delete;
  // Calls Shutdown().
  ~GrpcInvoker() override;

  // Cancels the calls in flight and waits until each one's `done` has run; later calls fail
  // with UNAVAILABLE, their `done` running inside Call. A completion queue given in the options
  // must still be running; it can be shut down once this returns. Idempotent.
  void Shutdown();

  void Call(CallRequest request, absl::AnyInvocable<void(CallResult) &&> done) override;

 private:
  class Impl;
  explicit GrpcInvoker(std::unique_ptr<Impl> impl);

  std::unique_ptr<Impl> impl_;
};

}  // namespace saga::invoke::grpc
