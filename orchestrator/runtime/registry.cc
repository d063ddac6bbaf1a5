#include "orchestrator/runtime/registry.h"

#include "absl/strings/str_cat.h"
#include "google/protobuf/util/json_util.h"
#include "orchestrator/common/status_macros.h"

namespace saga::runtime {

absl::StatusOr<RegisterResult> DefinitionRegistry::Register(
    const saga::v1::SagaDefinition& proto, const std::map<std::string, std::string>& proto_files,
    const std::string& source_name, const std::string& source_dir) {
  definition::ProtoSources sources;
  if (!source_dir.empty()) sources.search_path.push_back(source_dir);
  for (const auto& p : proto_path_) sources.search_path.push_back(p);
  sources.files = proto_files;
  SAGA_ASSIGN_OR_RETURN(std::shared_ptr<definition::Definition> compiled,
                        definition::Compile(proto, sources, source_name));
  store::DefinitionRecord record;
  record.name = compiled->name;
  record.spec_json = definition::CanonicalJson(compiled->proto);
  record.content_hash = compiled->content_hash;
  record.descriptor_set = compiled->descriptor_set;
  SAGA_ASSIGN_OR_RETURN(store::PutDefinitionResult put, store_->PutDefinition(record));
  compiled->version = put.version;
  DefinitionPtr def = std::move(compiled);
  {
    std::lock_guard<std::mutex> lock(mu_);
    versions_[{def->name, def->version}] = def;
    latest_.erase(def->name);
  }
  return RegisterResult{def, put.created};
}

DefinitionPtr DefinitionRegistry::GetCached(const std::string& name, int version) {
  const absl::Time now = absl::Now();
  std::lock_guard<std::mutex> lock(mu_);
  if (version > 0) {
    auto it = versions_.find({name, version});
    return it != versions_.end() ? it->second : nullptr;
  }
  auto it = latest_.find(name);
  if (it != latest_.end() && now - it->second.fetched < latest_ttl_) return it->second.definition;
  return nullptr;
}

absl::StatusOr<DefinitionPtr> DefinitionRegistry::Get(const std::string& name, int version) {
  const absl::Time now = absl::Now();
  if (DefinitionPtr cached = GetCached(name, version)) return cached;
  SAGA_ASSIGN_OR_RETURN(DefinitionPtr def, Load(name, version));
  std::lock_guard<std::mutex> lock(mu_);
  auto [it, inserted] = versions_.try_emplace({def->name, def->version}, def);
  if (version == 0) latest_[name] = Latest{it->second, now};
  return it->second;
}

absl::StatusOr<DefinitionPtr> DefinitionRegistry::Load(const std::string& name, int version) {
  SAGA_ASSIGN_OR_RETURN(store::DefinitionRecord record, store_->GetDefinition(name, version));
  {
    // "Latest" is re-read every latest_ttl; usually it is a version compiled already.
    std::lock_guard<std::mutex> lock(mu_);
    if (auto it = versions_.find({record.name, record.version}); it != versions_.end()) {
      return it->second;
    }
  }
  saga::v1::SagaDefinition proto;
  auto parsed = google::protobuf::util::JsonStringToMessage(record.spec_json, &proto);
  if (!parsed.ok()) {
    return absl::InternalError(absl::StrCat("stored definition ", name, " v", record.version,
                                            " does not parse: ", parsed.ToString()));
  }
  SAGA_ASSIGN_OR_RETURN(std::shared_ptr<definition::Definition> def,
                        definition::CompileStored(proto, record.descriptor_set, record.version));
  return DefinitionPtr(std::move(def));
}

}  // namespace saga::runtime
