#include "orchestrator/server/reflection_service.h"

#include <unordered_set>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/descriptor.pb.h"
#include "grpc/reflection/v1/reflection.grpc.pb.h"
#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"
#include "grpcpp/server_builder.h"
#include "grpcpp/server_context.h"
#include "orchestrator/rpc/completion_queue.h"

namespace saga::server {
namespace {

namespace pb = ::google::protobuf;

// The generated types of one version of the protocol; the two versions' messages are identical
// but for their package.
struct V1alpha {
  using Service = ::grpc::reflection::v1alpha::ServerReflection::AsyncService;
  using Request = ::grpc::reflection::v1alpha::ServerReflectionRequest;
  using Response = ::grpc::reflection::v1alpha::ServerReflectionResponse;
};
struct V1 {
  using Service = ::grpc::reflection::v1::ServerReflection::AsyncService;
  using Request = ::grpc::reflection::v1::ServerReflectionRequest;
  using Response = ::grpc::reflection::v1::ServerReflectionResponse;
};

template <typename Response>
void SetError(grpc::StatusCode code, std::string message, Response* response) {
  response->mutable_error_response()->set_error_code(static_cast<int>(code));
  response->mutable_error_response()->set_error_message(std::move(message));
}

// Appends `file` and its transitive dependencies not yet in `seen`, the file first.
template <typename FileDescriptorResponse>
void AddFileAndDependencies(const pb::FileDescriptor* file,
                            std::unordered_set<const pb::FileDescriptor*>& seen,
                            FileDescriptorResponse* out) {
  if (!seen.insert(file).second) return;
  pb::FileDescriptorProto proto;
  file->CopyTo(&proto);
  proto.SerializeToString(out->add_file_descriptor_proto());
  for (int i = 0; i < file->dependency_count(); ++i) {
    AddFileAndDependencies(file->dependency(i), seen, out);
  }
}

template <typename Response>
void AnswerWithFile(const pb::FileDescriptor* file, Response* response) {
  std::unordered_set<const pb::FileDescriptor*> seen;
  AddFileAndDependencies(file, seen, response->mutable_file_descriptor_response());
}

// Fills `response` (cleared) with the answer to `request`.
template <typename Request, typename Response>
void Answer(const Request& request, const std::vector<std::string>& services, Response* response) {
  response->set_valid_host(request.host());
  *response->mutable_original_request() = request;
  const pb::DescriptorPool* pool = pb::DescriptorPool::generated_pool();
  switch (request.message_request_case()) {
    case Request::kFileByFilename: {
      const pb::FileDescriptor* file = pool->FindFileByName(request.file_by_filename());
      if (file == nullptr) {
        return SetError(grpc::StatusCode::NOT_FOUND,
                        absl::StrCat("file not found: ", request.file_by_filename()), response);
      }
      return AnswerWithFile(file, response);
    }
    case Request::kFileContainingSymbol: {
      const pb::FileDescriptor* file =
          pool->FindFileContainingSymbol(request.file_containing_symbol());
      if (file == nullptr) {
        return SetError(grpc::StatusCode::NOT_FOUND,
                        absl::StrCat("symbol not found: ", request.file_containing_symbol()),
                        response);
      }
      return AnswerWithFile(file, response);
    }
    case Request::kFileContainingExtension: {
      const auto& extension = request.file_containing_extension();
      const pb::Descriptor* type = pool->FindMessageTypeByName(extension.containing_type());
      const pb::FieldDescriptor* field =
          type == nullptr ? nullptr
                          : pool->FindExtensionByNumber(type, extension.extension_number());
      if (field == nullptr) {
        return SetError(grpc::StatusCode::NOT_FOUND,
                        absl::StrCat("extension not found: ", extension.containing_type(), "(",
                                     extension.extension_number(), ")"),
                        response);
      }
      return AnswerWithFile(field->file(), response);
    }
    case Request::kAllExtensionNumbersOfType: {
      const pb::Descriptor* type =
          pool->FindMessageTypeByName(request.all_extension_numbers_of_type());
      if (type == nullptr) {
        return SetError(grpc::StatusCode::NOT_FOUND,
                        absl::StrCat("type not found: ", request.all_extension_numbers_of_type()),
                        response);
      }
      std::vector<const pb::FieldDescriptor*> extensions;
      pool->FindAllExtensions(type, &extensions);
      auto* numbers = response->mutable_all_extension_numbers_response();
      numbers->set_base_type_name(type->full_name());
      for (const pb::FieldDescriptor* field : extensions) {
        numbers->add_extension_number(field->number());
      }
      return;
    }
    case Request::kListServices: {
      auto* list = response->mutable_list_services_response();
      for (const std::string& name : services) list->add_service()->set_name(name);
      return;
    }
    case Request::MESSAGE_REQUEST_NOT_SET:
      break;
  }
  SetError(grpc::StatusCode::INVALID_ARGUMENT, "no message_request set", response);
}

}  // namespace

// Shutdown and the queue: once the server has shut down, its queue is shut down too, and an
// operation started on it after that aborts the process. A stream cancelled by the server's
// Shutdown may still be handled on a queue thread after the server's Shutdown has returned, so
// no operation may start once this service's Shutdown has returned: it cancels the streams in
// live_ and waits until they are freed, and a stream that arrives later is freed at once,
// without any operation.
class ReflectionService::Impl {
 public:
  explicit Impl(std::vector<std::string> services) : services_(std::move(services)) {}

  void Register(grpc::ServerBuilder& builder) {
    builder.RegisterService(&v1alpha_);
    builder.RegisterService(&v1_);
  }

  void Start(grpc::ServerCompletionQueue* cq);

  void Shutdown();

 private:
  template <typename Api>
  class Stream;

  // A stream has started: registers it and requests the next one. False after Shutdown: nothing
  // started (the call is cancelled when it is freed).
  template <typename Api>
  bool Admit(Stream<Api>* stream);
  void Remove(grpc::ServerContext* ctx) {
    absl::MutexLock lock(&mu_);
    live_.erase(ctx);
  }

  const std::vector<std::string> services_;
  V1alpha::Service v1alpha_;
  V1::Service v1_;
  grpc::ServerCompletionQueue* cq_ = nullptr;

  absl::Mutex mu_;
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
  // Contexts of the streams admitted and not freed yet.
  std::unordered_set<grpc::ServerContext*> live_ ABSL_GUARDED_BY(mu_);
};

// One ServerReflectionInfo stream: request the call, then read a request, write its answer, read
// the next... and Finish with OK when the read fails (the client half-closed or the call ended).
// Exactly one operation is pending at any time, so one tag serves them all; the object frees
// itself when the last one completes.
template <typename Api>
class ReflectionService::Impl::Stream {
 public:
  static void Spawn(Impl* impl, typename Api::Service* service) { new Stream(impl, service); }

 private:
  enum class State { kRequested, kReading, kWriting, kFinishing };

  friend class Impl;

  Stream(Impl* impl, typename Api::Service* service) : impl_(impl), service_(service) {
    tag_.Set([this](bool ok) { Proceed(ok); });
    service_->RequestServerReflectionInfo(&ctx_, &stream_, impl_->cq_, impl_->cq_, &tag_);
  }

  void Proceed(bool ok) {
    switch (state_) {
      case State::kRequested:
        // !ok: the server is shutting down and no call came.
        if (!ok || !impl_->Admit(this)) {
          delete this;
          return;
        }
        return Read();
      case State::kReading:
        if (!ok) {
          state_ = State::kFinishing;
          stream_.Finish(grpc::Status::OK, &tag_);
          return;
        }
        response_.Clear();
        Answer(request_, impl_->services_, &response_);
        state_ = State::kWriting;
        stream_.Write(response_, &tag_);
        return;
      case State::kWriting:
        if (ok) return Read();
        break;  // the call is broken: nothing more can be sent
      case State::kFinishing:
        break;
    }
    impl_->Remove(&ctx_);
    delete this;
  }

  void Read() {
    state_ = State::kReading;
    stream_.Read(&request_, &tag_);
  }

  Impl* const impl_;
  typename Api::Service* const service_;
  grpc::ServerContext ctx_;
  grpc::ServerAsyncReaderWriter<typename Api::Response, typename Api::Request> stream_{&ctx_};
  typename Api::Request request_;
  typename Api::Response response_;
  rpc::FnTag tag_;
  State state_ = State::kRequested;
};

void ReflectionService::Impl::Start(grpc::ServerCompletionQueue* cq) {
  cq_ = cq;
  Stream<V1alpha>::Spawn(this, &v1alpha_);
  Stream<V1>::Spawn(this, &v1_);
}

void ReflectionService::Impl::Shutdown() {
  absl::MutexLock lock(&mu_);
  shut_down_ = true;
  for (grpc::ServerContext* ctx : live_) ctx->TryCancel();
  // Cancelled, each stream's pending operation completes at once with ok = false.
  mu_.Await(absl::Condition(
      +[](std::unordered_set<grpc::ServerContext*>* live) { return live->empty(); }, &live_));
}

template <typename Api>
bool ReflectionService::Impl::Admit(Stream<Api>* stream) {
  absl::MutexLock lock(&mu_);
  if (shut_down_) return false;
  live_.insert(&stream->ctx_);
  Stream<Api>::Spawn(this, stream->service_);
  return true;
}

ReflectionService::ReflectionService(std::vector<std::string> services)
    : impl_(std::make_unique<Impl>(std::move(services))) {}
ReflectionService::~ReflectionService() = default;

void ReflectionService::Register(grpc::ServerBuilder& builder) { impl_->Register(builder); }
void ReflectionService::Start(grpc::ServerCompletionQueue* cq) { impl_->Start(cq); }
void ReflectionService::Shutdown() { impl_->Shutdown(); }

}  // namespace saga::server
