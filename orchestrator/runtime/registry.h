// Registered definitions: compiles and stores new versions, and serves compiled definitions by
// name and version from a cache (versions are immutable; "latest" is re-read after a short
// time so that versions registered on other replicas are seen).
// Thread-safe.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "orchestrator/definition/loader.h"
#include "orchestrator/definition/model.h"
#include "orchestrator/store/store.h"

namespace saga::runtime {

using DefinitionPtr = std::shared_ptr<const definition::Definition>;

struct RegisterResult {
  DefinitionPtr definition;
  bool created = false;
};

class DefinitionRegistry {
 public:
  DefinitionRegistry(store::Store* store, std::vector<std::string> proto_path,
                     absl::Duration latest_ttl = absl::Seconds(1))
      : store_(store), proto_path_(std::move(proto_path)), latest_ttl_(latest_ttl) {}

  // Validates, compiles and stores `proto`. INVALID_ARGUMENT for a definition that does not
  // validate; kUnavailable when the database is unreachable.
  absl::StatusOr<RegisterResult> Register(const saga::v1::SagaDefinition& proto,
                                          const std::map<std::string, std::string>& proto_files,
                                          const std::string& source_name,
                                          const std::string& source_dir = "");

  // version 0 = latest. NOT_FOUND for an unknown name or version.
  absl::StatusOr<DefinitionPtr> Get(const std::string& name, int version);

  // The definition if the cache can answer without the database (for "latest": fetched less
  // than latest_ttl ago), else nullptr. Never blocks on I/O.
  DefinitionPtr GetCached(const std::string& name, int version);

 private:
  absl::StatusOr<DefinitionPtr> Load(const std::string& name, int version);

  store::Store* store_;
  std::vector<std::string> proto_path_;
  absl::Duration latest_ttl_;
  std::mutex mu_;
  std::map<std::pair<std::string, int>, DefinitionPtr> versions_;
  struct Latest {
    DefinitionPtr definition;
    absl::Time fetched;
  };
  absl::flat_hash_map<std::string, Latest> latest_;
};

}  // namespace saga::runtime
