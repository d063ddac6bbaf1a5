#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/descriptor.pb.h"
#include "google/protobuf/dynamic_message.h"
#include "google/protobuf/util/json_util.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "orchestrator/definition/hash.h"
#include "orchestrator/definition/loader.h"
#include "orchestrator/definition/model.h"
#include "orchestrator/definition/template.h"

namespace saga::definition {
namespace {

using ::nlohmann::json;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

constexpr char kSourceDir[] = SAGA_SOURCE_DIR;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

ProtoSources ShopSources() {
  ProtoSources sources;
  sources.search_path = {absl::StrCat(kSourceDir, "/examples/participants/proto"),
                         absl::StrCat(kSourceDir, "/orchestrator/definition/testdata")};
  return sources;
}

// ---------------------------------------------------------------------------------------------
// Templates

absl::StatusOr<json> RenderWith(const json& tmpl, const json& input,
                                const json* reserve_output = nullptr) {
  auto t = Template::Parse(tmpl, "request");
  if (!t.ok()) return t.status();
  RenderContext ctx;
  ctx.input = &input;
  ctx.step_output = [reserve_output](std::string_view step) -> const json* {
    return step == "reserve" ? reserve_output : nullptr;
  };
  ctx.saga_id = "saga-1";
  ctx.saga_key = "key-1";
  ctx.step_name = "charge";
  ctx.step_key = "saga-1/charge/action";
  return t->Render(ctx);
}

TEST(TemplateTest, SingleReferenceKeepsType) {
  json input = json::parse(R"({"n": 5, "f": 1.5, "b": true, "o": {"k": [1, 2]}, "s": "x"})");
  auto out = RenderWith(json::parse(R"({"n": "${input.n}", "f": "${input.f}", "b": "${input.b}",
                                        "o": "${input.o}", "s": "${input.s}"})"),
                        input);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(*out, input);
  EXPECT_TRUE((*out)["n"].is_number_integer());
}

TEST(TemplateTest, SixtyFourBitIntegersStayExact) {
  json input = json::parse(
      R"({"u": 18446744073709551615, "i": 9007199254740993, "neg": -9223372036854775808})");
  auto out = RenderWith(json::parse(R"({"a": "${input.u}", "b": "${input.i}", "c": "${input.neg}",
                      "text": "${input.u}/${input.i}"})"),
                        input);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->dump(),
            R"({"a":18446744073709551615,"b":9007199254740993,"c":-9223372036854775808,)"
            R"("text":"18446744073709551615/9007199254740993"})");
}

TEST(TemplateTest, Interpolation) {
  json input = json::parse(R"({"id": "A-1", "n": 3, "o": {"k": "v"}, "nul": null})");
  auto out = RenderWith(json("order ${input.id} x${input.n} ${input.o} ${input.nul}"), input);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(*out, json(R"(order A-1 x3 {"k":"v"} null)"));
}

TEST(TemplateTest, ContextRoots) {
  json input = json::object();
  json reserve = json::parse(R"({"reservation_id": "r-9"})");
  auto out = RenderWith(json::parse(R"({"id": "${saga.id}", "key": "${saga.idempotency_key}",
      "step": "${step.name}", "step_key": "${step.idempotency_key}",
      "r": "${steps.reserve.output.reservation_id}", "all": "${steps.reserve.output}"})"),
                        input, &reserve);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(*out, json::parse(R"({"id": "saga-1", "key": "key-1", "step": "charge",
      "step_key": "saga-1/charge/action", "r": "r-9", "all": {"reservation_id": "r-9"}})"));
}

TEST(TemplateTest, OptionalReferences) {
  json input = json::parse(R"({"a": {"b": 1}, "list": [1]})");
  auto out = RenderWith(json::parse(R"({"gone": "${input.x?}", "deep": "${input.a.c?}",
      "through": "${input.a.b.c?}", "index": "${input.list.5?}", "text": "<${input.x?}>",
      "arr": ["${input.x?}", 2], "nested": {"gone": "${input.x?}", "kept": "${input.a.b?}"},
      "step": "${steps.reserve.output.id?}"})"),
                        input);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(*out, json::parse(R"({"text": "<>", "arr": [null, 2], "nested": {"kept": 1}})"));
  // The whole template being a missing optional reference renders null.
  auto whole = RenderWith(json("${input.x?}"), input);
  ASSERT_TRUE(whole.ok());
  EXPECT_TRUE(whole->is_null());
}

TEST(TemplateTest, DollarEscape) {
  json input = json::parse(R"({"x": 1})");
  auto out = RenderWith(json::parse(R"({"a": "$${input.x}", "b": "cost $$5 and ${input.x}",
                                        "c": "$ alone", "$${key}": "keys are literal"})"),
                        input);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(*out, json::parse(R"({"a": "${input.x}", "b": "cost $5 and 1", "c": "$ alone",
                                 "$${key}": "keys are literal"})"));
  auto t = Template::Parse(json("$${input.x}"), "request");
  ASSERT_TRUE(t.ok());
  EXPECT_THAT(t->refs(), IsEmpty());
}

TEST(TemplateTest, ArrayIndex) {
  json input = json::parse(R"({"items": [{"sku": "a"}, {"sku": "b"}], "m": {"0": "zero"}})");
  auto out =
      RenderWith(json::parse(R"({"s": "${input.items.1.sku}", "z": "${input.m.0}"})"), input);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(*out, json::parse(R"({"s": "b", "z": "zero"})"));
}

TEST(TemplateTest, MissingReferenceMessages) {
  json input = json::parse(R"({"x": {"z": 1}, "items": [1, 2], "s": "str"})");
  auto expect_missing = [&](const char* tmpl, const std::string& message) {
    auto out = RenderWith(json(tmpl), input);
    ASSERT_FALSE(out.ok()) << tmpl;
    EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(std::string(out.status().message()), message);
  };
  expect_missing("${input.x.y}", "request: ${input.x.y} is missing (input has no 'y' at input.x)");
  expect_missing("${input.w}", "request: ${input.w} is missing (input has no 'w')");
  expect_missing("a ${input.items.2}",
                 "request: ${input.items.2} is missing (input.items has 2 elements, no index 2)");
  expect_missing("${input.s.t}",
                 "request: ${input.s.t} is missing (input.s is a string, not an object or array)");
  expect_missing("${steps.reserve.output.id}",
                 "request: ${steps.reserve.output.id} is missing (step 'reserve' has no output)");
  json reserve = json::parse(R"({"a": {}})");
  auto out = RenderWith(json("${steps.reserve.output.a.id}"), input, &reserve);
  ASSERT_FALSE(out.ok());
  EXPECT_EQ(std::string(out.status().message()),
            "request: ${steps.reserve.output.a.id} is missing (the output of step 'reserve' has "
            "no 'id' at steps.reserve.output.a)");
}

TEST(TemplateTest, MalformedReferences) {
  for (const char* bad : {"${input.x", "${foo.x}", "${input..x}", "${input.}", "${}", "${steps.x}",
                          "${steps.x.result.y}", "${saga.nope}", "${step}", "a ${input.x y}"}) {
    auto t = Template::Parse(json::parse(absl::StrCat(R"({"f": [")", bad, R"("]})")),
                             "steps[0] (a).request");
    ASSERT_FALSE(t.ok()) << bad;
    EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(t.status().message()),
                HasSubstr("steps[0] (a).request.f[0]: malformed reference"))
        << bad;
    std::string ref_start = std::string(bad).substr(std::string(bad).find("${"));
    EXPECT_THAT(std::string(t.status().message()), HasSubstr(ref_start.substr(0, 6))) << bad;
  }
  auto t = Template::Parse(json("${nope.x}"), "request");
  EXPECT_THAT(std::string(t.status().message()), HasSubstr("unknown root 'nope'"));
}

TEST(TemplateTest, RefsAndRaw) {
  json tmpl = json::parse(R"({"a": "${input.a.b}", "b": ["x ${steps.s1.output.v?} y"]})");
  auto t = Template::Parse(tmpl, "request");
  ASSERT_TRUE(t.ok());
  ASSERT_EQ(t->refs().size(), 2u);
  EXPECT_EQ(t->refs()[0].root, TemplateRef::Root::kInput);
  EXPECT_THAT(t->refs()[0].path, ElementsAre("a", "b"));
  EXPECT_EQ(t->refs()[1].root, TemplateRef::Root::kStepOutput);
  EXPECT_EQ(t->refs()[1].step, "s1");
  EXPECT_THAT(t->refs()[1].path, ElementsAre("v"));
  EXPECT_TRUE(t->refs()[1].optional);
  EXPECT_EQ(t->refs()[1].text, "${steps.s1.output.v?}");
  EXPECT_EQ(t->raw(), tmpl);
  EXPECT_FALSE(t->empty());
  Template empty;
  EXPECT_TRUE(empty.empty());
  auto rendered = empty.Render(RenderContext{});
  ASSERT_TRUE(rendered.ok());
  EXPECT_TRUE(rendered->is_null());
}

// ---------------------------------------------------------------------------------------------
// Loader

absl::StatusOr<std::shared_ptr<Definition>> Load(const std::string& text,
                                                 const ProtoSources& sources = ShopSources()) {
  auto proto = ParseDefinitionText(text, "order.yaml");
  if (!proto.ok()) return proto.status();
  return Compile(*proto, sources, "order.yaml");
}

// A small definition over the shop protos; `steps` is the YAML of the step list.
std::string Def(const std::string& steps, const std::string& extra = "") {
  return absl::StrCat(R"(name: test
participants:
  shop:
    target: localhost:1
    protos: [shop/v1/shop.proto]
  streamer:
    target: localhost:2
    protos: [streaming.proto]
)",
                      extra, "steps:\n", steps);
}

constexpr char kReserve[] = R"(  - name: reserve
    participant: shop
    method: shop.v1.Inventory/Reserve
    request: {order_id: "${input.id}", quantity: 1}
)";

void ExpectInvalid(const absl::StatusOr<std::shared_ptr<Definition>>& result,
                   const std::string& substring) {
  ASSERT_FALSE(result.ok()) << "expected an error containing: " << substring;
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument) << result.status();
  EXPECT_THAT(std::string(result.status().message()), HasSubstr(substring));
}

TEST(LoaderTest, OrderFulfillmentCompiles) {
  std::string text = ReadFile(absl::StrCat(kSourceDir, "/saga-defs/order-fulfillment.yaml"));
  ASSERT_FALSE(text.empty());
  auto proto = ParseDefinitionText(text, "order-fulfillment.yaml");
  ASSERT_TRUE(proto.ok()) << proto.status();
  ProtoSources sources;
  sources.search_path = {absl::StrCat(kSourceDir, "/examples/participants/proto")};
  auto def_or = Compile(*proto, sources, "order-fulfillment.yaml");
  ASSERT_TRUE(def_or.ok()) << def_or.status();
  const Definition& def = **def_or;

  EXPECT_EQ(def.name, "order-fulfillment");
  EXPECT_EQ(def.version, 0);
  ASSERT_EQ(def.steps.size(), 3u);
  EXPECT_EQ(def.steps[0].name, "reserve");
  EXPECT_EQ(def.steps[1].name, "charge");
  EXPECT_EQ(def.steps[2].name, "ship");
  EXPECT_THAT(def.steps[0].after, IsEmpty());
  EXPECT_THAT(def.steps[1].after, ElementsAre(0));
  EXPECT_THAT(def.steps[2].after, ElementsAre(1));
  EXPECT_THAT(def.steps[0].successors, ElementsAre(1));
  EXPECT_THAT(def.steps[2].successors, IsEmpty());
  EXPECT_EQ(def.FindStep("charge"), &def.steps[1]);
  EXPECT_EQ(def.FindStep("nope"), nullptr);
  EXPECT_EQ(def.steps[0].participant, "inventory");
  EXPECT_EQ(def.steps[0].target, "localhost:50061");

  // Definition-level retry and timeout apply to actions.
  const CallSpec& reserve = def.steps[0].action;
  EXPECT_EQ(reserve.retry.max_attempts, 4);
  EXPECT_EQ(reserve.retry.initial_backoff, absl::Milliseconds(100));
  EXPECT_EQ(reserve.retry.max_backoff, absl::Seconds(2));
  EXPECT_DOUBLE_EQ(reserve.retry.multiplier, 2.0);
  EXPECT_DOUBLE_EQ(reserve.retry.jitter, 0.2);
  EXPECT_TRUE(reserve.retry.IsRetryable(absl::StatusCode::kUnavailable));
  EXPECT_FALSE(reserve.retry.IsRetryable(absl::StatusCode::kFailedPrecondition));
  EXPECT_EQ(reserve.timeout, absl::Seconds(2));
  // Compensations use their own defaults.
  ASSERT_TRUE(def.steps[0].compensation.has_value());
  EXPECT_EQ(def.steps[0].compensation->retry.max_attempts, kDefaultCompensationMaxAttempts);
  EXPECT_EQ(def.steps[0].compensation->retry.initial_backoff, kDefaultInitialBackoff);
  EXPECT_EQ(def.steps[0].compensation->timeout, kDefaultTimeout);
  EXPECT_FALSE(def.steps[2].compensation.has_value());

  // Methods resolved in the definition's own pool.
  ASSERT_NE(def.pool, nullptr);
  ASSERT_NE(reserve.method, nullptr);
  EXPECT_EQ(reserve.method->full_name(), "shop.v1.Inventory.Reserve");
  EXPECT_EQ(reserve.method->file()->pool(), def.pool.get());
  EXPECT_EQ(def.steps[0].compensation->method->full_name(), "shop.v1.Inventory.Release");
  EXPECT_EQ(def.steps[1].action.method->full_name(), "shop.v1.Payment.Charge");
  EXPECT_EQ(def.steps[1].compensation->method->full_name(), "shop.v1.Payment.Refund");
  EXPECT_EQ(def.steps[2].action.method->full_name(), "shop.v1.Shipping.Schedule");
  EXPECT_EQ(reserve.method_name, "shop.v1.Inventory/Reserve");
  EXPECT_FALSE(def.descriptor_set.empty());
  EXPECT_EQ(def.content_hash.size(), 64u);

  // The charge request renders with types intact and parses into the method's input message,
  // built dynamically from the definition's pool.
  json input = json::parse(R"({"order_id": "o-1", "sku": "s", "quantity": 2,
      "amount_cents": 9007199254740993, "address": "x",
      "behavior": {"charge": {"transient_failures": 1}}})");
  RenderContext ctx;
  ctx.input = &input;
  auto request = def.steps[1].action.request.Render(ctx);
  ASSERT_TRUE(request.ok()) << request.status();
  EXPECT_EQ(request->dump(),
            R"({"amount_cents":9007199254740993,"behavior":{"transient_failures":1},)"
            R"("currency":"EUR","order_id":"o-1"})");
  google::protobuf::DynamicMessageFactory factory(def.pool.get());
  const auto* input_type = def.steps[1].action.method->input_type();
  std::unique_ptr<google::protobuf::Message> message(factory.GetPrototype(input_type)->New());
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(request->dump(), message.get()).ok());
  const auto* amount = input_type->FindFieldByName("amount_cents");
  EXPECT_EQ(message->GetReflection()->GetInt64(*message, amount), 9007199254740993);
  // A missing optional behavior is left out, so the message parses.
  json plain = json::parse(R"({"order_id": "o-1", "amount_cents": 5})");
  ctx.input = &plain;
  auto refund = def.steps[1].compensation->request.Render(ctx);
  ASSERT_TRUE(refund.ok()) << refund.status();
  EXPECT_EQ(*refund, json::parse(R"({"order_id": "o-1", "amount_cents": 5})"));
}

TEST(LoaderTest, JsonFormAccepted) {
  const char* text = R"({
    "name": "json-def",
    "participants": {"shop": {"target": "localhost:1", "protos": ["shop/v1/shop.proto"]}},
    "timeout": "3s",
    "steps": [
      {"name": "reserve", "participant": "shop", "method": "shop.v1.Inventory/Reserve",
       "request": {"order_id": "${input.id}", "quantity": 2},
       "retry": {"maxAttempts": 5, "retryable_codes": ["UNAVAILABLE", "INTERNAL"]}},
      {"name": "charge", "participant": "shop", "method": "shop.v1.Payment/Charge",
       "request": {"order_id": "${steps.reserve.output.reservation_id}"}}
    ]
  })";
  auto def = Load(text);
  ASSERT_TRUE(def.ok()) << def.status();
  ASSERT_EQ((*def)->steps.size(), 2u);
  const CallSpec& reserve = (*def)->steps[0].action;
  EXPECT_EQ(reserve.timeout, absl::Seconds(3));
  EXPECT_EQ(reserve.retry.max_attempts, 5);
  EXPECT_THAT(reserve.retry.retryable_codes,
              ElementsAre(absl::StatusCode::kUnavailable, absl::StatusCode::kInternal));
  EXPECT_EQ(reserve.request.raw(), json::parse(R"({"order_id": "${input.id}", "quantity": 2})"));
  EXPECT_TRUE(reserve.request.raw()["quantity"].is_number_integer());
  EXPECT_THAT((*def)->steps[1].after, ElementsAre(0));

  ExpectInvalid(Load(R"({"name": "x",
  "steps": 5})"),
                "order.yaml:2:3: steps: expected a list, got number 5");
  ExpectInvalid(Load(R"({"name": "x", "steps": [}
)"),
                "order.yaml:1:");
  ExpectInvalid(Load(R"({"name": "x", "name": "y"})"), "duplicate key 'name'");
}

TEST(LoaderTest, YamlScalarTypes) {
  auto proto = ParseDefinitionText(Def(R"(  - name: reserve
    participant: shop
    method: shop.v1.Inventory/Reserve
    timeout: 2s
    request:
      order_id: 12
      sku: "12"
      quantity: 0x10
      flag: true
      quoted: 'true'
      nothing: ~
      ratio: 0.5
      ref: ${input.x}
)"),
                                   "order.yaml");
  ASSERT_TRUE(proto.ok()) << proto.status();
  std::string canonical = CanonicalJson(*proto);
  json request = json::parse(canonical)["steps"][0]["request"];
  EXPECT_EQ(request, json::parse(R"({"order_id": 12, "sku": "12", "quantity": 16, "flag": true,
      "quoted": "true", "nothing": null, "ratio": 0.5, "ref": "${input.x}"})"));
  EXPECT_EQ(proto->steps(0).timeout(), "2s");
}

TEST(LoaderTest, MalformedYamlHasLine) {
  auto result = ParseDefinitionText("name: x\nsteps:\n  - name: [a\n  - b: c\n", "order.yaml");
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(result.status().message()),
              testing::MatchesRegex("order\\.yaml:[34]:[0-9]+: .*"));
  auto tabs = ParseDefinitionText("name: x\n\tsteps: []\n", "order.yaml");
  ASSERT_FALSE(tabs.ok());
  EXPECT_THAT(std::string(tabs.status().message()), HasSubstr("order.yaml:"));
}

TEST(LoaderTest, UnknownField) {
  auto result = Load(Def(absl::StrCat(kReserve, "    retyr: {max_attempts: 3}\n")));
  ExpectInvalid(result, "order.yaml:14:5: steps[0] (reserve): unknown field 'retyr'");
  ExpectInvalid(result, "valid fields: name, kind, participant, method");
  ExpectInvalid(Load(Def(kReserve, "colour: red\n")),
                "order.yaml:9:1: (top level): unknown field 'colour'");
  ExpectInvalid(Load(Def(kReserve, "retry: {max_attemps: 3}\n")),
                "retry: unknown field 'max_attemps'");
}

TEST(LoaderTest, WrongType) {
  ExpectInvalid(Load(Def(kReserve, "retry:\n  max_attempts: \"abc\"\n")),
                "order.yaml:10:3: retry.max_attempts: expected an integer, got string \"abc\"");
  ExpectInvalid(Load(Def(kReserve, "timeout: 5\n")),
                "order.yaml:9:1: timeout: expected a duration string such as \"2s\" or "
                "\"500ms\", got number 5");
  ExpectInvalid(Load(Def(R"(  - {name: a, participant: shop, method: shop.v1.Inventory/Reserve,
     request: {order_id: ${input.id}}}
)")),
                "(inside [...] or {...}, quote references");
  ExpectInvalid(Load(Def("  - name: [a]\n")), "steps[0].name: expected a string, got a list");
  ExpectInvalid(Load(Def("  name: a\n")), "steps: expected a list, got an object");
  ExpectInvalid(Load(Def(kReserve, "retry:\n  max_attempts: -1\n")),
                "retry.max_attempts: -1 is out of range");
  ExpectInvalid(Load("just a string"), "a definition must be a mapping");
  ExpectInvalid(Load(""), "the document is empty");
}

TEST(LoaderTest, DuplicateStepNames) {
  ExpectInvalid(Load(Def(absl::StrCat(kReserve, kReserve))),
                "order.yaml: steps[1].name: duplicate step name 'reserve' (also steps[0])");
}

TEST(LoaderTest, TemplateStepReferences) {
  const std::string charge_later = absl::StrCat(R"(  - name: reserve
    participant: shop
    method: shop.v1.Inventory/Reserve
    request: {order_id: "${steps.charge.output.payment_id}"}
  - name: charge
    participant: shop
    method: shop.v1.Payment/Charge
)");
  ExpectInvalid(Load(Def(charge_later)),
                "order.yaml: steps[0] (reserve).request: step 'charge' does not run before step "
                "'reserve'");
  ExpectInvalid(Load(Def(absl::StrCat(kReserve, R"(  - name: charge
    participant: shop
    method: shop.v1.Payment/Charge
    request: {order_id: "${steps.shipp.output.id}"}
)"))),
                "order.yaml: steps[1] (charge).request: unknown step 'shipp' in "
                "${steps.shipp.output.id}");
  // Parallel siblings cannot see each other's output.
  ExpectInvalid(Load(Def(absl::StrCat(kReserve, R"(  - name: charge
    participant: shop
    method: shop.v1.Payment/Charge
    after: []
    request: {order_id: "${steps.reserve.output.reservation_id}"}
)"))),
                "does not run before");
  ExpectInvalid(Load(Def(R"(  - name: reserve
    participant: shop
    method: shop.v1.Inventory/Reserve
    request: {order_id: "${steps.reserve.output.id}"}
)")),
                "cannot use its own output");
  ExpectInvalid(Load(Def(R"(  - name: reserve
    participant: shop
    method: shop.v1.Inventory/Reserve
    request: {order_id: "${input..id}"}
)")),
                "order.yaml: steps[0] (reserve).request.order_id: malformed reference "
                "'${input..id}': empty path segment");
  // A compensation may use its own step's output, and a transitive ancestor's.
  auto ok = Load(Def(absl::StrCat(kReserve, R"(  - name: charge
    participant: shop
    method: shop.v1.Payment/Charge
  - name: ship
    participant: shop
    method: shop.v1.Shipping/Schedule
    request: {order_id: "${steps.reserve.output.reservation_id}"}
    compensation:
      method: shop.v1.Inventory/Release
      request: {reservation_id: "${steps.ship.output.tracking_id}"}
)")));
  EXPECT_TRUE(ok.ok()) << ok.status();
}

TEST(LoaderTest, AfterGraph) {
  ExpectInvalid(Load(Def(R"(  - name: a
    participant: shop
    method: shop.v1.Inventory/Reserve
    after: [c]
  - name: b
    participant: shop
    method: shop.v1.Inventory/Reserve
  - name: c
    participant: shop
    method: shop.v1.Inventory/Reserve
)")),
                "cycle: a runs after c runs after b runs after a");
  ExpectInvalid(Load(Def(R"(  - name: a
    participant: shop
    method: shop.v1.Inventory/Reserve
    after: [a]
)")),
                "steps[0] (a).after: step 'a' cannot run after itself");
  ExpectInvalid(Load(Def(R"(  - name: a
    participant: shop
    method: shop.v1.Inventory/Reserve
    after: [zz]
)")),
                "steps[0] (a).after: unknown step 'zz'");
}

TEST(LoaderTest, ParallelSteps) {
  auto def = Load(Def(R"(  - name: a
    participant: shop
    method: shop.v1.Inventory/Reserve
  - name: b
    participant: shop
    method: shop.v1.Payment/Charge
    after: []
  - name: c
    participant: shop
    method: shop.v1.Shipping/Schedule
    after: [a, b]
    request: {order_id: "${steps.a.output.reservation_id}", address: "${steps.b.output.payment_id}"}
)"));
  ASSERT_TRUE(def.ok()) << def.status();
  const Definition& d = **def;
  EXPECT_THAT(d.steps[0].after, IsEmpty());
  EXPECT_THAT(d.steps[1].after, IsEmpty());
  EXPECT_THAT(d.steps[2].after, ElementsAre(0, 1));
  EXPECT_THAT(d.steps[0].successors, ElementsAre(2));
  EXPECT_THAT(d.steps[1].successors, ElementsAre(2));
  EXPECT_TRUE(d.proto.steps(1).after_set());
  EXPECT_FALSE(d.proto.steps(0).after_set());

  // after_set survives the canonical form, where an empty list is not written.
  v1::SagaDefinition reparsed;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(CanonicalJson(d.proto), &reparsed).ok());
  auto stored = CompileStored(reparsed, d.descriptor_set, 3);
  ASSERT_TRUE(stored.ok()) << stored.status();
  EXPECT_THAT((*stored)->steps[1].after, IsEmpty());
  EXPECT_EQ((*stored)->content_hash, d.content_hash);
}

TEST(LoaderTest, UnknownParticipantServiceMethod) {
  ExpectInvalid(Load(Def(R"(  - name: a
    participant: shopp
    method: shop.v1.Inventory/Reserve
)")),
                "steps[0] (a).participant: unknown participant 'shopp' (declared: shop, streamer)");
  ExpectInvalid(Load(Def(R"(  - name: a
    participant: shop
    method: shop.v1.Inventry/Reserve
)")),
                "order.yaml: steps[0] (a).method: unknown service 'shop.v1.Inventry' for "
                "participant 'shop' (they define: shop.v1.Inventory, shop.v1.Payment, "
                "shop.v1.Shipping)");
  ExpectInvalid(Load(Def(R"(  - name: a
    participant: shop
    method: shop.v1.Inventory/Reserv
)")),
                "order.yaml: steps[0] (a).method: unknown method 'Reserv' in service "
                "shop.v1.Inventory; it has: Reserve, Release");
  ExpectInvalid(Load(Def(R"(  - name: a
    participant: shop
    method: Reserve
)")),
                "steps[0] (a).method: 'Reserve' is not a method name of the form "
                "package.Service/Method");
  // A compensation must be on the step's participant.
  ExpectInvalid(Load(Def(R"(  - name: a
    participant: shop
    method: shop.v1.Inventory/Reserve
    compensation:
      method: sagatest.v1.Streamer/Unary
)")),
                "steps[0] (a).compensation.method: service sagatest.v1.Streamer is not in the "
                "protos of participant 'shop'");
}

TEST(LoaderTest, StreamingMethodRejected) {
  ExpectInvalid(Load(Def(R"(  - name: a
    participant: streamer
    method: sagatest.v1.Streamer/Watch
)")),
                "steps[0] (a).method: method sagatest.v1.Streamer/Watch is server streaming; only "
                "unary methods can be called");
  ExpectInvalid(Load(Def(R"(  - name: a
    participant: streamer
    method: sagatest.v1.Streamer/Upload
)")),
                "client streaming");
  // The unary method of the same file (which imports a well-known type) is fine.
  auto ok = Load(Def(R"(  - name: a
    participant: streamer
    method: sagatest.v1.Streamer/Unary
    request: {id: x, at: "2024-01-01T00:00:00Z", inner: {code: c}, items: [{code: d}],
              labels: {any-key: v}, displayName: n}
)"));
  EXPECT_TRUE(ok.ok()) << ok.status();
}

TEST(LoaderTest, UnknownRequestField) {
  ExpectInvalid(Load(Def(R"(  - name: a
    participant: shop
    method: shop.v1.Inventory/Reserve
    request: {order_id: x, skux: y}
)")),
                "order.yaml: steps[0] (a).request: unknown field 'skux' in shop.v1.ReserveRequest "
                "(valid fields: order_id, sku, quantity, behavior)");
  ExpectInvalid(Load(Def(R"(  - name: a
    participant: shop
    method: shop.v1.Inventory/Reserve
    request: {behavior: {fial: x}}
)")),
                "steps[0] (a).request.behavior: unknown field 'fial' in shop.v1.Behavior");
  ExpectInvalid(Load(Def(R"(  - name: a
    participant: streamer
    method: sagatest.v1.Streamer/Unary
    request: {items: [{code: a}, {cod: b}]}
)")),
                "steps[0] (a).request.items[1]: unknown field 'cod' in sagatest.v1.Inner");
  ExpectInvalid(Load(Def(R"(  - name: a
    participant: shop
    method: shop.v1.Inventory/Reserve
    compensation:
      method: shop.v1.Inventory/Release
      request: {order: x}
)")),
                "steps[0] (a).compensation.request: unknown field 'order' in "
                "shop.v1.ReleaseRequest");
  ExpectInvalid(Load(Def(R"(  - name: a
    participant: shop
    method: shop.v1.Inventory/Reserve
    request: [1, 2]
)")),
                "steps[0] (a).request: expected an object with the fields of "
                "shop.v1.ReserveRequest");
  // A whole-request reference is accepted.
  EXPECT_TRUE(Load(Def(R"(  - name: a
    participant: shop
    method: shop.v1.Inventory/Reserve
    request: ${input.reserve}
)"))
                  .ok());
}

TEST(LoaderTest, BadPolicies) {
  ExpectInvalid(Load(Def(absl::StrCat(kReserve, "    timeout: 2 seconds\n"))),
                "order.yaml: steps[0] (reserve).timeout: invalid duration '2 seconds'");
  ExpectInvalid(Load(Def(kReserve, "timeout: 0s\n")), "timeout: timeout must be positive");
  ExpectInvalid(Load(Def(kReserve, "timeout: 2h\n")), "timeout: '2h' is more than the limit");
  ExpectInvalid(Load(Def(kReserve, "retry: {initial_backoff: -1s}\n")),
                "retry.initial_backoff: must not be negative");
  ExpectInvalid(Load(Def(kReserve, "retry: {initial_backoff: 5s, max_backoff: 1s}\n")),
                "order.yaml: retry: max_backoff 1s is less than initial_backoff 5s");
  ExpectInvalid(Load(Def(absl::StrCat(kReserve, "    retry: {initial_backoff: 20s}\n"))),
                "steps[0] (reserve).retry: max_backoff 10s is less than initial_backoff 20s");
  ExpectInvalid(Load(Def(absl::StrCat(kReserve, "    retry: {max_attempts: 101}\n"))),
                "order.yaml: steps[0] (reserve).retry.max_attempts: 101 is more than the limit "
                "of 100");
  ExpectInvalid(Load(Def(kReserve, "compensation_retry: {jitter: 2}\n")),
                "compensation_retry.jitter: must be between 0 and 1, got 2");
  ExpectInvalid(Load(Def(kReserve, "retry: {backoff_multiplier: .nan}\n")),
                "retry.backoff_multiplier: must be a finite number >= 1, got nan");
  ExpectInvalid(Load(Def(kReserve, "retry: {backoff_multiplier: .inf}\n")),
                "retry.backoff_multiplier: must be a finite number >= 1, got inf");
  ExpectInvalid(Load(Def(kReserve, "retry: {backoff_multiplier: 0.5}\n")),
                "retry.backoff_multiplier: must be a finite number >= 1");
  ExpectInvalid(Load(Def(kReserve, "retry: {backoff_multiplier: 1e309}\n")), "out of range");
  ExpectInvalid(Load(Def(kReserve, "retry: {retryable_codes: [UNAVAILABLE, UNAVAILBLE]}\n")),
                "retry.retryable_codes[1]: unknown gRPC status code 'UNAVAILBLE'");
  ExpectInvalid(Load(Def(kReserve, "retry: {retryable_codes: [OK]}\n")),
                "retry.retryable_codes[0]: OK is not an error code");
  ExpectInvalid(Load(Def(absl::StrCat(kReserve, "    kind: wait\n"))),
                "steps[0] (reserve).kind: unknown step kind 'wait'");
}

TEST(LoaderTest, PolicyLayering) {
  auto def = Load(Def(absl::StrCat(kReserve, R"(    retry: {max_attempts: 7}
    compensation:
      method: shop.v1.Inventory/Release
      timeout: 4s
      retry: {jitter: 0}
  - name: charge
    participant: shop
    method: shop.v1.Payment/Charge
    timeout: 1s
)"),
                      R"(retry: {max_attempts: 2, initial_backoff: 1s, jitter: 0.5}
timeout: 3s
compensation_retry: {max_backoff: 30s, retryable_codes: [INTERNAL]}
compensation_timeout: 6s
)"));
  ASSERT_TRUE(def.ok()) << def.status();
  const StepSpec& reserve = (*def)->steps[0];
  EXPECT_EQ(reserve.action.retry.max_attempts, 7);
  EXPECT_EQ(reserve.action.retry.initial_backoff, absl::Seconds(1));
  EXPECT_EQ(reserve.action.retry.max_backoff, kDefaultMaxBackoff);
  EXPECT_DOUBLE_EQ(reserve.action.retry.jitter, 0.5);
  EXPECT_EQ(reserve.action.timeout, absl::Seconds(3));
  ASSERT_TRUE(reserve.compensation.has_value());
  EXPECT_EQ(reserve.compensation->retry.max_attempts, kDefaultCompensationMaxAttempts);
  EXPECT_EQ(reserve.compensation->retry.max_backoff, absl::Seconds(30));
  EXPECT_DOUBLE_EQ(reserve.compensation->retry.jitter, 0.0);
  EXPECT_THAT(reserve.compensation->retry.retryable_codes,
              ElementsAre(absl::StatusCode::kInternal));
  EXPECT_EQ(reserve.compensation->timeout, absl::Seconds(4));
  const StepSpec& charge = (*def)->steps[1];
  EXPECT_EQ(charge.action.timeout, absl::Seconds(1));
  EXPECT_EQ(charge.action.retry.max_attempts, 2);
}

TEST(LoaderTest, Limits) {
  std::string steps;
  for (int i = 0; i < 101; ++i) {
    absl::StrAppend(&steps, "  - {name: s", i,
                    ", participant: shop, method: shop.v1.Inventory/Reserve}\n");
  }
  ExpectInvalid(Load(Def(steps)), "order.yaml: steps: 101 steps; the limit is 100");

  std::string large = Def(kReserve);
  absl::StrAppend(&large, "# ", std::string(kMaxDefinitionBytes, 'x'), "\n");
  ExpectInvalid(Load(large), "order.yaml: the definition is");

  std::string deep = "name: deep\ndescription: x\nsteps:\n  - name: a\n    request: ";
  for (int i = 0; i < 64; ++i) deep += "[";
  for (int i = 0; i < 64; ++i) deep += "]";
  ExpectInvalid(Load(deep), "nesting is deeper than 64 levels");
  std::string deep_json = "{\"name\": \"x\", \"steps\": [{\"request\": ";
  for (int i = 0; i < 62; ++i) deep_json += "[";
  for (int i = 0; i < 62; ++i) deep_json += "]";
  deep_json += "}]}";
  ExpectInvalid(Load(deep_json), "nesting is deeper than 64 levels");
  // Templates nest at most 32 levels (protobuf's parsers stop at 100 nested messages).
  auto nested = [](int levels) {
    std::string text = "{\"name\": \"x\", \"steps\": [{\"request\": ";
    for (int i = 0; i < levels; ++i) text += "[";
    for (int i = 0; i < levels; ++i) text += "]";
    return text + "}]}";
  };
  EXPECT_TRUE(ParseDefinitionText(nested(32), "order.yaml").ok());
  auto too_nested = ParseDefinitionText(nested(33), "order.yaml");
  ASSERT_FALSE(too_nested.ok());
  EXPECT_THAT(std::string(too_nested.status().message()),
              HasSubstr("request templates nest at most 32 levels"));

  const char* bomb = R"(name: bomb
description: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
x1: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
x2: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
x3: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
x4: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
x5: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
x6: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
)";
  auto result = ParseDefinitionText(bomb, "order.yaml");
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(result.status().message()), HasSubstr("alias"));
  EXPECT_THAT(std::string(result.status().message()), HasSubstr("order.yaml:"));

  // A few aliases are fine.
  auto aliases = Load(Def(R"(  - name: a
    participant: shop
    method: shop.v1.Inventory/Reserve
    retry: &policy {max_attempts: 5}
  - name: b
    participant: shop
    method: shop.v1.Inventory/Reserve
    retry: *policy
)"));
  ASSERT_TRUE(aliases.ok()) << aliases.status();
  EXPECT_EQ((*aliases)->steps[1].action.retry.max_attempts, 5);

  ExpectInvalid(Load(Def(R"(  - name: a
    participant: shop
    method: shop.v1.Inventory/Reserve
    request: {amount: 9007199254740993}
)")),
                "write it as a string");
  ExpectInvalid(Load("name: x\n---\nname: y\n"), "more than one YAML document");
  ExpectInvalid(Load("name: \"a\\u0000b\"\n"), "NUL character");
  ExpectInvalid(Load("name: \xff\n"), "order.yaml:1:7: invalid UTF-8");
}

TEST(LoaderTest, NamesAndParticipants) {
  ExpectInvalid(Load("steps: []\n"), "order.yaml: name: required");
  ExpectInvalid(Load(absl::StrCat("name: has space\n", "steps: []\n")),
                "name: 'has space' is not valid");
  ExpectInvalid(Load(Def("")), "order.yaml: steps: at least one step is required");
  ExpectInvalid(Load(Def(R"(  - name: "a/b"
    participant: shop
    method: shop.v1.Inventory/Reserve
)")),
                "steps[0].name: 'a/b' is not valid");
  ExpectInvalid(Load(R"(name: x
participants:
  p: {protos: [a.proto]}
steps: [{name: a, participant: p, method: a.B/C}]
)"),
                "participants.p.target: required");
  ExpectInvalid(Load(R"(name: x
participants:
  p: {target: t, protos: [../etc/a.proto]}
steps: [{name: a, participant: p, method: a.B/C}]
)"),
                "participants.p.protos[0]: '../etc/a.proto' must be a relative path");
  ExpectInvalid(Load(R"(name: x
participants:
  p: {target: t, protos: [shop/v1/nope.proto]}
steps: [{name: a, participant: p, method: a.B/C}]
)"),
                "participants.p.protos[0]: cannot load 'shop/v1/nope.proto'");
}

TEST(LoaderTest, ProtoImportErrorsHaveLines) {
  ProtoSources sources;
  sources.files["bad.proto"] = "syntax = \"proto3\";\npackage x;\nmessage M { strin a = 1; }\n";
  auto result = Load(R"(name: x
participants:
  p: {target: t, protos: [bad.proto]}
steps: [{name: a, participant: p, method: x.S/M}]
)",
                     sources);
  ExpectInvalid(result, "participants.p.protos[0]: cannot load 'bad.proto': bad.proto:3:13:");
}

TEST(LoaderTest, InMemoryProtoFiles) {
  ProtoSources sources;
  sources.files["mem/v1/mem.proto"] = R"(syntax = "proto3";
package mem.v1;
import "mem/v1/types.proto";
import "google/protobuf/empty.proto";
service Memory {
  rpc Put(PutRequest) returns (google.protobuf.Empty);
}
)";
  sources.files["mem/v1/types.proto"] = R"(syntax = "proto3";
package mem.v1;
message PutRequest { string key = 1; int64 value = 2; }
)";
  auto def = Load(R"(name: mem
participants:
  m: {target: "localhost:3", protos: [mem/v1/mem.proto]}
steps:
  - name: put
    participant: m
    method: mem.v1.Memory/Put
    request: {key: "${input.k}", value: "${input.v}"}
)",
                  sources);
  ASSERT_TRUE(def.ok()) << def.status();
  ASSERT_NE((*def)->steps[0].action.method, nullptr);
  EXPECT_EQ((*def)->steps[0].action.method->input_type()->full_name(), "mem.v1.PutRequest");
  EXPECT_EQ((*def)->steps[0].action.method->output_type()->full_name(), "google.protobuf.Empty");
  // Dependencies first in the descriptor set.
  google::protobuf::FileDescriptorSet set;
  ASSERT_TRUE(set.ParseFromString((*def)->descriptor_set));
  std::vector<std::string> names;
  for (const auto& file : set.file()) names.push_back(file.name());
  EXPECT_THAT(names,
              ElementsAre("mem/v1/types.proto", "google/protobuf/empty.proto", "mem/v1/mem.proto"));
}

TEST(LoaderTest, CompileStoredMatchesCompile) {
  std::string text = ReadFile(absl::StrCat(kSourceDir, "/saga-defs/order-fulfillment.yaml"));
  auto proto = ParseDefinitionText(text, "order-fulfillment.yaml");
  ASSERT_TRUE(proto.ok()) << proto.status();
  auto compiled = Compile(*proto, ShopSources(), "order-fulfillment.yaml");
  ASSERT_TRUE(compiled.ok()) << compiled.status();

  // As the store would: the canonical JSON and the descriptor set.
  v1::SagaDefinition stored_proto;
  ASSERT_TRUE(
      google::protobuf::util::JsonStringToMessage(CanonicalJson((*compiled)->proto), &stored_proto)
          .ok());
  auto stored = CompileStored(stored_proto, (*compiled)->descriptor_set, 7);
  ASSERT_TRUE(stored.ok()) << stored.status();
  EXPECT_EQ((*stored)->version, 7);
  EXPECT_EQ((*stored)->content_hash, (*compiled)->content_hash);
  EXPECT_EQ((*stored)->descriptor_set, (*compiled)->descriptor_set);
  ASSERT_EQ((*stored)->steps.size(), (*compiled)->steps.size());
  for (size_t i = 0; i < (*stored)->steps.size(); ++i) {
    const StepSpec& a = (*compiled)->steps[i];
    const StepSpec& b = (*stored)->steps[i];
    EXPECT_EQ(a.action.method->full_name(), b.action.method->full_name());
    EXPECT_EQ(b.action.method->file()->pool(), (*stored)->pool.get());
    EXPECT_EQ(a.action.request.raw(), b.action.request.raw());
    EXPECT_EQ(a.after, b.after);
    EXPECT_EQ(a.compensation.has_value(), b.compensation.has_value());
  }

  // Compiling again gives the same hash; a change gives another.
  auto again = Compile(*proto, ShopSources(), "x");
  ASSERT_TRUE(again.ok());
  EXPECT_EQ((*again)->content_hash, (*compiled)->content_hash);
  v1::SagaDefinition changed = *proto;
  changed.set_description("changed");
  auto other = Compile(changed, ShopSources(), "x");
  ASSERT_TRUE(other.ok());
  EXPECT_NE((*other)->content_hash, (*compiled)->content_hash);

  // A broken descriptor set is an error, not a crash.
  ExpectInvalid(CompileStored(stored_proto, "garbage", 1), "not a valid FileDescriptorSet");
  ExpectInvalid(CompileStored(stored_proto, "", 1), "is not in the descriptor set");
}

TEST(LoaderTest, CanonicalJsonIsStable) {
  v1::SagaDefinition a;
  a.set_name("n");
  v1::SagaDefinition b = a;
  for (const char* name : {"zeta", "alpha", "mid", "beta", "omega", "gamma"}) {
    (*a.mutable_participants())[name].set_target(name);
  }
  for (const char* name : {"gamma", "omega", "beta", "mid", "alpha", "zeta"}) {
    (*b.mutable_participants())[name].set_target(name);
  }
  auto* step = a.add_steps();
  step->set_name("s");
  auto* fields = step->mutable_request()->mutable_struct_value()->mutable_fields();
  (*fields)["z"].set_string_value("1");
  (*fields)["a"].set_number_value(2);
  auto* step_b = b.add_steps();
  step_b->set_name("s");
  auto* fields_b = step_b->mutable_request()->mutable_struct_value()->mutable_fields();
  (*fields_b)["a"].set_number_value(2);
  (*fields_b)["z"].set_string_value("1");
  EXPECT_EQ(CanonicalJson(a), CanonicalJson(b));
  EXPECT_EQ(CanonicalJson(a), CanonicalJson(a));
  EXPECT_THAT(CanonicalJson(a), HasSubstr(R"("participants":{"alpha":{"target":"alpha"},)"));
  EXPECT_THAT(CanonicalJson(a), HasSubstr(R"("request":{"a":2,"z":"1"})"));
}

TEST(HashTest, Sha256Hex) {
  EXPECT_EQ(Sha256Hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(Sha256Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

}  // namespace
}  // namespace saga::definition
