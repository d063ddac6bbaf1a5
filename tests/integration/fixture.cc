#include "tests/integration/fixture.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <regex>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "tests/support/net.h"

namespace saga::testing {
namespace {

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

std::string OrderFastYaml(const std::string& target) {
  std::string yaml = ReadFile(std::string(SAGA_SOURCE_DIR) + "/saga-defs/order-fulfillment.yaml");
  yaml = absl::StrReplaceAll(yaml, {{"localhost:50061", target},
                                    {"name: order-fulfillment", "name: order-fast"},
                                    {"timeout: 2s", "timeout: 300ms"},
                                    {"max_attempts: 4", "max_attempts: 2"},
                                    {"initial_backoff: 100ms", "initial_backoff: 50ms"},
                                    {"max_backoff: 2s", "max_backoff: 100ms"}});
  yaml += R"(
compensation_retry:
  max_attempts: 3
  initial_backoff: 50ms
  max_backoff: 100ms
)";
  return yaml;
}

std::string OrderSlowRetryYaml(const std::string& target) {
  std::string yaml = OrderFastYaml(target);
  yaml = absl::StrReplaceAll(yaml, {{"name: order-fast", "name: order-slow-retry"}});
  // The charge step retries after 5 s.
  yaml = absl::StrReplaceAll(yaml, {{"    method: shop.v1.Payment/Charge\n",
                                     "    method: shop.v1.Payment/Charge\n"
                                     "    retry: {max_attempts: 5, initial_backoff: 5s, "
                                     "max_backoff: 5s, jitter: 0}\n"}});
  return yaml;
}

void SagaTest::SetUp() {
  auto db = store::pg::TestDatabase::Create();
  ASSERT_TRUE(db.ok()) << db.status();
  db_ = *std::move(db);
  auto shop = examples::ShopServer::Start({});
  ASSERT_TRUE(shop.ok()) << shop.status();
  shop_ = *std::move(shop);
  proto_dir_ = std::string(SAGA_SOURCE_DIR) + "/examples/participants/proto";
  defs_dir_ = (std::filesystem::temp_directory_path() /
               absl::StrCat("saga-defs-", getpid(), "-", FreeLoopbackPort()))
                  .string();
  std::filesystem::create_directories(defs_dir_);
  std::string base = ReadFile(std::string(SAGA_SOURCE_DIR) + "/saga-defs/order-fulfillment.yaml");
  std::ofstream(defs_dir_ + "/order-fulfillment.yaml")
      << absl::StrReplaceAll(base, {{"localhost:50061", shop_->address()}});
  std::ofstream(defs_dir_ + "/order-fast.yaml") << OrderFastYaml(shop_->address());
  std::ofstream(defs_dir_ + "/order-slow-retry.yaml") << OrderSlowRetryYaml(shop_->address());
}

void SagaTest::TearDown() {
  for (pid_t pid : children_) {
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
  }
  stub_.reset();
  channel_.reset();
  if (server_) server_->Shutdown(absl::Seconds(1));
  server_.reset();
  if (shop_) shop_->Shutdown();
  std::error_code ec;
  std::filesystem::remove_all(defs_dir_, ec);
  db_.reset();
}

void SagaTest::StartServer() {
  server::Config config;
  config.listen = "localhost:0";
  config.database_url = db_->url();
  config.definitions_dir = defs_dir_;
  config.proto_path = {proto_dir_};
  config.lease = absl::Seconds(3);
  config.renew_interval = absl::Seconds(1);
  config.poll_interval = absl::Milliseconds(200);
  auto server = server::Server::Start(config);
  ASSERT_TRUE(server.ok()) << server.status();
  server_ = *std::move(server);
  ConnectTo(server_->address());
}

void SagaTest::ConnectTo(const std::string& address) {
  channel_ = grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
  stub_ = saga::v1::SagaOrchestrator::NewStub(channel_);
}

pid_t SagaTest::SpawnSagad(const std::string& owner_id) {
  if (child_port_ == 0) child_port_ = FreeLoopbackPort();
  const std::string listen = absl::StrCat("localhost:", child_port_);
  pid_t pid = fork();
  if (pid == 0) {
    const std::string log = absl::StrCat(defs_dir_, "/sagad-", owner_id, ".log");
    FILE* f = std::freopen(log.c_str(), "a", stderr);
    (void)f;
    execl(SAGAD_PATH, "sagad", "--listen", listen.c_str(), "--database-url", db_->url().c_str(),
          "--definitions", defs_dir_.c_str(), "--proto-path", proto_dir_.c_str(), "--owner-id",
          owner_id.c_str(), "--lease", "2s", "--poll-interval", "200ms", "--metrics-listen", "",
          nullptr);
    std::_Exit(127);
  }
  children_.push_back(pid);
  ConnectTo(listen);
  // Wait until it serves.
  for (int i = 0; i < 200; ++i) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(200));
    saga::v1::ListDefinitionsResponse resp;
    if (stub_->ListDefinitions(&ctx, {}, &resp).ok()) return pid;
    absl::SleepFor(absl::Milliseconds(50));
  }
  ADD_FAILURE() << "sagad child did not start serving on " << listen;
  return pid;
}

grpc::Status SagaTest::TryStart(const std::string& definition, const std::string& input_json,
                                const std::string& key, saga::v1::StartSagaResponse* response) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  saga::v1::StartSagaRequest req;
  req.set_definition(definition);
  req.set_input_json(input_json);
  req.set_idempotency_key(key);
  return stub_->StartSaga(&ctx, req, response);
}

std::string SagaTest::Start(const std::string& definition, const nlohmann::json& input,
                            const std::string& key) {
  saga::v1::StartSagaResponse resp;
  grpc::Status s = TryStart(definition, input.dump(), key, &resp);
  EXPECT_TRUE(s.ok()) << s.error_message();
  return resp.saga_id();
}

saga::v1::Saga SagaTest::Get(const std::string& id, bool history) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  saga::v1::GetSagaRequest req;
  req.set_saga_id(id);
  req.set_include_history(history);
  saga::v1::Saga saga;
  grpc::Status s = stub_->GetSaga(&ctx, req, &saga);
  EXPECT_TRUE(s.ok()) << s.error_message();
  return saga;
}

::testing::AssertionResult SagaTest::WaitForStatus(const std::string& id,
                                                   saga::v1::SagaStatus status,
                                                   absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  saga::v1::Saga saga;
  while (absl::Now() < deadline) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
    saga::v1::GetSagaRequest req;
    req.set_saga_id(id);
    if (stub_->GetSaga(&ctx, req, &saga).ok() && saga.status() == status) {
      return ::testing::AssertionSuccess();
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
  return ::testing::AssertionFailure()
         << "saga " << id << " is " << saga::v1::SagaStatus_Name(saga.status()) << " (error '"
         << saga.error() << "'), not " << saga::v1::SagaStatus_Name(status) << " after " << timeout;
}

int SagaTest::CountSagas() {
  grpc::ClientContext ctx;
  saga::v1::ListSagasRequest req;
  req.set_page_size(1000);
  saga::v1::ListSagasResponse resp;
  EXPECT_TRUE(stub_->ListSagas(&ctx, req, &resp).ok());
  return resp.sagas_size();
}

}  // namespace saga::testing
