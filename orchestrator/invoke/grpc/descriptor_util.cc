#include "orchestrator/invoke/grpc/descriptor_util.h"

#include <limits>
#include <string>
#include <utility>
#include <vector>

#include <google/protobuf/descriptor.h>
#include <google/protobuf/descriptor.pb.h>
#include <google/protobuf/util/message_differencer.h>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace saga::invoke::grpc {
namespace {

using ::google::protobuf::DescriptorPool;
using ::google::protobuf::FileDescriptor;
using ::google::protobuf::FileDescriptorProto;
using ::google::protobuf::FileDescriptorSet;

// Collects protobuf's build errors instead of logging them.
class CollectingErrorCollector final : public DescriptorPool::ErrorCollector {
 public:
  void AddError(const std::string& filename, const std::string& element_name,
                const google::protobuf::Message* /*descriptor*/, ErrorLocation /*location*/,
                const std::string& message) override {
    errors_.push_back(absl::StrCat(filename, ": ", element_name, ": ", message));
  }
  void AddWarning(const std::string& /*filename*/, const std::string& /*element_name*/,
                  const google::protobuf::Message* /*descriptor*/, ErrorLocation /*location*/,
                  const std::string& /*message*/) override {}

  std::string Joined() const { return absl::StrJoin(errors_, "; "); }

 private:
  std::vector<std::string> errors_;
};

// Builds files depth-first so that every dependency is in the pool before its importer.
class PoolBuilder {
 public:
  PoolBuilder(const FileDescriptorSet& set, DescriptorPool* pool) : set_(set), pool_(pool) {}

  absl::Status Index() {
    for (const FileDescriptorProto& file : set_.file()) {
      auto [it, inserted] = by_name_.try_emplace(file.name(), &file);
      if (!inserted && !google::protobuf::util::MessageDifferencer::Equals(*it->second, file)) {
        return absl::InvalidArgumentError(
            absl::StrCat("descriptor set lists ", file.name(), " twice with different contents"));
      }
    }
    return absl::OkStatus();
  }

  absl::Status BuildAll() {
    for (const FileDescriptorProto& file : set_.file()) {
      if (absl::Status status = Build(file.name(), /*importer=*/""); !status.ok()) {
        return status;
      }
    }
    return absl::OkStatus();
  }

 private:
  enum class Mark { kBuilding, kBuilt };

  absl::Status Build(const std::string& name, const std::string& importer) {
    if (auto it = marks_.find(name); it != marks_.end()) {
      if (it->second == Mark::kBuilding) {
        return absl::InvalidArgumentError(
            absl::StrCat("descriptor set has an import cycle through ", name));
      }
      return absl::OkStatus();
    }
    FileDescriptorProto fallback;
    const FileDescriptorProto* proto = nullptr;
    if (auto it = by_name_.find(name); it != by_name_.end()) {
      proto = it->second;
    } else if (const FileDescriptor* known =
                   absl::StartsWith(name, "google/protobuf/")
                       ? DescriptorPool::generated_pool()->FindFileByName(name)
                       : nullptr;
               known != nullptr) {
      known->CopyTo(&fallback);
      proto = &fallback;
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat(importer, " imports ", name, ", which the descriptor set does not contain"));
    }
    marks_[name] = Mark::kBuilding;
    for (const std::string& dependency : proto->dependency()) {
      if (absl::Status status = Build(dependency, name); !status.ok()) {
        return status;
      }
    }
    CollectingErrorCollector errors;
    if (pool_->BuildFileCollectingErrors(*proto, &errors) == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("descriptor set file ", name, " does not build: ", errors.Joined()));
    }
    marks_[name] = Mark::kBuilt;
    return absl::OkStatus();
  }

  const FileDescriptorSet& set_;
  DescriptorPool* pool_;
  absl::flat_hash_map<std::string, const FileDescriptorProto*> by_name_;
  absl::flat_hash_map<std::string, Mark> marks_;
};

}  // namespace

absl::StatusOr<std::shared_ptr<const DescriptorPool>> PoolFromDescriptorSet(
    std::string_view serialized_file_descriptor_set) {
  FileDescriptorSet set;
  if (serialized_file_descriptor_set.size() >
          static_cast<size_t>(std::numeric_limits<int>::max()) ||
      !set.ParseFromArray(serialized_file_descriptor_set.data(),
                          static_cast<int>(serialized_file_descriptor_set.size()))) {
    return absl::InvalidArgumentError("descriptor set is not a serialized FileDescriptorSet");
  }
  auto pool = std::make_shared<DescriptorPool>();
  PoolBuilder builder(set, pool.get());
  if (absl::Status status = builder.Index(); !status.ok()) {
    return status;
  }
  if (absl::Status status = builder.BuildAll(); !status.ok()) {
    return status;
  }
  return std::shared_ptr<const DescriptorPool>(std::move(pool));
}

absl::StatusOr<const google::protobuf::MethodDescriptor*> FindMethod(const DescriptorPool& pool,
                                                                     std::string_view name) {
  absl::string_view path(name.data(), name.size());
  if (absl::StartsWith(path, "/")) {
    path.remove_prefix(1);
  }
  const size_t slash = path.find('/');
  if (slash == absl::string_view::npos || slash == 0 || slash + 1 == path.size() ||
      path.find('/', slash + 1) != absl::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat("method name \"",
                                                   absl::string_view(name.data(), name.size()),
                                                   "\" is not of the form package.Service/Method"));
  }
  const std::string service_name(path.substr(0, slash));
  const google::protobuf::ServiceDescriptor* service = pool.FindServiceByName(service_name);
  if (service == nullptr) {
    return absl::NotFoundError(absl::StrCat("service ", service_name, " not found"));
  }
  const std::string method_name(path.substr(slash + 1));
  const google::protobuf::MethodDescriptor* method = service->FindMethodByName(method_name);
  if (method == nullptr) {
    return absl::NotFoundError(
        absl::StrCat("service ", service_name, " has no method ", method_name));
  }
  return method;
}

}  // namespace saga::invoke::grpc
