// Descriptor helpers for dynamic invocation: build a DescriptorPool from a serialized
// google.protobuf.FileDescriptorSet and resolve "package.Service/Method" names in it.
//
// Thread-safety: the functions are stateless and safe to call from any thread. The returned
// pool is immutable (const) and may be shared between threads.
#pragma once

#include <memory>
#include <string_view>

#include "absl/status/statusor.h"

namespace google::protobuf {
class DescriptorPool;
class MethodDescriptor;
}  // namespace google::protobuf

namespace saga::invoke::grpc {

// Builds a new pool holding every file of `serialized_file_descriptor_set` (the bytes of a
// google.protobuf.FileDescriptorSet, as `protoc --include_imports --descriptor_set_out`
// writes it). Files may appear in any order: each is built after its dependencies. A
// dependency missing from the set is taken from the well-known types compiled into the binary
// (google/protobuf/*.proto only); any other missing file is an error.
//
// Returns INVALID_ARGUMENT when the bytes do not parse, a file is listed twice with different
// contents, a dependency is missing, the imports form a cycle, or protobuf rejects a file
// (the message names the file and carries protobuf's errors).
absl::StatusOr<std::shared_ptr<const google::protobuf::DescriptorPool>> PoolFromDescriptorSet(
    std::string_view serialized_file_descriptor_set);

// Finds the method named "package.Service/Method" (a leading '/' is accepted, as in the gRPC
// path "/package.Service/Method") in `pool`.
//
// Returns INVALID_ARGUMENT when `name` is not of that form, NOT_FOUND when the service or the
// method does not exist. The descriptor lives as long as `pool`.
absl::StatusOr<const google::protobuf::MethodDescriptor*> FindMethod(
    const google::protobuf::DescriptorPool& pool, std::string_view name);

}  // namespace saga::invoke::grpc
