// Bad input through the public API: each gets its precise code and changes nothing.
#include "gmock/gmock.h"
#include "tests/integration/fixture.h"

namespace saga::testing {
namespace {

using ::testing::HasSubstr;

class BadInputTest : public SagaTest {
 protected:
  void SetUp() override {
    SagaTest::SetUp();
    StartServer();
  }

  grpc::Status Register(const std::string& text, saga::v1::RegisterDefinitionResponse* resp) {
    grpc::ClientContext ctx;
    saga::v1::RegisterDefinitionRequest req;
    req.set_text(text);
    req.set_source_name("bad.yaml");
    (*req.mutable_proto_files())["shop/v1/shop.proto"] =
        "syntax = \"proto3\"; package shop.v1; message R { string order_id = 1; } "
        "service Inventory { rpc Reserve(R) returns (R); rpc Release(R) returns (R); }";
    return stub_->RegisterDefinition(&ctx, req, resp);
  }

  int DefinitionCount() {
    grpc::ClientContext ctx;
    saga::v1::ListDefinitionsResponse resp;
    EXPECT_TRUE(stub_->ListDefinitions(&ctx, {}, &resp).ok());
    return resp.definitions_size();
  }

  void ExpectRejected(const std::string& yaml, const std::string& message_part) {
    const int before = DefinitionCount();
    saga::v1::RegisterDefinitionResponse resp;
    grpc::Status s = Register(yaml, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << yaml;
    EXPECT_THAT(s.error_message(), HasSubstr(message_part));
    EXPECT_EQ(DefinitionCount(), before);
  }
};

constexpr char kGood[] = R"(
name: tiny
participants:
  inv: {target: "localhost:1", protos: [shop/v1/shop.proto]}
steps:
  - name: a
    participant: inv
    method: shop.v1.Inventory/Reserve
    request: {order_id: "${input.id}"}
    compensation: {method: shop.v1.Inventory/Release, request: {order_id: "${input.id}"}}
  - name: b
    participant: inv
    method: shop.v1.Inventory/Reserve
    request: {order_id: "${steps.a.output.order_id}"}
)";

TEST_F(BadInputTest, GoodDefinitionRegistersAndVersionsByContent) {
  saga::v1::RegisterDefinitionResponse resp;
  ASSERT_TRUE(Register(kGood, &resp).ok());
  EXPECT_EQ(resp.version(), 1);
  EXPECT_TRUE(resp.created());
  ASSERT_TRUE(Register(kGood, &resp).ok());
  EXPECT_EQ(resp.version(), 1);
  EXPECT_FALSE(resp.created());
  std::string changed = kGood;
  changed.replace(changed.find("name: b"), 7, "name: c");
  ASSERT_TRUE(Register(changed, &resp).ok());
  EXPECT_EQ(resp.version(), 2);
  EXPECT_TRUE(resp.created());
}

TEST_F(BadInputTest, MalformedYaml) { ExpectRejected("name: [unclosed\nsteps: {", "bad.yaml"); }

TEST_F(BadInputTest, UnknownField) {
  std::string yaml = kGood;
  yaml += "colour: blue\n";
  ExpectRejected(yaml, "colour");
}

TEST_F(BadInputTest, DuplicateStepNames) {
  std::string yaml = kGood;
  yaml.replace(yaml.find("name: b"), 7, "name: a");
  ExpectRejected(yaml, "duplicate");
}

TEST_F(BadInputTest, TemplateReferringToALaterStep) {
  std::string yaml = kGood;
  yaml.replace(yaml.find("${input.id}"), 11, "${steps.b.output.order_id}");
  ExpectRejected(yaml, "steps.b");
}

TEST_F(BadInputTest, TemplateReferringToAnUnknownStep) {
  std::string yaml = kGood;
  yaml.replace(yaml.find("${steps.a.output.order_id}"), 26, "${steps.zz.output.order_id}");
  ExpectRejected(yaml, "zz");
}

TEST_F(BadInputTest, UnknownServiceAndMethod) {
  std::string yaml = kGood;
  yaml.replace(yaml.find("shop.v1.Inventory/Reserve"), 25, "shop.v1.Inventory/Reserv");
  ExpectRejected(yaml, "Reserv");
  yaml = kGood;
  yaml.replace(yaml.find("shop.v1.Inventory/Reserve"), 25, "shop.v1.Warehouse/Reserve");
  ExpectRejected(yaml, "Warehouse");
}

TEST_F(BadInputTest, StartSagaRejectsBadInputAndCreatesNothing) {
  auto expect = [&](const std::string& def, const std::string& input, const std::string& key,
                    grpc::StatusCode code, const std::string& part) {
    saga::v1::StartSagaResponse resp;
    grpc::Status s = TryStart(def, input, key, &resp);
    EXPECT_EQ(s.error_code(), code) << input.substr(0, 80);
    EXPECT_THAT(s.error_message(), HasSubstr(part));
  };
  expect("order-fulfillment", "{not json", "", grpc::StatusCode::INVALID_ARGUMENT, "input_json");
  expect("order-fulfillment", "[1,2]", "", grpc::StatusCode::INVALID_ARGUMENT, "object");
  expect("order-fulfillment", R"({"a":"x\u0000y"})", "", grpc::StatusCode::INVALID_ARGUMENT, "NUL");
  expect("order-fulfillment", "{\"a\":\"" + std::string(300 * 1024, 'x') + "\"}", "",
         grpc::StatusCode::INVALID_ARGUMENT, "limit");
  expect("order-fulfillment", std::string(100, '[') + std::string(100, ']'), "",
         grpc::StatusCode::INVALID_ARGUMENT, "nested");
  expect("order-fulfillment", "{}", "has space", grpc::StatusCode::INVALID_ARGUMENT,
         "idempotency_key");
  expect("order-fulfillment", "{}", std::string(300, 'k'), grpc::StatusCode::INVALID_ARGUMENT,
         "idempotency_key");
  expect("no-such-definition", "{}", "", grpc::StatusCode::NOT_FOUND, "no-such-definition");
  expect("", "{}", "", grpc::StatusCode::INVALID_ARGUMENT, "definition");
  EXPECT_EQ(CountSagas(), 0);
}

TEST_F(BadInputTest, UnknownAndMalformedSagaIds) {
  grpc::ClientContext c1;
  saga::v1::GetSagaRequest req;
  req.set_saga_id("7b0c8a8e-1111-4222-8333-444455556666");
  saga::v1::Saga saga;
  EXPECT_EQ(stub_->GetSaga(&c1, req, &saga).error_code(), grpc::StatusCode::NOT_FOUND);
  grpc::ClientContext c2;
  req.set_saga_id("'; DROP TABLE sagas;--");
  EXPECT_EQ(stub_->GetSaga(&c2, req, &saga).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  grpc::ClientContext c3;
  saga::v1::AbortSagaRequest abort;
  abort.set_saga_id("7b0c8a8e-1111-4222-8333-444455556666");
  saga::v1::AbortSagaResponse aresp;
  EXPECT_EQ(stub_->AbortSaga(&c3, abort, &aresp).error_code(), grpc::StatusCode::NOT_FOUND);
  grpc::ClientContext c4;
  saga::v1::ListSagasRequest list;
  list.set_page_token("not-a-token");
  saga::v1::ListSagasResponse lresp;
  EXPECT_EQ(stub_->ListSagas(&c4, list, &lresp).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(BadInputTest, HostileStringsRoundTripByteForByte) {
  const nlohmann::json input = {{"order_id", "o-'; DROP TABLE sagas;--"},
                                {"sku", "%_\\$1 \"quoted\" ✓"},
                                {"quantity", 1},
                                {"amount_cents", 9007199254740993LL},
                                {"address", "x"}};
  const std::string id = Start("order-fulfillment", input, "k:1.2_3-4");
  ASSERT_TRUE(WaitForStatus(id, saga::v1::SAGA_STATUS_COMPLETED));
  saga::v1::Saga saga = Get(id);
  EXPECT_EQ(nlohmann::json::parse(saga.input_json()), input);
  EXPECT_EQ(saga.idempotency_key(), "k:1.2_3-4");
  EXPECT_THAT(saga.steps(1).output_json(), HasSubstr("9007199254740993"));
}

}  // namespace
}  // namespace saga::testing
