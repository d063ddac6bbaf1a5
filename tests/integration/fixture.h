// Test fixture for integration tests: a fresh PostgreSQL database, the example shop
// participants on a free port, a definitions folder written for them, and sagad (in-process,
// or as a child process) serving the public API.
#pragma once

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "examples/participants/shop_server.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "orchestrator/server/server.h"
#include "orchestrator/store/pg/testing/test_database.h"
#include "saga/v1/orchestrator.grpc.pb.h"

namespace saga::testing {

// Fast policies so that failure paths take fractions of a second.
// order-fast: like saga-defs/order-fulfillment.yaml with 300 ms timeouts, 2 attempts,
//   50 ms backoff, compensations 3 attempts.
// order-slow-retry: charge retries after 5 s (to abort during the backoff).
std::string OrderFastYaml(const std::string& target);
std::string OrderSlowRetryYaml(const std::string& target);

class SagaTest : public ::testing::Test {
 protected:
  void SetUp() override;
  void TearDown() override;

  // Starts sagad in this process.
  void StartServer();
  // Starts sagad as a child process (for crash tests); returns its pid.
  pid_t SpawnSagad(const std::string& owner_id);
  void ConnectTo(const std::string& address);

  std::string Start(const std::string& definition, const nlohmann::json& input,
                    const std::string& key = "");
  grpc::Status TryStart(const std::string& definition, const std::string& input_json,
                        const std::string& key, saga::v1::StartSagaResponse* response);
  saga::v1::Saga Get(const std::string& id, bool history = false);
  // Polls until the saga reaches `status` or `timeout` passes.
  ::testing::AssertionResult WaitForStatus(const std::string& id, saga::v1::SagaStatus status,
                                           absl::Duration timeout = absl::Seconds(20));
  int CountSagas();

  std::unique_ptr<store::pg::TestDatabase> db_;
  std::unique_ptr<examples::ShopServer> shop_;
  std::string defs_dir_;
  std::string proto_dir_;
  std::unique_ptr<server::Server> server_;
  std::vector<pid_t> children_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<saga::v1::SagaOrchestrator::Stub> stub_;
  int child_port_ = 0;
};

}  // namespace saga::testing
