// HealthService and ReflectionService on a real server and completion queue, through real stubs.

#include <chrono>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/descriptor.pb.h"
#include "google/protobuf/descriptor_database.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpc/reflection/v1/reflection.grpc.pb.h"
#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"
#include "gtest/gtest.h"
#include "orchestrator/rpc/completion_queue.h"
#include "orchestrator/server/health_service.h"
#include "orchestrator/server/reflection_service.h"
#include "saga/v1/orchestrator.pb.h"

namespace saga::server {
namespace {

namespace pb = ::google::protobuf;
using ::grpc::health::v1::Health;
using ::grpc::health::v1::HealthCheckRequest;
using ::grpc::health::v1::HealthCheckResponse;
using ::testing::ElementsAreArray;

constexpr char kOrchestrator[] = "saga.v1.SagaOrchestrator";
const std::vector<std::string> kServices = {kOrchestrator, "grpc.health.v1.Health",
                                            "grpc.reflection.v1alpha.ServerReflection",
                                            "grpc.reflection.v1.ServerReflection"};

class GrpcServicesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // Links orchestrator.proto's generated code, so that its descriptors are in the generated
    // pool that reflection serves.
    ASSERT_NE(saga::v1::StartSagaRequest::descriptor(), nullptr);
    health_.SetServiceNames({kOrchestrator});
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    health_.Register(builder);
    reflection_.Register(builder);
    cq_ = builder.AddCompletionQueue();
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    health_.Start(cq_.get());
    reflection_.Start(cq_.get());
    runner_ = std::make_unique<rpc::CqRunner>(cq_.get(), 2, "test-cq");
    runner_->Start();
    channel_ =
        grpc::CreateChannel(absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials());
    health_stub_ = Health::NewStub(channel_);
  }

  void TearDown() override { StopServer(); }

  // sagad's order: the services end their streams, then the server, then the queue.
  void StopServer() {
    if (server_ == nullptr) return;
    health_.Shutdown();
    reflection_.Shutdown();
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(10));
    runner_->ShutdownAndJoin();
    server_.reset();
  }

  grpc::Status Check(const std::string& name, HealthCheckResponse::ServingStatus* status) {
    grpc::ClientContext ctx;
    HealthCheckRequest request;
    request.set_service(name);
    HealthCheckResponse response;
    grpc::Status result = health_stub_->Check(&ctx, request, &response);
    *status = response.status();
    return result;
  }

  std::unique_ptr<grpc::ClientReader<HealthCheckResponse>> Watch(grpc::ClientContext* ctx,
                                                                 const std::string& name) {
    HealthCheckRequest request;
    request.set_service(name);
    return health_stub_->Watch(ctx, request);
  }

  // Declared before the queue and the server: they must outlive both.
  HealthService health_;
  ReflectionService reflection_{kServices};
  std::unique_ptr<grpc::ServerCompletionQueue> cq_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<rpc::CqRunner> runner_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<Health::Stub> health_stub_;
};

TEST_F(GrpcServicesTest, HealthCheck) {
  HealthCheckResponse::ServingStatus status;
  ASSERT_TRUE(Check("", &status).ok());
  EXPECT_EQ(status, HealthCheckResponse::NOT_SERVING);  // until SetServing(true)

  health_.SetServing(true);
  ASSERT_TRUE(Check("", &status).ok());
  EXPECT_EQ(status, HealthCheckResponse::SERVING);
  ASSERT_TRUE(Check(kOrchestrator, &status).ok());
  EXPECT_EQ(status, HealthCheckResponse::SERVING);
  EXPECT_EQ(Check("no.such.Service", &status).error_code(), grpc::StatusCode::NOT_FOUND);

  health_.SetServing(false);
  ASSERT_TRUE(Check("", &status).ok());
  EXPECT_EQ(status, HealthCheckResponse::NOT_SERVING);
  ASSERT_TRUE(Check(kOrchestrator, &status).ok());
  EXPECT_EQ(status, HealthCheckResponse::NOT_SERVING);
}

TEST_F(GrpcServicesTest, HealthWatchSendsChangesUntilShutdown) {
  health_.SetServing(true);
  grpc::ClientContext known_ctx;
  auto known = Watch(&known_ctx, kOrchestrator);
  grpc::ClientContext unknown_ctx;
  auto unknown = Watch(&unknown_ctx, "later.Service");
  HealthCheckResponse response;
  ASSERT_TRUE(known->Read(&response));
  EXPECT_EQ(response.status(), HealthCheckResponse::SERVING);
  ASSERT_TRUE(unknown->Read(&response));
  EXPECT_EQ(response.status(), HealthCheckResponse::SERVICE_UNKNOWN);

  health_.SetServing(false);
  ASSERT_TRUE(known->Read(&response));
  EXPECT_EQ(response.status(), HealthCheckResponse::NOT_SERVING);
  health_.SetServiceNames({kOrchestrator, "later.Service"});
  ASSERT_TRUE(unknown->Read(&response));
  EXPECT_EQ(response.status(), HealthCheckResponse::NOT_SERVING);

  // Both are NOT_SERVING already: the streams end without another message.
  health_.Shutdown();
  EXPECT_FALSE(known->Read(&response));
  EXPECT_TRUE(known->Finish().ok());
  EXPECT_FALSE(unknown->Read(&response));
  EXPECT_TRUE(unknown->Finish().ok());
}

// Streams still open when the server stops: the Watch is sent NOT_SERVING and ends with OK, the
// idle reflection stream is cancelled, the server's Shutdown returns without waiting for its
// deadline (which would end them with another status), and everything is freed.
TEST_F(GrpcServicesTest, ShutdownEndsOpenStreams) {
  health_.SetServing(true);
  grpc::ClientContext watch_ctx;
  auto watch = Watch(&watch_ctx, "");
  HealthCheckResponse response;
  ASSERT_TRUE(watch->Read(&response));
  EXPECT_EQ(response.status(), HealthCheckResponse::SERVING);

  grpc::ClientContext cancelled_ctx;
  auto cancelled = Watch(&cancelled_ctx, kOrchestrator);
  ASSERT_TRUE(cancelled->Read(&response));
  cancelled_ctx.TryCancel();
  EXPECT_EQ(cancelled->Finish().error_code(), grpc::StatusCode::CANCELLED);

  grpc::ClientContext reflection_ctx;
  auto reflection_stub = grpc::reflection::v1::ServerReflection::NewStub(channel_);
  auto reflection = reflection_stub->ServerReflectionInfo(&reflection_ctx);
  grpc::reflection::v1::ServerReflectionRequest request;
  request.set_list_services("");
  ASSERT_TRUE(reflection->Write(request));
  grpc::reflection::v1::ServerReflectionResponse answer;
  ASSERT_TRUE(reflection->Read(&answer));

  StopServer();

  ASSERT_TRUE(watch->Read(&response));
  EXPECT_EQ(response.status(), HealthCheckResponse::NOT_SERVING);
  EXPECT_FALSE(watch->Read(&response));
  EXPECT_TRUE(watch->Finish().ok());
  EXPECT_FALSE(reflection->Read(&answer));
  EXPECT_EQ(reflection->Finish().error_code(), grpc::StatusCode::CANCELLED);
}

// Both versions of the reflection protocol.
struct V1 {
  using Service = grpc::reflection::v1::ServerReflection;
  using Request = grpc::reflection::v1::ServerReflectionRequest;
  using Response = grpc::reflection::v1::ServerReflectionResponse;
};
struct V1alpha {
  using Service = grpc::reflection::v1alpha::ServerReflection;
  using Request = grpc::reflection::v1alpha::ServerReflectionRequest;
  using Response = grpc::reflection::v1alpha::ServerReflectionResponse;
};

template <typename Api>
class ReflectionTest : public GrpcServicesTest {};
using Versions = ::testing::Types<V1, V1alpha>;
TYPED_TEST_SUITE(ReflectionTest, Versions);

TYPED_TEST(ReflectionTest, AnswersEachRequestOfAStream) {
  using Request = typename TypeParam::Request;
  using Response = typename TypeParam::Response;
  auto stub = TypeParam::Service::NewStub(this->channel_);
  grpc::ClientContext ctx;
  auto stream = stub->ServerReflectionInfo(&ctx);
  auto ask = [&stream](Request request) {
    request.set_host("localhost");
    Response response;
    EXPECT_TRUE(stream->Write(request));
    EXPECT_TRUE(stream->Read(&response));
    EXPECT_EQ(response.valid_host(), "localhost");
    EXPECT_EQ(response.original_request().SerializeAsString(), request.SerializeAsString());
    return response;
  };

  Request list;
  list.set_list_services("");
  Response listed = ask(list);
  std::vector<std::string> names;
  for (const auto& service : listed.list_services_response().service()) {
    names.push_back(service.name());
  }
  EXPECT_THAT(names, ElementsAreArray(kServices));

  // The files sent, each once, are enough to build the service's descriptor.
  Request symbol;
  symbol.set_file_containing_symbol(kOrchestrator);
  Response files = ask(symbol);
  ASSERT_TRUE(files.has_file_descriptor_response());
  pb::SimpleDescriptorDatabase database;
  std::set<std::string> file_names;
  for (const std::string& bytes : files.file_descriptor_response().file_descriptor_proto()) {
    pb::FileDescriptorProto file;
    ASSERT_TRUE(file.ParseFromString(bytes));
    EXPECT_TRUE(file_names.insert(file.name()).second) << file.name() << " sent twice";
    ASSERT_TRUE(database.Add(file));
  }
  pb::DescriptorPool pool(&database);
  const pb::ServiceDescriptor* service = pool.FindServiceByName(kOrchestrator);
  ASSERT_NE(service, nullptr);
  EXPECT_GT(service->method_count(), 0);

  Request by_name;
  by_name.set_file_by_filename(service->file()->name());
  Response named = ask(by_name);
  ASSERT_GT(named.file_descriptor_response().file_descriptor_proto_size(), 0);
  pb::FileDescriptorProto first;
  ASSERT_TRUE(first.ParseFromString(named.file_descriptor_response().file_descriptor_proto(0)));
  EXPECT_EQ(first.name(), service->file()->name());

  Request method;
  method.set_file_containing_symbol(service->method(0)->full_name());
  ASSERT_GT(ask(method).file_descriptor_response().file_descriptor_proto_size(), 0);

  Request unknown;
  unknown.set_file_containing_symbol("saga.v1.NoSuchSymbol");
  EXPECT_EQ(ask(unknown).error_response().error_code(),
            static_cast<int>(grpc::StatusCode::NOT_FOUND));
  EXPECT_EQ(ask(Request()).error_response().error_code(),
            static_cast<int>(grpc::StatusCode::INVALID_ARGUMENT));

  stream->WritesDone();
  Response end;
  EXPECT_FALSE(stream->Read(&end));
  EXPECT_TRUE(stream->Finish().ok());
}

}  // namespace
}  // namespace saga::server
