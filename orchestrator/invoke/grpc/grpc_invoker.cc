#include "orchestrator/invoke/grpc/grpc_invoker.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <limits>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <google/protobuf/descriptor.h>
#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>
#include <google/protobuf/type.pb.h>
#include <google/protobuf/util/json_util.h>
#include <google/protobuf/util/type_resolver.h>
#include <google/protobuf/util/type_resolver_util.h>
#include <grpcpp/client_context.h>
#include <grpcpp/completion_queue.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/async_unary_call.h>
#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/channel_arguments.h>
#include <grpcpp/support/slice.h>
#include <grpcpp/support/status.h>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "orchestrator/rpc/completion_queue.h"

namespace saga::invoke::grpc {
namespace {

namespace pb = ::google::protobuf;

constexpr char kTypeUrlPrefix[] = "type.googleapis.com";
// Nesting limit of the response validator (protobuf's own default recursion limit).
constexpr int kMaxMessageDepth = 100;
// Deadlines further out than this are clamped (keeps the time_point arithmetic in range).
constexpr absl::Duration kMaxTimeout = absl::Hours(24 * 365);

absl::Status FromProtobufStatus(const pb::util::Status& status) {
  return absl::Status(static_cast<absl::StatusCode>(status.code()),
                      absl::string_view(status.message().data(), status.message().size()));
}

// The JSON parser's messages span lines (a caret under the offending position); statuses travel
// into events and logs, so the lines are joined.
std::string OneLine(absl::string_view message) {
  return absl::StrJoin(absl::StrSplit(message, '\n', absl::SkipWhitespace()), " ");
}

// ---------------------------------------------------------------------------------------------
// Type resolution.

// The JSON converters of protobuf 3.21 resolve every message and enum type they meet, for every
// call, by converting descriptors into google.protobuf.Type. This wrapper memoizes the result per
// type URL (the pool is immutable). Thread-safe.
class CachingTypeResolver final : public pb::util::TypeResolver {
 public:
  explicit CachingTypeResolver(const pb::DescriptorPool* pool)
      : base_(pb::util::NewTypeResolverForDescriptorPool(kTypeUrlPrefix, pool)) {}

  pb::util::Status ResolveMessageType(const std::string& type_url, pb::Type* type) override {
    return Resolve(type_url, type, messages_,
                   [&](pb::Type* out) { return base_->ResolveMessageType(type_url, out); });
  }

  pb::util::Status ResolveEnumType(const std::string& type_url, pb::Enum* enum_type) override {
    return Resolve(type_url, enum_type, enums_,
                   [&](pb::Enum* out) { return base_->ResolveEnumType(type_url, out); });
  }

 private:
  template <typename T, typename Fill>
  pb::util::Status Resolve(const std::string& type_url, T* out,
                           absl::flat_hash_map<std::string, T>& cache, Fill fill) {
    {
      absl::ReaderMutexLock lock(&mu_);
      if (auto it = cache.find(type_url); it != cache.end()) {
        *out = it->second;
        return pb::util::Status();
      }
    }
    absl::MutexLock lock(&mu_);
    auto it = cache.find(type_url);
    if (it == cache.end()) {
      T resolved;
      if (pb::util::Status status = fill(&resolved); !status.ok()) {
        return status;
      }
      it = cache.emplace(type_url, std::move(resolved)).first;
    }
    *out = it->second;
    return pb::util::Status();
  }

  const std::unique_ptr<pb::util::TypeResolver> base_;  // used under mu_ only
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, pb::Type> messages_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, pb::Enum> enums_ ABSL_GUARDED_BY(mu_);
};

// Per DescriptorPool. Holds no descriptor pointers in its destructor path, so it may outlive the
// pool (cache entries of a dead pool are swept, never used).
struct PoolInfo {
  PoolInfo(const pb::DescriptorPool* p, std::weak_ptr<const void> o, bool pin)
      : pool(p), owner(std::move(o)), pinned(pin), resolver(p) {}

  // True while the pool is known to be alive: it is the generated pool, or the `keep_alive` this
  // entry was created with still exists.
  bool Alive() const { return pinned || !owner.expired(); }

  const pb::DescriptorPool* const pool;
  const std::weak_ptr<const void> owner;
  const bool pinned;
  CachingTypeResolver resolver;
};

// Per MethodDescriptor; immutable once built.
struct MethodInfo {
  std::shared_ptr<PoolInfo> pool;
  const pb::MethodDescriptor* descriptor = nullptr;
  std::string full_name;        // "pkg.Svc.Method"
  std::string path;             // "/pkg.Svc/Method"
  std::string input_name;       // "pkg.Request"
  std::string input_type_url;   // "type.googleapis.com/pkg.Request"
  std::string output_type_url;  // "type.googleapis.com/pkg.Reply"
  bool streaming = false;
};

// ---------------------------------------------------------------------------------------------
// Response validation. protobuf 3.21's BinaryToJson renders truncated or garbled bytes without
// an error, so the reply is checked first, with the semantics of a protobuf parse: fields of
// unknown number or unexpected wire type are skipped as unknown fields; known message fields are
// checked recursively; string fields must be valid UTF-8 (JSON cannot carry anything else).

bool IsValidUtf8(const unsigned char* p, size_t n) {
  size_t i = 0;
  while (i < n) {
    const unsigned char c = p[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t extra = 0;
    uint32_t code_point = 0;
    if (c >= 0xC2 && c <= 0xDF) {
      extra = 1;
      code_point = c & 0x1Fu;
    } else if (c >= 0xE0 && c <= 0xEF) {
      extra = 2;
      code_point = c & 0x0Fu;
    } else if (c >= 0xF0 && c <= 0xF4) {
      extra = 3;
      code_point = c & 0x07u;
    } else {
      return false;
    }
    if (n - i <= extra) {
      return false;
    }
    for (size_t k = 1; k <= extra; ++k) {
      const unsigned char cc = p[i + k];
      if ((cc & 0xC0u) != 0x80u) {
        return false;
      }
      code_point = (code_point << 6) | (cc & 0x3Fu);
    }
    // Overlong forms, surrogates and code points beyond U+10FFFF.
    if ((extra == 2 && code_point < 0x800) || (extra == 3 && code_point < 0x10000) ||
        (code_point >= 0xD800 && code_point <= 0xDFFF) || code_point > 0x10FFFF) {
      return false;
    }
    i += extra + 1;
  }
  return true;
}

uint32_t ExpectedWireType(const pb::FieldDescriptor& field) {
  switch (field.type()) {
    case pb::FieldDescriptor::TYPE_DOUBLE:
    case pb::FieldDescriptor::TYPE_FIXED64:
    case pb::FieldDescriptor::TYPE_SFIXED64:
      return 1;
    case pb::FieldDescriptor::TYPE_FLOAT:
    case pb::FieldDescriptor::TYPE_FIXED32:
    case pb::FieldDescriptor::TYPE_SFIXED32:
      return 5;
    case pb::FieldDescriptor::TYPE_STRING:
    case pb::FieldDescriptor::TYPE_BYTES:
    case pb::FieldDescriptor::TYPE_MESSAGE:
      return 2;
    case pb::FieldDescriptor::TYPE_GROUP:
      return 3;
    default:  // varint types: int32/64, uint32/64, sint32/64, bool, enum
      return 0;
  }
}

class WireValidator {
 public:
  WireValidator(const char* data, size_t size)
      : data_(reinterpret_cast<const uint8_t*>(data)), in_(data_, static_cast<int>(size)) {}

  bool Valid(const pb::Descriptor& type) { return Message(&type, /*end_group_field=*/0, 0); }

 private:
  // Reads fields until the end of the current limit (or the END_GROUP tag of `end_group_field`
  // when non-zero). `type` may be null for the contents of an unknown group.
  bool Message(const pb::Descriptor* type, uint32_t end_group_field, int depth) {
    if (depth > kMaxMessageDepth) {
      return false;
    }
    for (;;) {
      const uint32_t tag = in_.ReadTag();
      if (tag == 0) {
        return end_group_field == 0 && in_.ConsumedEntireMessage();
      }
      const uint32_t number = tag >> 3;
      const uint32_t wire_type = tag & 7u;
      if (number == 0) {
        return false;
      }
      if (wire_type == 4) {
        return number == end_group_field;
      }
      const pb::FieldDescriptor* field =
          type == nullptr ? nullptr : type->FindFieldByNumber(static_cast<int>(number));
      if (field != nullptr && wire_type == ExpectedWireType(*field)) {
        if (!KnownField(*field, number, depth)) {
          return false;
        }
      } else if (field != nullptr && wire_type == 2 && field->is_packable()) {
        if (!Packed(*field)) {
          return false;
        }
      } else if (!Skip(number, wire_type, depth)) {
        return false;
      }
    }
  }

  bool KnownField(const pb::FieldDescriptor& field, uint32_t number, int depth) {
    switch (field.type()) {
      case pb::FieldDescriptor::TYPE_MESSAGE: {
        uint32_t length = 0;
        if (!in_.ReadVarint32(&length) || static_cast<int>(length) < 0 ||
            static_cast<int>(length) > in_.BytesUntilLimit()) {
          return false;
        }
        const auto limit = in_.PushLimit(static_cast<int>(length));
        const bool ok = Message(field.message_type(), 0, depth + 1);
        in_.PopLimit(limit);
        return ok;
      }
      case pb::FieldDescriptor::TYPE_GROUP:
        return Message(field.message_type(), number, depth + 1);
      case pb::FieldDescriptor::TYPE_STRING: {
        uint32_t length = 0;
        if (!in_.ReadVarint32(&length) || static_cast<int>(length) < 0 ||
            static_cast<int>(length) > in_.BytesUntilLimit()) {
          return false;
        }
        const int start = in_.CurrentPosition();
        return IsValidUtf8(data_ + start, length) && in_.Skip(static_cast<int>(length));
      }
      default:
        return Skip(number, ExpectedWireType(field), depth);
    }
  }

  bool Packed(const pb::FieldDescriptor& field) {
    uint32_t length = 0;
    if (!in_.ReadVarint32(&length) || static_cast<int>(length) < 0 ||
        static_cast<int>(length) > in_.BytesUntilLimit()) {
      return false;
    }
    const uint32_t expected = ExpectedWireType(field);
    if (expected == 1) {
      return length % 8 == 0 && in_.Skip(static_cast<int>(length));
    }
    if (expected == 5) {
      return length % 4 == 0 && in_.Skip(static_cast<int>(length));
    }
    const auto limit = in_.PushLimit(static_cast<int>(length));
    bool ok = true;
    uint64_t value = 0;
    while (ok && in_.BytesUntilLimit() > 0) {
      ok = in_.ReadVarint64(&value);
    }
    in_.PopLimit(limit);
    return ok;
  }

  bool Skip(uint32_t number, uint32_t wire_type, int depth) {
    switch (wire_type) {
      case 0: {
        uint64_t value = 0;
        return in_.ReadVarint64(&value);
      }
      case 1: {
        uint64_t value = 0;
        return in_.ReadLittleEndian64(&value);
      }
      case 2: {
        uint32_t length = 0;
        return in_.ReadVarint32(&length) && static_cast<int>(length) >= 0 &&
               in_.Skip(static_cast<int>(length));
      }
      case 3:
        return Message(nullptr, number, depth + 1);
      case 5: {
        uint32_t value = 0;
        return in_.ReadLittleEndian32(&value);
      }
      default:
        return false;
    }
  }

  const uint8_t* data_;
  pb::io::CodedInputStream in_;
};

// ---------------------------------------------------------------------------------------------
// Metadata. gRPC aborts the process on metadata it considers illegal, so it is sanitized here.

bool IsLegalKey(absl::string_view key) {
  if (key.empty()) {
    return false;
  }
  for (const char c : key) {
    const bool legal =
        (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.';
    if (!legal) {
      return false;
    }
  }
  return true;
}

bool IsReservedKey(absl::string_view key) {
  return absl::StartsWith(key, "grpc-") || key == "te" || key == "content-type";
}

bool IsLegalValueByte(char c) { return c >= 0x20 && c <= 0x7E; }

// Returns false when the pair must be dropped.
bool SanitizeMetadata(std::string& key, std::string& value) {
  if (!IsLegalKey(key)) {
    for (char& c : key) {
      if (c >= 'A' && c <= 'Z') {
        c = static_cast<char>(c - 'A' + 'a');
      }
    }
    if (!IsLegalKey(key)) {
      return false;
    }
  }
  if (IsReservedKey(key)) {
    return false;
  }
  if (absl::EndsWith(key, "-bin")) {
    return true;  // binary values: gRPC base64-encodes them
  }
  if (std::all_of(value.begin(), value.end(), IsLegalValueByte)) {
    return true;
  }
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string escaped;
  escaped.reserve(value.size() + 16);
  for (const char c : value) {
    if (IsLegalValueByte(c) && c != '%') {
      escaped.push_back(c);
    } else {
      const auto byte = static_cast<unsigned char>(c);
      escaped.push_back('%');
      escaped.push_back(kHex[byte >> 4]);
      escaped.push_back(kHex[byte & 0xFu]);
    }
  }
  value = std::move(escaped);
  return true;
}

std::chrono::system_clock::time_point DeadlineAfter(absl::Duration timeout) {
  if (timeout == absl::InfiniteDuration()) {
    return std::chrono::system_clock::time_point::max();
  }
  timeout = std::min(timeout, kMaxTimeout);
  return std::chrono::system_clock::now() +
         std::chrono::duration_cast<std::chrono::system_clock::duration>(
             absl::ToChronoNanoseconds(timeout));
}

// ---------------------------------------------------------------------------------------------
// Channels.

class Target {
 public:
  Target(const std::string& target, const std::shared_ptr<::grpc::ChannelCredentials>& credentials,
         const ::grpc::ChannelArguments& args, int channels) {
    stubs_.reserve(static_cast<size_t>(channels));
    for (int i = 0; i < channels; ++i) {
      stubs_.push_back(std::make_unique<::grpc::GenericStub>(
          ::grpc::CreateCustomChannel(target, credentials, args)));
    }
  }

  ::grpc::GenericStub* Pick() {
    if (stubs_.size() == 1) {
      return stubs_.front().get();
    }
    return stubs_[next_.fetch_add(1, std::memory_order_relaxed) % stubs_.size()].get();
  }

 private:
  std::vector<std::unique_ptr<::grpc::GenericStub>> stubs_;
  std::atomic<size_t> next_{0};
};

// One call in flight; its address is the completion-queue tag. Everything here must live until
// the tag has been delivered.
struct CallState {
  // Declared before `method`: destroyed after it.
  std::shared_ptr<const void> keep_alive;
  std::shared_ptr<const MethodInfo> method;
  absl::AnyInvocable<void(CallResult) &&> done;
  ::grpc::ClientContext context;
  ::grpc::ByteBuffer request;
  ::grpc::ByteBuffer response;
  ::grpc::Status status;
  std::unique_ptr<::grpc::GenericClientAsyncResponseReader> reader;
  rpc::FnTag finished;  // the call's one completion-queue operation: Finish
  std::atomic<bool> cancelled_for_shutdown{false};
};

}  // namespace

// ---------------------------------------------------------------------------------------------

class GrpcInvoker::Impl {
 public:
  explicit Impl(GrpcInvokerOptions options)
      : credentials_(options.credentials != nullptr ? std::move(options.credentials)
                                                    : ::grpc::InsecureChannelCredentials()),
        channels_per_target_(std::max(1, options.channels_per_target)),
        cq_(options.completion_queue) {
    if (cq_ == nullptr) {
      own_cq_ = std::make_unique<::grpc::CompletionQueue>();
      cq_ = own_cq_.get();
      own_runner_ = std::make_unique<rpc::CqRunner>(cq_, 1, "saga-invoker");
      own_runner_->Start();
    }
    channel_args_.SetMaxReceiveMessageSize(
        options.max_receive_message_bytes > 0 ? options.max_receive_message_bytes : 4 << 20);
    if (channels_per_target_ > 1) {
      // Otherwise channels with equal arguments share one subchannel (one connection).
      channel_args_.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    }
    print_options_.preserve_proto_field_names = true;
    print_options_.always_print_primitive_fields = true;
  }

  ~Impl() {
    Shutdown();
    if (own_runner_ != nullptr) own_runner_->ShutdownAndJoin();
  }

  void Shutdown() {
    std::vector<std::shared_ptr<CallState>> live;
    {
      absl::MutexLock lock(&live_mu_);
      shutting_down_ = true;
      live.reserve(live_.size());
      for (const auto& [raw, state] : live_) {
        live.push_back(state);
      }
    }
    // Outside the lock, which OnCallDone takes.
    for (const auto& state : live) {
      state->cancelled_for_shutdown.store(true, std::memory_order_relaxed);
      state->context.TryCancel();
    }
    live.clear();
    {
      absl::MutexLock lock(&live_mu_);
      live_mu_.Await(absl::Condition(
          +[](absl::flat_hash_map<CallState*, std::shared_ptr<CallState>>* calls) {
            return calls->empty();
          },
          &live_));
    }
    // Nothing is in flight any more.
    std::thread completer;
    {
      absl::MutexLock lock(&early_mu_);
      early_stop_ = true;
      completer = std::move(completer_);
    }
    if (completer.joinable()) {
      completer.join();
    }
  }

  void Call(CallRequest request, absl::AnyInvocable<void(CallResult) &&> done) {
    if (request.method == nullptr) {
      return CompleteEarly(std::move(done), absl::InvalidArgumentError("call without a method"));
    }
    std::shared_ptr<const MethodInfo> method = ResolveMethod(request.method, request.keep_alive);
    if (method->streaming) {
      return CompleteEarly(
          std::move(done),
          absl::InvalidArgumentError(absl::StrCat(
              "method ", method->full_name, " is streaming; only unary methods can be invoked")));
    }
    if (request.target.empty()) {
      return CompleteEarly(std::move(done), absl::InvalidArgumentError(absl::StrCat(
                                                "call of ", method->full_name, " has no target")));
    }
    std::string wire;
    if (pb::util::Status status =
            pb::util::JsonToBinaryString(&method->pool->resolver, method->input_type_url,
                                         request.request_json, &wire, parse_options_);
        !status.ok()) {
      return CompleteEarly(std::move(done), absl::InvalidArgumentError(absl::StrCat(
                                                "request does not fit ", method->input_name, ": ",
                                                OneLine(FromProtobufStatus(status).message()))));
    }

    if (request.timeout <= absl::ZeroDuration()) {
      // gRPC may still complete a call whose deadline has passed if the reply beats its timer.
      return CompleteEarly(std::move(done), absl::DeadlineExceededError(absl::StrCat(
                                                "call of ", method->full_name,
                                                " not sent: timeout is not positive")));
    }

    auto state = std::make_shared<CallState>();
    state->keep_alive = std::move(request.keep_alive);
    state->method = std::move(method);
    state->done = std::move(done);
    {
      ::grpc::Slice slice(wire);
      state->request = ::grpc::ByteBuffer(&slice, 1);
    }
    state->context.set_deadline(DeadlineAfter(request.timeout));
    for (auto& [key, value] : request.metadata) {
      if (SanitizeMetadata(key, value)) {
        state->context.AddMetadata(key, value);
      }
    }
    ::grpc::GenericStub* stub = StubFor(request.target);

    CallState* raw = state.get();
    bool registered = false;
    {
      absl::MutexLock lock(&live_mu_);
      if (!shutting_down_) {
        live_.emplace(raw, state);
        registered = true;
      }
    }
    if (!registered) {  // Call raced with destruction: a caller bug, answered safely
      return CompleteEarly(std::move(state->done),
                           absl::UnavailableError("invoker is shutting down"));
    }
    state.reset();
    // The reply is handled on the queue's thread that read it, without another thread hop;
    // never inside Call, even when gRPC fails the call at once.
    raw->finished.Set([this, raw](bool /*ok: always true for Finish*/) { OnCallDone(raw); });
    raw->reader = stub->PrepareUnaryCall(&raw->context, raw->method->path, raw->request, cq_);
    raw->reader->StartCall();
    raw->reader->Finish(&raw->response, &raw->status, &raw->finished);
  }

 private:
  using LiveCalls = absl::flat_hash_map<CallState*, std::shared_ptr<CallState>>;

  struct EarlyCompletion {
    absl::AnyInvocable<void(CallResult) &&> done;
    CallResult result;
  };

  // Runs on a thread of the completion queue's runner.
  void OnCallDone(CallState* state) {
    {
      CallResult result = MakeResult(*state, state->status);
      absl::AnyInvocable<void(CallResult)&&> done = std::move(state->done);
      std::move(done)(std::move(result));
    }
    std::shared_ptr<CallState> owned;
    {
      absl::MutexLock lock(&live_mu_);
      auto it = live_.find(state);
      owned = std::move(it->second);
      live_.erase(it);
    }
    // `owned` (reader, context, buffers) is released here.
  }

  CallResult MakeResult(const CallState& state, const ::grpc::Status& status) const {
    CallResult result;
    const MethodInfo& method = *state.method;
    if (!status.ok()) {
      if (status.error_code() == ::grpc::StatusCode::CANCELLED &&
          state.cancelled_for_shutdown.load(std::memory_order_relaxed)) {
        result.status = absl::UnavailableError(absl::StrCat(
            "call of ", method.full_name, " cancelled: invoker shutting down (outcome unknown)"));
      } else {
        result.status = absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                                     status.error_message());
      }
      return result;
    }
    ::grpc::Slice slice;
    if (state.response.Valid() && !state.response.DumpToSingleSlice(&slice).ok()) {
      result.status =
          absl::InternalError(absl::StrCat("malformed response from ", method.full_name));
      return result;
    }
    const char* data = reinterpret_cast<const char*>(slice.begin());
    const size_t size = slice.size();
    if (size > static_cast<size_t>(std::numeric_limits<int>::max()) ||
        !WireValidator(data, size).Valid(*method.descriptor->output_type())) {
      result.status =
          absl::InternalError(absl::StrCat("malformed response from ", method.full_name));
      return result;
    }
    pb::util::Status rendered;
    {
      pb::io::ArrayInputStream input(data, static_cast<int>(size));
      pb::io::StringOutputStream output(&result.response_json);
      rendered = pb::util::BinaryToJsonStream(&method.pool->resolver, method.output_type_url,
                                              &input, &output, print_options_);
    }
    if (!rendered.ok()) {
      result.response_json.clear();
      result.status =
          absl::InternalError(absl::StrCat("render response of ", method.full_name,
                                           " as JSON: ", FromProtobufStatus(rendered).message()));
    }
    return result;
  }

  // Completes `done` on the completer thread: never inside Call.
  void CompleteEarly(absl::AnyInvocable<void(CallResult) &&> done, absl::Status status) {
    CompleteEarly(std::move(done), CallResult{std::move(status), {}});
  }
  void CompleteEarly(absl::AnyInvocable<void(CallResult) &&> done, CallResult result) {
    {
      absl::MutexLock lock(&early_mu_);
      if (!early_stop_) {
        early_.push_back(EarlyCompletion{std::move(done), std::move(result)});
        if (!completer_started_) {
          completer_started_ = true;
          completer_ = std::thread([this] { RunCompleter(); });
        }
        return;
      }
    }
    // After Shutdown there is no completer thread any more: the caller gets its answer here.
    std::move(done)(std::move(result));
  }

  void RunCompleter() {
    for (;;) {
      std::deque<EarlyCompletion> batch;
      {
        absl::MutexLock lock(&early_mu_);
        early_mu_.Await(absl::Condition(
            +[](Impl* impl) { return impl->early_stop_ || !impl->early_.empty(); }, this));
        if (early_.empty()) {
          return;  // stopping, and nothing left
        }
        batch.swap(early_);
      }
      for (EarlyCompletion& completion : batch) {
        std::move(completion.done)(std::move(completion.result));
      }
    }
  }

  std::shared_ptr<const MethodInfo> ResolveMethod(const pb::MethodDescriptor* descriptor,
                                                  const std::shared_ptr<const void>& keep_alive) {
    const pb::DescriptorPool* pool = descriptor->file()->pool();
    auto usable = [pool](const std::shared_ptr<const MethodInfo>& info) {
      return info->pool->pool == pool && info->pool->Alive();
    };
    {
      absl::ReaderMutexLock lock(&cache_mu_);
      if (auto it = methods_.find(descriptor); it != methods_.end() && usable(it->second)) {
        return it->second;
      }
    }
    const bool pinned = pool == pb::DescriptorPool::generated_pool();
    if (!pinned && keep_alive == nullptr) {
      // Lifetime unknown: the address might be reused by another pool later, so no caching.
      return BuildMethodInfo(descriptor, std::make_shared<PoolInfo>(pool, keep_alive, false));
    }
    absl::MutexLock lock(&cache_mu_);
    if (auto it = methods_.find(descriptor); it != methods_.end() && usable(it->second)) {
      return it->second;
    }
    auto pool_it = pools_.find(pool);
    if (pool_it == pools_.end() || !pool_it->second->Alive()) {
      SweepDeadPoolsLocked();
      pool_it =
          pools_.insert_or_assign(pool, std::make_shared<PoolInfo>(pool, keep_alive, pinned)).first;
    }
    std::shared_ptr<const MethodInfo> info = BuildMethodInfo(descriptor, pool_it->second);
    methods_.insert_or_assign(descriptor, info);
    return info;
  }

  void SweepDeadPoolsLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(cache_mu_) {
    for (auto it = methods_.begin(); it != methods_.end();) {
      if (!it->second->pool->Alive()) {
        methods_.erase(it++);
      } else {
        ++it;
      }
    }
    for (auto it = pools_.begin(); it != pools_.end();) {
      if (!it->second->Alive()) {
        pools_.erase(it++);
      } else {
        ++it;
      }
    }
  }

  static std::shared_ptr<const MethodInfo> BuildMethodInfo(const pb::MethodDescriptor* descriptor,
                                                           std::shared_ptr<PoolInfo> pool) {
    auto info = std::make_shared<MethodInfo>();
    info->pool = std::move(pool);
    info->descriptor = descriptor;
    info->full_name = descriptor->full_name();
    info->path = absl::StrCat("/", descriptor->service()->full_name(), "/", descriptor->name());
    info->input_name = descriptor->input_type()->full_name();
    info->input_type_url = absl::StrCat(kTypeUrlPrefix, "/", info->input_name);
    info->output_type_url =
        absl::StrCat(kTypeUrlPrefix, "/", descriptor->output_type()->full_name());
    info->streaming = descriptor->client_streaming() || descriptor->server_streaming();
    return info;
  }

  ::grpc::GenericStub* StubFor(const std::string& target) {
    {
      absl::ReaderMutexLock lock(&targets_mu_);
      if (auto it = targets_.find(target); it != targets_.end()) {
        return it->second->Pick();
      }
    }
    absl::MutexLock lock(&targets_mu_);
    auto& slot = targets_[target];
    if (slot == nullptr) {
      slot = std::make_unique<Target>(target, credentials_, channel_args_, channels_per_target_);
    }
    return slot->Pick();
  }

  const std::shared_ptr<::grpc::ChannelCredentials> credentials_;
  const int channels_per_target_;
  ::grpc::CompletionQueue* cq_;
  // Without a queue in the options: the invoker's own, with one thread.
  std::unique_ptr<::grpc::CompletionQueue> own_cq_;
  std::unique_ptr<rpc::CqRunner> own_runner_;
  ::grpc::ChannelArguments channel_args_;
  pb::util::JsonParseOptions parse_options_;
  pb::util::JsonPrintOptions print_options_;

  absl::Mutex cache_mu_;
  absl::flat_hash_map<const pb::MethodDescriptor*, std::shared_ptr<const MethodInfo>> methods_
      ABSL_GUARDED_BY(cache_mu_);
  absl::flat_hash_map<const pb::DescriptorPool*, std::shared_ptr<PoolInfo>> pools_
      ABSL_GUARDED_BY(cache_mu_);

  absl::Mutex targets_mu_;
  absl::flat_hash_map<std::string, std::unique_ptr<Target>> targets_ ABSL_GUARDED_BY(targets_mu_);

  absl::Mutex live_mu_;
  bool shutting_down_ ABSL_GUARDED_BY(live_mu_) = false;
  LiveCalls live_ ABSL_GUARDED_BY(live_mu_);

  absl::Mutex early_mu_;
  bool early_stop_ ABSL_GUARDED_BY(early_mu_) = false;
  std::deque<EarlyCompletion> early_ ABSL_GUARDED_BY(early_mu_);
  bool completer_started_ ABSL_GUARDED_BY(early_mu_) = false;  // never restarted once stopped
  std::thread completer_ ABSL_GUARDED_BY(early_mu_);
};

// ---------------------------------------------------------------------------------------------

std::unique_ptr<GrpcInvoker> GrpcInvoker::Create(GrpcInvokerOptions options) {
  return std::unique_ptr<GrpcInvoker>(new GrpcInvoker(std::make_unique<Impl>(std::move(options))));
}

GrpcInvoker::GrpcInvoker(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

GrpcInvoker::~GrpcInvoker() = default;

void GrpcInvoker::Shutdown() { impl_->Shutdown(); }

void GrpcInvoker::Call(CallRequest request, absl::AnyInvocable<void(CallResult) &&> done) {
  impl_->Call(std::move(request), std::move(done));
}

}  // namespace saga::invoke::grpc
