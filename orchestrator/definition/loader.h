// Loading and compiling saga definitions.
//
// ParseDefinitionText: YAML (or JSON, a subset of YAML) -> JSON -> saga.v1.SagaDefinition with
// protobuf's JSON parser, so files and RegisterDefinition share one schema. Unknown fields are
// errors.
//
// Compile: validates a SagaDefinition (names, graph, templates, policies, limits), resolves the
// participants' .proto files and every method, and builds the immutable Definition.
//
// Every error is INVALID_ARGUMENT with a message "<source>: <path>: <what>", e.g.
//   "order.yaml: steps[1] (charge).request: unknown step 'shipp' in ${steps.shipp.output.id}"
// and, for YAML syntax errors, the line and column. Thread-safe (no shared state).
#pragma once

#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "orchestrator/definition/model.h"
#include "saga/v1/definition.pb.h"

namespace saga::definition {

absl::StatusOr<saga::v1::SagaDefinition> ParseDefinitionText(std::string_view text,
                                                             std::string_view source_name);

// Where .proto files are found.
struct ProtoSources {
  // Folders searched in order (the workflow file's folder, then --proto-path folders).
  std::vector<std::string> search_path;
  // In-memory files by path; searched before the folders.
  std::map<std::string, std::string> files;
};

// Validates and compiles a definition whose .proto files are resolved from `sources`.
// The returned Definition has version 0; the caller sets it once stored.
absl::StatusOr<std::shared_ptr<Definition>> Compile(const saga::v1::SagaDefinition& proto,
                                                    const ProtoSources& sources,
                                                    std::string_view source_name);

// Rebuilds a stored definition from its canonical proto and descriptor set (no file access).
absl::StatusOr<std::shared_ptr<Definition>> CompileStored(const saga::v1::SagaDefinition& proto,
                                                          std::string_view descriptor_set,
                                                          int version);

// The canonical JSON text stored for a definition (stable field order).
std::string CanonicalJson(const saga::v1::SagaDefinition& proto);

}  // namespace saga::definition
