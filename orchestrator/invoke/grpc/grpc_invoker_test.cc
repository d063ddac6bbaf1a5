// Integration test of GrpcInvoker against an in-process echo participant on localhost:0. The
// invoker is given descriptors from a pool built from a serialized descriptor set (as in
// production), never the generated ones the server uses.
#include "orchestrator/invoke/grpc/grpc_invoker.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <gmock/gmock.h>
#include <google/protobuf/descriptor.h>
#include <google/protobuf/descriptor.pb.h>
#include <google/protobuf/util/json_util.h>
#include <grpcpp/alarm.h>
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "orchestrator/invoke/grpc/descriptor_util.h"
#include "testdata/echo.grpc.pb.h"
#include "testdata/echo.pb.h"

namespace saga::invoke::grpc {
namespace {

using ::google::protobuf::DescriptorPool;
using ::google::protobuf::FileDescriptor;
using ::google::protobuf::FileDescriptorProto;
using ::google::protobuf::FileDescriptorSet;
using ::google::protobuf::MethodDescriptor;
using ::invoketest::v1::SayReply;
using ::invoketest::v1::SayRequest;
using ::testing::HasSubstr;

// ---------------------------------------------------------------------------------------------
// Descriptor set helpers.

void AddWithDependencies(const FileDescriptor* file, absl::flat_hash_set<std::string>* seen,
                         FileDescriptorSet* set) {
  if (!seen->insert(file->name()).second) {
    return;
  }
  for (int i = 0; i < file->dependency_count(); ++i) {
    AddWithDependencies(file->dependency(i), seen, set);
  }
  file->CopyTo(set->add_file());
}

FileDescriptorSet EchoDescriptorSet() {
  FileDescriptorSet set;
  absl::flat_hash_set<std::string> seen;
  AddWithDependencies(SayRequest::descriptor()->file(), &seen, &set);
  return set;
}

std::shared_ptr<const DescriptorPool> EchoPool() {
  absl::StatusOr<std::shared_ptr<const DescriptorPool>> pool =
      PoolFromDescriptorSet(EchoDescriptorSet().SerializeAsString());
  EXPECT_TRUE(pool.ok()) << pool.status();
  return pool.ok() ? *pool : nullptr;
}

const MethodDescriptor* Method(const DescriptorPool& pool, std::string_view name) {
  absl::StatusOr<const MethodDescriptor*> method = FindMethod(pool, name);
  EXPECT_TRUE(method.ok()) << method.status();
  return method.ok() ? *method : nullptr;
}

// ---------------------------------------------------------------------------------------------
// descriptor_util

TEST(DescriptorUtilTest, BuildsAPoolSeparateFromTheGeneratedOne) {
  std::shared_ptr<const DescriptorPool> pool = EchoPool();
  ASSERT_NE(pool, nullptr);
  const MethodDescriptor* say = Method(*pool, "invoketest.v1.Echo/Say");
  ASSERT_NE(say, nullptr);
  EXPECT_NE(say,
            SayRequest::descriptor()->file()->FindServiceByName("Echo")->FindMethodByName("Say"));
  EXPECT_EQ(say->file()->pool(), pool.get());
  EXPECT_EQ(say->input_type()->full_name(), "invoketest.v1.SayRequest");
  EXPECT_EQ(say->output_type()->full_name(), "invoketest.v1.SayReply");
}

TEST(DescriptorUtilTest, BuildsFilesInAnyOrder) {
  FileDescriptorSet set = EchoDescriptorSet();
  ASSERT_GE(set.file_size(), 2);
  FileDescriptorSet reversed;
  for (int i = set.file_size() - 1; i >= 0; --i) {
    *reversed.add_file() = set.file(i);
  }
  ASSERT_EQ(reversed.file(0).name(), "testdata/echo.proto");
  absl::StatusOr<std::shared_ptr<const DescriptorPool>> pool =
      PoolFromDescriptorSet(reversed.SerializeAsString());
  ASSERT_TRUE(pool.ok()) << pool.status();
  EXPECT_TRUE(FindMethod(**pool, "invoketest.v1.Echo/Say").ok());
}

TEST(DescriptorUtilTest, TakesMissingWellKnownTypesFromTheBinary) {
  FileDescriptorSet set = EchoDescriptorSet();
  FileDescriptorSet without_wkt;
  for (const FileDescriptorProto& file : set.file()) {
    if (!absl::StartsWith(file.name(), "google/protobuf/")) {
      *without_wkt.add_file() = file;
    }
  }
  ASSERT_EQ(without_wkt.file_size(), 1);
  absl::StatusOr<std::shared_ptr<const DescriptorPool>> pool =
      PoolFromDescriptorSet(without_wkt.SerializeAsString());
  ASSERT_TRUE(pool.ok()) << pool.status();
  EXPECT_NE((*pool)->FindMessageTypeByName("google.protobuf.Timestamp"), nullptr);
}

TEST(DescriptorUtilTest, MissingDependencyIsInvalidArgument) {
  FileDescriptorSet set = EchoDescriptorSet();
  for (FileDescriptorProto& file : *set.mutable_file()) {
    if (file.name() == "testdata/echo.proto") {
      file.add_dependency("shop/v1/missing.proto");
    }
  }
  absl::StatusOr<std::shared_ptr<const DescriptorPool>> pool =
      PoolFromDescriptorSet(set.SerializeAsString());
  EXPECT_EQ(pool.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(pool.status().message(), HasSubstr("shop/v1/missing.proto"));
}

TEST(DescriptorUtilTest, ConflictingDuplicateIsInvalidArgument) {
  FileDescriptorSet set = EchoDescriptorSet();
  FileDescriptorProto changed = set.file(set.file_size() - 1);
  changed.add_message_type()->set_name("Extra");
  *set.add_file() = changed;
  EXPECT_EQ(PoolFromDescriptorSet(set.SerializeAsString()).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(DescriptorUtilTest, UnbuildableFileIsInvalidArgument) {
  FileDescriptorSet set;
  FileDescriptorProto* file = set.add_file();
  file->set_name("bad.proto");
  file->set_package("bad");
  file->set_syntax("proto3");
  auto* field = file->add_message_type();
  field->set_name("M");
  auto* f = field->add_field();
  f->set_name("x");
  f->set_number(1);
  f->set_label(google::protobuf::FieldDescriptorProto::LABEL_OPTIONAL);
  f->set_type_name(".bad.DoesNotExist");
  absl::StatusOr<std::shared_ptr<const DescriptorPool>> pool =
      PoolFromDescriptorSet(set.SerializeAsString());
  EXPECT_EQ(pool.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(pool.status().message(), HasSubstr("bad.proto"));
}

TEST(DescriptorUtilTest, GarbageIsInvalidArgument) {
  EXPECT_EQ(PoolFromDescriptorSet("\xff\xff\xff").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(DescriptorUtilTest, FindMethodReportsWhatIsWrong) {
  std::shared_ptr<const DescriptorPool> pool = EchoPool();
  ASSERT_NE(pool, nullptr);
  EXPECT_TRUE(FindMethod(*pool, "/invoketest.v1.Echo/Say").ok());
  EXPECT_EQ(FindMethod(*pool, "invoketest.v1.Echo/Nope").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(FindMethod(*pool, "invoketest.v1.Nope/Say").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(FindMethod(*pool, "Say").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(FindMethod(*pool, "a/b/c").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(FindMethod(*pool, "invoketest.v1.Echo/").status().code(),
            absl::StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------------------------------------
// The echo participant.

constexpr const char* kEchoedKeys[] = {"saga-id", "saga-step", "idempotency-key", "traceparent"};

// Callback API, so that sleeping calls hold no thread (an Alarm wakes them) and the server adds
// no thread churn to the throughput figure.
class EchoService final : public invoketest::v1::Echo::CallbackService {
 public:
  ::grpc::ServerUnaryReactor* Say(::grpc::CallbackServerContext* context, const SayRequest* request,
                                  SayReply* reply) override {
    calls.fetch_add(1);
    return new SayReactor(this, context, request, reply);
  }

  ::grpc::ServerWriteReactor<SayReply>* Stream(::grpc::CallbackServerContext* /*context*/,
                                               const SayRequest* /*request*/) override {
    calls.fetch_add(1);
    class Empty final : public ::grpc::ServerWriteReactor<SayReply> {
     public:
      Empty() { Finish(::grpc::Status::OK); }
      void OnDone() override { delete this; }
    };
    return new Empty;
  }

  std::atomic<int> calls{0};
  std::atomic<int> sleeping{0};

 private:
  class SayReactor final : public ::grpc::ServerUnaryReactor {
   public:
    SayReactor(EchoService* service, ::grpc::CallbackServerContext* context,
               const SayRequest* request, SayReply* reply)
        : service_(service),
          context_(context),
          request_(request),
          reply_(reply),
          sleeps_(request->sleep_ms() > 0) {
      if (!sleeps_) {
        Respond();
        return;
      }
      service_->sleeping.fetch_add(1);
      // Fires at the time, or at once (false) when cancelled.
      alarm_.Set(std::chrono::system_clock::now() + std::chrono::milliseconds(request->sleep_ms()),
                 [this](bool /*fired*/) {
                   service_->sleeping.fetch_sub(1);
                   Respond();
                 });
    }

    void OnCancel() override {
      if (sleeps_) {
        alarm_.Cancel();
      }
    }
    void OnDone() override { delete this; }

   private:
    void Respond() {
      if (request_->fail_code() != 0) {
        Finish(::grpc::Status(static_cast<::grpc::StatusCode>(request_->fail_code()),
                              request_->fail_message()));
        return;
      }
      reply_->set_text(request_->text());
      reply_->set_big(request_->big());
      reply_->set_ubig(request_->ubig());
      if (request_->has_at()) {
        *reply_->mutable_at() = request_->at();
      }
      *reply_->mutable_tags() = request_->tags();
      *reply_->mutable_items() = request_->items();
      if (request_->has_nested()) {
        *reply_->mutable_nested() = request_->nested();
      }
      for (const auto& [key_ref, value_ref] : context_->client_metadata()) {
        std::string key(key_ref.data(), key_ref.size());
        bool echoed = absl::StartsWith(key, "x-");
        for (const char* wanted : kEchoedKeys) {
          echoed = echoed || key == wanted;
        }
        if (echoed) {
          (*reply_->mutable_metadata())[key] = std::string(value_ref.data(), value_ref.size());
        }
      }
      Finish(::grpc::Status::OK);
    }

    EchoService* const service_;
    ::grpc::CallbackServerContext* const context_;
    const SayRequest* const request_;
    SayReply* const reply_;
    const bool sleeps_;
    ::grpc::Alarm alarm_;
  };
};

// Answers invoketest.v1.Junk/Get (not implemented by any generated service) with raw bytes
// chosen by the request's text: "truncated", "bad-utf8", or a valid reply carrying unknown
// fields and a field with an unexpected wire type.
class JunkService final : public ::grpc::CallbackGenericService {
 public:
  ::grpc::ServerGenericBidiReactor* CreateReactor(
      ::grpc::GenericCallbackServerContext* context) override {
    return new Reactor(context->method() == "/invoketest.v1.Junk/Get");
  }

 private:
  class Reactor final : public ::grpc::ServerGenericBidiReactor {
   public:
    explicit Reactor(bool known) : known_(known) { StartRead(&request_); }

    void OnReadDone(bool ok) override {
      if (!ok || !known_) {
        Finish(::grpc::Status(::grpc::StatusCode::UNIMPLEMENTED, "junk"));
        return;
      }
      ::grpc::Slice whole;
      SayRequest request;
      if (!request_.DumpToSingleSlice(&whole).ok() ||
          !request.ParseFromArray(whole.begin(), static_cast<int>(whole.size()))) {
        Finish(::grpc::Status(::grpc::StatusCode::INTERNAL, "bad request"));
        return;
      }
      std::string bytes;
      if (request.text() == "truncated") {
        bytes = std::string(
            "\x0a\x05"
            "a",
            3);  // text: length 5, 1 byte present
      } else if (request.text() == "bad-utf8") {
        bytes = std::string("\x0a\x02\xff\xfe", 4);  // text: invalid UTF-8
      } else {
        // text "ok", unknown field 99 (varint), nested (field 7) sent as a varint.
        bytes = std::string("\x0a\x02ok\x98\x06\x01\x38\x05", 9);
      }
      ::grpc::Slice slice(bytes);
      response_ = ::grpc::ByteBuffer(&slice, 1);
      StartWriteAndFinish(&response_, ::grpc::WriteOptions(), ::grpc::Status::OK);
    }

    void OnDone() override { delete this; }

   private:
    const bool known_;
    ::grpc::ByteBuffer request_;
    ::grpc::ByteBuffer response_;
  };
};

// ---------------------------------------------------------------------------------------------
// Waiting for results.

struct Outcome {
  absl::Notification notification;
  CallResult result;
  std::thread::id thread;
  std::atomic<int> times{0};
};

absl::AnyInvocable<void(CallResult) &&> Capture(Outcome* outcome) {
  return [outcome](CallResult result) {
    outcome->result = std::move(result);
    outcome->thread = std::this_thread::get_id();
    if (outcome->times.fetch_add(1) == 0) {
      outcome->notification.Notify();
    }
  };
}

// Waits for a condition polled every few milliseconds, with a deadline.
template <typename Predicate>
::testing::AssertionResult Eventually(Predicate predicate, absl::Duration within,
                                      std::string_view what) {
  const absl::Time deadline = absl::Now() + within;
  while (!predicate()) {
    if (absl::Now() > deadline) {
      return ::testing::AssertionFailure()
             << "timed out after " << within << " waiting for " << what;
    }
    absl::SleepFor(absl::Milliseconds(2));
  }
  return ::testing::AssertionSuccess();
}

double CpuSeconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) +
         static_cast<double>(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) * 1e-6;
}

int ClosedPort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) {
    return 1;
  }
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = 0;
  socklen_t length = sizeof(address);
  int port = 1;
  if (bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) == 0) {
    port = ntohs(address.sin_port);
  }
  close(fd);  // nothing listens there any more
  return port;
}

// Built once; never destroyed (tests may still hold descriptors at exit).
const std::shared_ptr<const DescriptorPool>& SharedEchoPool() {
  static const auto* const pool = new std::shared_ptr<const DescriptorPool>(EchoPool());
  return *pool;
}

// The participant lives for the whole test binary. (gRPC 1.51 backs callback servers with a
// process-wide, ref-counted queue; tearing the last user down and building a new one per test
// raced inside gRPC: ASan saw a double free there about once in ten runs.)
struct Participant {
  EchoService echo;
  JunkService junk;
  std::unique_ptr<::grpc::Server> server;
  std::string target;
};

Participant& SharedParticipant() {
  static Participant* const participant = [] {
    auto* p = new Participant;
    int port = 0;
    ::grpc::ServerBuilder builder;
    builder.AddListeningPort("localhost:0", ::grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(&p->echo);
    builder.RegisterCallbackGenericService(&p->junk);
    p->server = builder.BuildAndStart();
    p->target = absl::StrCat("localhost:", port);
    return p;
  }();
  return *participant;
}

class GrpcInvokerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_NE(SharedEchoPool(), nullptr);
    Participant& participant = SharedParticipant();
    ASSERT_NE(participant.server, nullptr);
    echo_ = &participant.echo;
    echo_->calls.store(0);
    target_ = participant.target;
    invoker_ = GrpcInvoker::Create(GrpcInvokerOptions{});
  }

  void TearDown() override { invoker_.reset(); }

  CallRequest Request(std::string_view method, std::string json) const {
    CallRequest request;
    request.target = target_;
    request.method = Method(*SharedEchoPool(), method);
    request.keep_alive = SharedEchoPool();
    request.request_json = std::move(json);
    request.timeout = absl::Seconds(10);
    return request;
  }

  CallResult CallAndWait(CallRequest request) {
    Outcome outcome;
    invoker_->Call(std::move(request), Capture(&outcome));
    EXPECT_TRUE(outcome.notification.WaitForNotificationWithTimeout(absl::Seconds(30)));
    EXPECT_EQ(outcome.times.load(), 1);
    return std::move(outcome.result);
  }

  // Parses a response with the generated type (so the JSON must be valid proto3 JSON).
  static SayReply Parse(const std::string& json) {
    SayReply reply;
    const auto status = google::protobuf::util::JsonStringToMessage(json, &reply);
    EXPECT_TRUE(status.ok()) << status.ToString() << " in " << json;
    return reply;
  }

  EchoService* echo_ = nullptr;
  std::string target_;
  std::unique_ptr<GrpcInvoker> invoker_;
};

TEST_F(GrpcInvokerTest, RoundTripsEveryFieldType) {
  CallResult result = CallAndWait(Request("invoketest.v1.Echo/Say", R"({
    "text": "héllo",
    "big": "9007199254740993",
    "ubig": "18446744073709551615",
    "at": "2024-02-29T12:34:56.789Z",
    "tags": {"a": "1", "b": "2"},
    "items": [{"sku": "x-1", "quantity": 2}, {"sku": "y-2"}],
    "nested": {"note": "n", "amount": "-9223372036854775808", "flag": true, "ratio": 0.25,
               "color": "COLOR_GREEN", "blob": "AAEC/w=="}
  })"));
  ASSERT_TRUE(result.status.ok()) << result.status;
  const std::string& json = result.response_json;
  // 64-bit integers are JSON strings, exact.
  EXPECT_THAT(json, HasSubstr(R"("big":"9007199254740993")"));
  EXPECT_THAT(json, HasSubstr(R"("ubig":"18446744073709551615")"));
  EXPECT_THAT(json, HasSubstr(R"("amount":"-9223372036854775808")"));
  EXPECT_THAT(json, HasSubstr(R"("at":"2024-02-29T12:34:56.789Z")"));
  EXPECT_THAT(json, HasSubstr(R"("color":"COLOR_GREEN")"));
  EXPECT_THAT(json, HasSubstr(R"("blob":"AAEC/w==")"));

  const SayReply reply = Parse(json);
  EXPECT_EQ(reply.text(), "héllo");
  EXPECT_EQ(reply.big(), 9007199254740993LL);
  EXPECT_EQ(reply.ubig(), 18446744073709551615ULL);
  EXPECT_EQ(reply.at().seconds(), 1709210096);
  EXPECT_EQ(reply.at().nanos(), 789000000);
  ASSERT_EQ(reply.tags().size(), 2u);
  EXPECT_EQ(reply.tags().at("a"), "1");
  EXPECT_EQ(reply.tags().at("b"), "2");
  ASSERT_EQ(reply.items_size(), 2);
  EXPECT_EQ(reply.items(0).sku(), "x-1");
  EXPECT_EQ(reply.items(0).quantity(), 2);
  EXPECT_EQ(reply.items(1).sku(), "y-2");
  EXPECT_EQ(reply.nested().note(), "n");
  EXPECT_EQ(reply.nested().amount(), INT64_MIN);
  EXPECT_TRUE(reply.nested().flag());
  EXPECT_EQ(reply.nested().ratio(), 0.25);
  EXPECT_EQ(reply.nested().color(), invoketest::v1::COLOR_GREEN);
  EXPECT_EQ(reply.nested().blob(), std::string("\x00\x01\x02\xff", 4));
}

TEST_F(GrpcInvokerTest, RendersDefaultValuesWithProtoFieldNames) {
  CallResult result = CallAndWait(Request("invoketest.v1.Echo/Say", R"({"items": [{}]})"));
  ASSERT_TRUE(result.status.ok()) << result.status;
  const std::string& json = result.response_json;
  for (const char* expected :
       {R"("text":"")", R"("big":"0")", R"("ubig":"0")", R"("tags":{})", R"("metadata":{})",
        R"("count":0)", R"("done":false)", R"("empty":"")", R"("color":"COLOR_UNSPECIFIED")",
        R"("items":[{"sku":"","quantity":0}])"}) {
    EXPECT_THAT(json, HasSubstr(expected));
  }
  Parse(json);
}

TEST_F(GrpcInvokerTest, AcceptsSixtyFourBitIntegersAsJsonNumbers) {
  CallResult result = CallAndWait(Request(
      "invoketest.v1.Echo/Say", R"({"big": 9007199254740993, "ubig": 18446744073709551615})"));
  ASSERT_TRUE(result.status.ok()) << result.status;
  EXPECT_THAT(result.response_json, HasSubstr(R"("big":"9007199254740993")"));
  EXPECT_THAT(result.response_json, HasSubstr(R"("ubig":"18446744073709551615")"));
}

TEST_F(GrpcInvokerTest, SendsMetadata) {
  CallRequest request = Request("invoketest.v1.Echo/Say", "{}");
  request.metadata = {{"saga-id", "7f3c"},
                      {"saga-step", "reserve"},
                      {"idempotency-key", "7f3c/reserve/action"},
                      {"traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
                      // Sanitized instead of aborting inside gRPC:
                      {"X-Upper", "v"},          // key lower-cased
                      {"x-newline", "a\nb%c"},   // value escaped
                      {"x-bad key", "dropped"},  // illegal key: dropped
                      {"grpc-timeout", "1S"},    // reserved: dropped
                      {"", "dropped"}};          // empty key: dropped
  CallResult result = CallAndWait(std::move(request));
  ASSERT_TRUE(result.status.ok()) << result.status;
  const SayReply reply = Parse(result.response_json);
  EXPECT_EQ(reply.metadata().at("saga-id"), "7f3c");
  EXPECT_EQ(reply.metadata().at("saga-step"), "reserve");
  EXPECT_EQ(reply.metadata().at("idempotency-key"), "7f3c/reserve/action");
  EXPECT_EQ(reply.metadata().at("traceparent"),
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
  EXPECT_EQ(reply.metadata().at("x-upper"), "v");
  EXPECT_EQ(reply.metadata().at("x-newline"), "a%0Ab%25c");
  EXPECT_EQ(reply.metadata().count("x-bad key"), 0u);
  EXPECT_EQ(reply.metadata().size(), 6u);
}

TEST_F(GrpcInvokerTest, DeadlineExceeded) {
  CallRequest request = Request("invoketest.v1.Echo/Say", R"({"sleep_ms": 10000})");
  request.timeout = absl::Milliseconds(300);
  const absl::Time start = absl::Now();
  CallResult result = CallAndWait(std::move(request));
  const absl::Duration elapsed = absl::Now() - start;
  EXPECT_EQ(result.status.code(), absl::StatusCode::kDeadlineExceeded) << result.status;
  EXPECT_GE(elapsed, absl::Milliseconds(250));
  EXPECT_LT(elapsed, absl::Seconds(5));
}

TEST_F(GrpcInvokerTest, NonPositiveTimeoutIsDeadlineExceededWithoutACall) {
  for (const absl::Duration timeout : {absl::ZeroDuration(), absl::Seconds(-1)}) {
    CallRequest request = Request("invoketest.v1.Echo/Say", "{}");
    request.timeout = timeout;
    const CallResult result = CallAndWait(std::move(request));
    EXPECT_EQ(result.status.code(), absl::StatusCode::kDeadlineExceeded) << result.status;
  }
  EXPECT_EQ(echo_->calls.load(), 0);
}

TEST_F(GrpcInvokerTest, InfiniteTimeoutMeansNoDeadline) {
  CallRequest request = Request("invoketest.v1.Echo/Say", R"({"text": "patient"})");
  request.timeout = absl::InfiniteDuration();
  const CallResult result = CallAndWait(std::move(request));
  ASSERT_TRUE(result.status.ok()) << result.status;
  EXPECT_EQ(Parse(result.response_json).text(), "patient");
}

TEST_F(GrpcInvokerTest, PassesTheParticipantStatusThroughUnchanged) {
  for (const auto& [code, message] : std::vector<std::pair<absl::StatusCode, std::string>>{
           {absl::StatusCode::kFailedPrecondition, "out of stock: sku x-1"},
           {absl::StatusCode::kUnavailable, "try again later"},
           {absl::StatusCode::kNotFound, "no such order"},
           {absl::StatusCode::kAborted, "conflict"}}) {
    CallResult result = CallAndWait(Request(
        "invoketest.v1.Echo/Say", absl::StrCat(R"({"fail_code": )", static_cast<int>(code),
                                               R"(, "fail_message": ")", message, R"("})")));
    EXPECT_EQ(result.status.code(), code);
    EXPECT_EQ(result.status.message(), message);
    EXPECT_TRUE(result.response_json.empty());
  }
}

TEST_F(GrpcInvokerTest, RequestThatDoesNotFitIsInvalidArgumentWithoutACall) {
  for (const char* json : {R"({"text": "a", "no_such_field": 1})", R"({"text": )",
                           R"({"big": "twelve"})", R"({"big": 1e30})", R"([1, 2])", ""}) {
    CallResult result = CallAndWait(Request("invoketest.v1.Echo/Say", json));
    EXPECT_EQ(result.status.code(), absl::StatusCode::kInvalidArgument) << json;
    EXPECT_THAT(result.status.message(),
                HasSubstr("request does not fit invoketest.v1.SayRequest: "))
        << json;
  }
  EXPECT_EQ(echo_->calls.load(), 0);
}

TEST_F(GrpcInvokerTest, RefusesStreamingMethodsWithoutACall) {
  CallResult result = CallAndWait(Request("invoketest.v1.Echo/Stream", "{}"));
  EXPECT_EQ(result.status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(result.status.message(), HasSubstr("streaming"));
  EXPECT_EQ(echo_->calls.load(), 0);
}

TEST_F(GrpcInvokerTest, CallWithoutMethodOrTargetIsInvalidArgument) {
  CallRequest no_method = Request("invoketest.v1.Echo/Say", "{}");
  no_method.method = nullptr;
  EXPECT_EQ(CallAndWait(std::move(no_method)).status.code(), absl::StatusCode::kInvalidArgument);
  CallRequest no_target = Request("invoketest.v1.Echo/Say", "{}");
  no_target.target.clear();
  EXPECT_EQ(CallAndWait(std::move(no_target)).status.code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(GrpcInvokerTest, EarlyErrorsCompleteOnAnInvokerThreadNotInsideCall) {
  Outcome outcome;
  invoker_->Call(Request("invoketest.v1.Echo/Say", "{bad"), Capture(&outcome));
  ASSERT_TRUE(outcome.notification.WaitForNotificationWithTimeout(absl::Seconds(10)));
  EXPECT_EQ(outcome.result.status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(outcome.thread, std::this_thread::get_id());
}

TEST_F(GrpcInvokerTest, MalformedResponseIsInternal) {
  for (const char* text : {"truncated", "bad-utf8"}) {
    CallResult result = CallAndWait(
        Request("invoketest.v1.Junk/Get", absl::StrCat(R"({"text": ")", text, R"("})")));
    EXPECT_EQ(result.status.code(), absl::StatusCode::kInternal) << text;
    EXPECT_EQ(result.status.message(), "malformed response from invoketest.v1.Junk.Get");
  }
  // Unknown fields and unexpected wire types are skipped, as a protobuf parser does.
  CallResult result = CallAndWait(Request("invoketest.v1.Junk/Get", R"({"text": "unknown"})"));
  ASSERT_TRUE(result.status.ok()) << result.status;
  EXPECT_EQ(Parse(result.response_json).text(), "ok");
}

TEST_F(GrpcInvokerTest, OversizedResponseIsResourceExhausted) {
  GrpcInvokerOptions options;
  options.max_receive_message_bytes = 1024;
  invoker_ = GrpcInvoker::Create(options);
  CallResult result = CallAndWait(Request(
      "invoketest.v1.Echo/Say", absl::StrCat(R"({"text": ")", std::string(4096, 'x'), R"("})")));
  EXPECT_EQ(result.status.code(), absl::StatusCode::kResourceExhausted) << result.status;
}

TEST_F(GrpcInvokerTest, UnreachableTargetIsUnavailable) {
  CallRequest request = Request("invoketest.v1.Echo/Say", "{}");
  request.target = absl::StrCat("127.0.0.1:", ClosedPort());
  request.timeout = absl::Seconds(10);
  const absl::Time start = absl::Now();
  CallResult result = CallAndWait(std::move(request));
  EXPECT_EQ(result.status.code(), absl::StatusCode::kUnavailable) << result.status;
  EXPECT_LT(absl::Now() - start, absl::Seconds(9));
}

TEST_F(GrpcInvokerTest, ManyConcurrentCallsAllCompleteCorrectly) {
  constexpr int kCalls = 500;
  std::vector<Outcome> outcomes(kCalls);
  const absl::Time start = absl::Now();
  for (int i = 0; i < kCalls; ++i) {
    CallRequest request = Request(
        "invoketest.v1.Echo/Say",
        absl::StrCat(R"({"text": "call-)", i, R"(", "big": ")", 9007199254740993LL + i, R"("})"));
    request.metadata = {{"idempotency-key", absl::StrCat("saga/", i)}};
    invoker_->Call(std::move(request), Capture(&outcomes[static_cast<size_t>(i)]));
  }
  for (int i = 0; i < kCalls; ++i) {
    Outcome& outcome = outcomes[static_cast<size_t>(i)];
    ASSERT_TRUE(outcome.notification.WaitForNotificationWithTimeout(absl::Seconds(60))) << i;
    ASSERT_TRUE(outcome.result.status.ok()) << i << ": " << outcome.result.status;
    const SayReply reply = Parse(outcome.result.response_json);
    EXPECT_EQ(reply.text(), absl::StrCat("call-", i));
    EXPECT_EQ(reply.big(), 9007199254740993LL + i);
    EXPECT_EQ(reply.metadata().at("idempotency-key"), absl::StrCat("saga/", i));
  }
  const absl::Duration elapsed = absl::Now() - start;
  for (const Outcome& outcome : outcomes) {
    EXPECT_EQ(outcome.times.load(), 1);
  }
  EXPECT_EQ(echo_->calls.load(), kCalls);
  std::printf("[          ] %d concurrent calls in %s\n", kCalls,
              absl::FormatDuration(elapsed).c_str());
}

TEST_F(GrpcInvokerTest, SustainedThroughput) {
  // Informational (no timing assertion): a window of 64 calls in flight, as the runtime would.
  constexpr int kCalls = 6000;
  constexpr int kWindow = 64;

  absl::Mutex mu;
  int completed = 0;
  int failed = 0;
  std::atomic<int> next{0};
  std::function<void()> start_one;
  auto start = [&] {
    const int i = next.fetch_add(1);
    if (i >= kCalls) {
      return;
    }
    CallRequest request =
        Request("invoketest.v1.Echo/Say",
                absl::StrCat(R"({"text": "order-)", i, R"(", "big": ")", 1000 + i, R"("})"));
    request.metadata = {{"saga-id", absl::StrCat(i)},
                        {"saga-step", "reserve"},
                        {"idempotency-key", absl::StrCat(i, "/reserve/action")}};
    invoker_->Call(std::move(request), [&](const CallResult& result) {
      {
        absl::MutexLock lock(&mu);
        ++completed;
        if (!result.status.ok()) {
          ++failed;
        }
      }
      start_one();
    });
  };
  start_one = start;
  const absl::Time begin = absl::Now();
  const double cpu_begin = CpuSeconds();
  for (int i = 0; i < kWindow; ++i) {
    start();
  }
  {
    absl::MutexLock lock(&mu);
    EXPECT_TRUE(mu.AwaitWithTimeout(absl::Condition(
                                        +[](int* done) { return *done == kCalls; }, &completed),
                                    absl::Seconds(120)));
    EXPECT_EQ(failed, 0);
  }
  const absl::Duration elapsed = absl::Now() - begin;
  const double cpu = CpuSeconds() - cpu_begin;
  invoker_.reset();  // waits until the last callback has returned: they use locals
  std::printf(
      "[          ] %d calls (client and server in this process) in %s: %.0f calls/s, "
      "%.1f us CPU per call (client + server)\n",
      kCalls, absl::FormatDuration(elapsed).c_str(), kCalls / absl::ToDoubleSeconds(elapsed),
      cpu * 1e6 / kCalls);
}

TEST_F(GrpcInvokerTest, SeveralChannelsPerTarget) {
  GrpcInvokerOptions options;
  options.channels_per_target = 3;
  invoker_ = GrpcInvoker::Create(options);
  constexpr int kCalls = 30;
  std::vector<Outcome> outcomes(kCalls);
  for (int i = 0; i < kCalls; ++i) {
    invoker_->Call(Request("invoketest.v1.Echo/Say", absl::StrCat(R"({"text": ")", i, R"("})")),
                   Capture(&outcomes[static_cast<size_t>(i)]));
  }
  for (int i = 0; i < kCalls; ++i) {
    Outcome& outcome = outcomes[static_cast<size_t>(i)];
    ASSERT_TRUE(outcome.notification.WaitForNotificationWithTimeout(absl::Seconds(30)));
    ASSERT_TRUE(outcome.result.status.ok()) << outcome.result.status;
    EXPECT_EQ(Parse(outcome.result.response_json).text(), absl::StrCat(i));
  }
}

TEST_F(GrpcInvokerTest, DestructionCancelsCallsInFlightAndRunsEveryDoneOnce) {
  constexpr int kCalls = 20;
  std::vector<Outcome> outcomes(kCalls);
  for (int i = 0; i < kCalls; ++i) {
    CallRequest request = Request("invoketest.v1.Echo/Say", R"({"sleep_ms": 30000})");
    request.timeout = absl::Seconds(60);
    invoker_->Call(std::move(request), Capture(&outcomes[static_cast<size_t>(i)]));
  }
  ASSERT_TRUE(Eventually([&] { return echo_->sleeping.load() >= kCalls; }, absl::Seconds(20),
                         "every call to reach the server"));
  const absl::Time start = absl::Now();
  invoker_.reset();
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  for (Outcome& outcome : outcomes) {
    // Every done ran before the destructor returned.
    EXPECT_TRUE(outcome.notification.HasBeenNotified());
    EXPECT_EQ(outcome.result.status.code(), absl::StatusCode::kUnavailable)
        << outcome.result.status;
  }
  for (const Outcome& outcome : outcomes) {
    EXPECT_EQ(outcome.times.load(), 1);
  }
}

TEST_F(GrpcInvokerTest, DestructionRunsPendingEarlyCompletions) {
  constexpr int kCalls = 200;
  std::vector<Outcome> outcomes(kCalls);
  for (int i = 0; i < kCalls; ++i) {
    invoker_->Call(Request("invoketest.v1.Echo/Say", "{bad"),
                   Capture(&outcomes[static_cast<size_t>(i)]));
  }
  invoker_.reset();
  for (const Outcome& outcome : outcomes) {
    EXPECT_EQ(outcome.times.load(), 1);
    EXPECT_EQ(outcome.result.status.code(), absl::StatusCode::kInvalidArgument);
  }
}

TEST_F(GrpcInvokerTest, NewPoolsForTheSameMethodAfterOldOnesDied) {
  for (int round = 0; round < 5; ++round) {
    std::shared_ptr<const DescriptorPool> pool = EchoPool();
    ASSERT_NE(pool, nullptr);
    CallRequest request = Request("invoketest.v1.Echo/Say", R"({"text": "again"})");
    request.method = Method(*pool, "invoketest.v1.Echo/Say");
    request.keep_alive = pool;
    pool.reset();  // the request holds the only reference
    CallResult result = CallAndWait(std::move(request));
    ASSERT_TRUE(result.status.ok()) << result.status;
    EXPECT_EQ(Parse(result.response_json).text(), "again");
  }
}

TEST_F(GrpcInvokerTest, WorksWithoutKeepAliveForGeneratedAndOtherPools) {
  CallRequest generated = Request("invoketest.v1.Echo/Say", R"({"text": "gen", "big": "5"})");
  generated.method =
      SayRequest::descriptor()->file()->FindServiceByName("Echo")->FindMethodByName("Say");
  generated.keep_alive = nullptr;
  CallResult result = CallAndWait(std::move(generated));
  ASSERT_TRUE(result.status.ok()) << result.status;
  EXPECT_THAT(result.response_json, HasSubstr(R"("big":"5")"));

  CallRequest unowned = Request("invoketest.v1.Echo/Say", R"({"text": "unowned"})");
  unowned.keep_alive = nullptr;  // the fixture's pool outlives the call
  result = CallAndWait(std::move(unowned));
  ASSERT_TRUE(result.status.ok()) << result.status;
  EXPECT_EQ(Parse(result.response_json).text(), "unowned");
}

}  // namespace
}  // namespace saga::invoke::grpc
