// ReflectionService: the gRPC server reflection protocol
// (https://github.com/grpc/grpc/blob/master/doc/server-reflection.md), versions
// grpc.reflection.v1alpha and grpc.reflection.v1, on the completion-queue API, for grpcurl and
// grpc_cli. It replaces gRPC's reflection plugin (grpc::reflection::
// InitProtoReflectionServerBuilderPlugin), a sync service that brings the sync server's polling
// threads.
//
// Each ServerReflectionInfo stream answers every request with one response (valid_host and
// original_request set), in order, from the descriptors of
// google::protobuf::DescriptorPool::generated_pool() (so the served services' generated code
// must be linked in):
//   - list_services: the names given to the constructor;
//   - file_by_filename, file_containing_symbol, file_containing_extension: the file's
//     serialized FileDescriptorProto followed by those of its transitive dependencies, each once;
//   - all_extension_numbers_of_type: the type's known extension numbers;
//   - an unknown file, symbol, type or extension: error_response NOT_FOUND; a request with no
//     message_request set: error_response INVALID_ARGUMENT.
// The stream ends with OK once the client half-closes.
//
// Use: Register before the server is built, Start after BuildAndStart, Shutdown before the
// server's Shutdown (required: see Shutdown). The queue's events must be run by a
// saga::rpc::CqRunner, and the service must outlive it: destroy it only after the queue has been
// shut down and drained.
#pragma once

#include <memory>
#include <string>
#include <vector>

namespace grpc {
class ServerBuilder;
class ServerCompletionQueue;
}  // namespace grpc

namespace saga::server {

class ReflectionService {
 public:
  // `services`: the full names of the services served, for list_services, e.g.
  // {"saga.v1.SagaOrchestrator", "grpc.health.v1.Health",
  //  "grpc.reflection.v1alpha.ServerReflection", "grpc.reflection.v1.ServerReflection"}.
  explicit ReflectionService(std::vector<std::string> services);
  ReflectionService(const ReflectionService&) = delete;
  ReflectionService& operator=(const ReflectionService&) = delete;
  ~ReflectionService();

  // Before the server is built: registers both versions.
  void Register(grpc::ServerBuilder& builder);
  // After BuildAndStart: accepts calls on `cq`, a completion queue of the server (from
  // ServerBuilder::AddCompletionQueue). Once only.
  void Start(grpc::ServerCompletionQueue* cq);

  // Required before the server's Shutdown (the server's queue must not be shut down before it
  // has returned): cancels the streams still open (an idle client's would otherwise hold the
  // server's Shutdown until its deadline) and blocks until they have ended. From then on the
  // service starts no operation on the queue: streams that arrive later are cancelled, and the
  // server's Shutdown fails the calls requested. Not from a thread of the queue. Idempotent.
  void Shutdown();

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace saga::server
