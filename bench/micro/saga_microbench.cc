// saga-microbench: micro-benchmarks of the work sagad does per saga step, measured on the
// benchmark workload's definition (bench/saga-defs/bench-order.yaml, compiled against
// bench/proto/participants.proto):
//   - engine: Decide (+ Apply) for a step result, and a whole saga's decisions;
//   - request template rendering;
//   - event detail JSON encoding (nlohmann dump);
//   - JSON <-> protobuf binary for a StepRequest / StepReply: with a TypeResolver (as the gRPC
//     invoker does), on a DynamicMessage of the definition's pool, and on the generated type.
// Flags: Google Benchmark's (--benchmark_filter, --benchmark_min_time, ...).
#include <fstream>
#include <iostream>
#include <memory>
#include <random>
#include <sstream>
#include <string>

#include "absl/random/random.h"
#include "benchmark/benchmark.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/dynamic_message.h"
#include "google/protobuf/util/json_util.h"
#include "google/protobuf/util/type_resolver.h"
#include "google/protobuf/util/type_resolver_util.h"
#include "nlohmann/json.hpp"
#include "orchestrator/definition/loader.h"
#include "orchestrator/definition/model.h"
#include "orchestrator/definition/template.h"
#include "orchestrator/engine/engine.h"
#include "participants.pb.h"

namespace saga::bench {
namespace {

namespace pb = ::google::protobuf;

constexpr const char* kTypeUrlPrefix = "type.googleapis.com";
const absl::Time kNow = absl::FromUnixSeconds(1'700'000'000);

// The compiled bench-order definition, loaded once.
const definition::Definition& BenchOrder() {
  static const std::shared_ptr<definition::Definition> def = [] {
    const std::string dir = SAGA_BENCH_DIR;
    std::ifstream in(dir + "/saga-defs/bench-order.yaml");
    std::stringstream text;
    text << in.rdbuf();
    auto proto = definition::ParseDefinitionText(text.str(), "bench-order.yaml");
    if (!proto.ok()) {
      std::cerr << proto.status() << "\n";
      std::abort();
    }
    definition::ProtoSources sources;
    sources.search_path = {dir + "/saga-defs", dir + "/proto"};
    auto compiled = definition::Compile(*proto, sources, "bench-order.yaml");
    if (!compiled.ok()) {
      std::cerr << compiled.status() << "\n";
      std::abort();
    }
    return *compiled;
  }();
  return *def;
}

const nlohmann::json& Input() {
  static const nlohmann::json input = {{"order_id", 1700000000123000ULL}, {"amount", 4200}};
  return input;
}

// The state after SAGA_STARTED and STEP_STARTED(reserve).
engine::SagaState StartedState(const definition::Definition& def, std::mt19937_64& rng) {
  engine::SagaState state = engine::NewState(def);
  engine::Decision d =
      engine::Decide(def, state, {.kind = engine::Trigger::Kind::kStart}, kNow, rng);
  for (const auto& e : d.events) engine::Apply(def, state, e);
  return state;
}

engine::Trigger OkResult(int step, const std::string& ref) {
  return {.kind = engine::Trigger::Kind::kResult,
          .step = step,
          .call = engine::CallKind::kAction,
          .attempt = 1,
          .status = absl::OkStatus(),
          .output = {{"ok", true}, {"ref", ref}}};
}

// Decide for "reserve succeeded": the events SUCCEEDED(reserve) + STARTED(charge) and the call.
void BM_EngineDecideStepResult(benchmark::State& st) {
  const auto& def = BenchOrder();
  std::mt19937_64 rng(42);
  const engine::SagaState state = StartedState(def, rng);
  const engine::Trigger trigger = OkResult(0, "reserve-1700000000123000");
  for (auto _ : st) {
    engine::Decision d = engine::Decide(def, state, trigger, kNow, rng);
    benchmark::DoNotOptimize(d);
  }
}
BENCHMARK(BM_EngineDecideStepResult);

// Decide + Apply of its events (on a copy of the state, as the runtime's step does).
void BM_EngineDecideApplyStepResult(benchmark::State& st) {
  const auto& def = BenchOrder();
  std::mt19937_64 rng(42);
  const engine::SagaState state = StartedState(def, rng);
  const engine::Trigger trigger = OkResult(0, "reserve-1700000000123000");
  for (auto _ : st) {
    engine::SagaState s = state;
    engine::Decision d = engine::Decide(def, s, trigger, kNow, rng);
    for (const auto& e : d.events) engine::Apply(def, s, e);
    benchmark::DoNotOptimize(s);
  }
}
BENCHMARK(BM_EngineDecideApplyStepResult);

// Every decision of one saga, start to COMPLETED (scenario A) or COMPENSATED (B's 10%).
void BM_EngineWholeSaga(benchmark::State& st) {
  const auto& def = BenchOrder();
  const bool compensate = st.range(0) != 0;
  std::mt19937_64 rng(42);
  for (auto _ : st) {
    engine::SagaState s = engine::NewState(def);
    auto fire = [&](const engine::Trigger& t) {
      engine::Decision d = engine::Decide(def, s, t, kNow, rng);
      for (const auto& e : d.events) engine::Apply(def, s, e);
      return d;
    };
    fire({.kind = engine::Trigger::Kind::kStart});
    fire(OkResult(0, "reserve-1"));
    if (compensate) {
      engine::Decision d = fire({.kind = engine::Trigger::Kind::kResult,
                                 .step = 1,
                                 .call = engine::CallKind::kAction,
                                 .attempt = 1,
                                 .status = absl::FailedPreconditionError("Charge rejected")});
      for (const auto& c : d.commands) {
        fire({.kind = engine::Trigger::Kind::kResult,
              .step = c.step,
              .call = c.call,
              .attempt = c.attempt,
              .status = absl::OkStatus(),
              .output = {{"ok", true}, {"ref", "release-1"}}});
      }
    } else {
      fire(OkResult(1, "charge-1"));
      fire(OkResult(2, "schedule-1"));
    }
    if (!engine::IsTerminal(s.status)) st.SkipWithError("saga did not end");
    benchmark::DoNotOptimize(s);
  }
}
BENCHMARK(BM_EngineWholeSaga)->Arg(0)->Arg(1)->ArgName("compensate");

definition::RenderContext Context(const nlohmann::json& input) {
  definition::RenderContext ctx;
  ctx.input = &input;
  ctx.step_output = [](std::string_view) -> const nlohmann::json* { return nullptr; };
  ctx.saga_id = "0b6f3c1e-8a57-4c1d-9f3e-2d6a1b7c9e01";
  ctx.step_name = "charge";
  ctx.step_key = "0b6f3c1e-8a57-4c1d-9f3e-2d6a1b7c9e01/charge/action";
  return ctx;
}

// Rendering the charge request template: {order_id, amount, idempotency_key: "<id>:charge"}.
void BM_TemplateRenderChargeRequest(benchmark::State& st) {
  const auto& def = BenchOrder();
  const definition::Template& tpl = def.steps[1].action.request;
  const definition::RenderContext ctx = Context(Input());
  for (auto _ : st) {
    absl::StatusOr<nlohmann::json> out = tpl.Render(ctx);
    benchmark::DoNotOptimize(out);
  }
}
BENCHMARK(BM_TemplateRenderChargeRequest);

// Render + dump to the JSON text handed to the invoker.
void BM_TemplateRenderAndDump(benchmark::State& st) {
  const auto& def = BenchOrder();
  const definition::Template& tpl = def.steps[1].action.request;
  const definition::RenderContext ctx = Context(Input());
  for (auto _ : st) {
    std::string text = tpl.Render(ctx)->dump();
    benchmark::DoNotOptimize(text);
  }
}
BENCHMARK(BM_TemplateRenderAndDump);

// A typical event detail: STEP_SUCCEEDED's {"output": {...}}, and STEP_FAILED's error.
void BM_EventDetailDumpSucceeded(benchmark::State& st) {
  const nlohmann::json detail = {{"output", {{"ok", true}, {"ref", "charge-1700000000123000"}}}};
  for (auto _ : st) {
    std::string text = detail.dump();
    benchmark::DoNotOptimize(text);
  }
}
BENCHMARK(BM_EventDetailDumpSucceeded);

void BM_EventDetailDumpFailed(benchmark::State& st) {
  const nlohmann::json detail = {{"code", "FAILED_PRECONDITION"},
                                 {"message", "Charge rejected for order 1700000000123000"},
                                 {"unknown", false}};
  for (auto _ : st) {
    std::string text = detail.dump();
    benchmark::DoNotOptimize(text);
  }
}
BENCHMARK(BM_EventDetailDumpFailed);

// Building and dumping the detail (what the runtime does per event).
void BM_EventDetailBuildAndDump(benchmark::State& st) {
  for (auto _ : st) {
    nlohmann::json detail = nlohmann::json::object();
    detail["output"] = {{"ok", true}, {"ref", "charge-1700000000123000"}};
    std::string text = detail.dump();
    benchmark::DoNotOptimize(text);
  }
}
BENCHMARK(BM_EventDetailBuildAndDump);

// Parsing a stored detail back (history replay, WatchSaga).
void BM_EventDetailParse(benchmark::State& st) {
  const std::string text = R"({"output":{"ok":true,"ref":"charge-1700000000123000"}})";
  for (auto _ : st) {
    nlohmann::json detail = nlohmann::json::parse(text);
    benchmark::DoNotOptimize(detail);
  }
}
BENCHMARK(BM_EventDetailParse);

const std::string& RequestJson() {
  static const std::string json =
      R"({"order_id":1700000000123000,"amount":4200,"idempotency_key":"1700000000123000:charge"})";
  return json;
}

const pb::MethodDescriptor& ChargeMethod() { return *BenchOrder().steps[1].action.method; }

// JSON -> binary through a TypeResolver over the definition's pool (the gRPC invoker's path;
// the resolver is uncached here, as protobuf's own).
void BM_JsonToBinaryTypeResolver(benchmark::State& st) {
  const auto& def = BenchOrder();
  std::unique_ptr<pb::util::TypeResolver> resolver(
      pb::util::NewTypeResolverForDescriptorPool(kTypeUrlPrefix, def.pool.get()));
  const std::string url =
      std::string(kTypeUrlPrefix) + "/" + ChargeMethod().input_type()->full_name();
  for (auto _ : st) {
    std::string binary;
    auto status = pb::util::JsonToBinaryString(resolver.get(), url, RequestJson(), &binary);
    if (!status.ok()) st.SkipWithError("JsonToBinaryString failed");
    benchmark::DoNotOptimize(binary);
  }
}
BENCHMARK(BM_JsonToBinaryTypeResolver);

// JSON -> DynamicMessage of the definition's pool -> binary.
void BM_JsonToBinaryDynamicMessage(benchmark::State& st) {
  const auto& def = BenchOrder();
  pb::DynamicMessageFactory factory(def.pool.get());
  const pb::Message* prototype = factory.GetPrototype(ChargeMethod().input_type());
  for (auto _ : st) {
    std::unique_ptr<pb::Message> msg(prototype->New());
    auto status = pb::util::JsonStringToMessage(RequestJson(), msg.get());
    if (!status.ok()) st.SkipWithError("JsonStringToMessage failed");
    std::string binary = msg->SerializeAsString();
    benchmark::DoNotOptimize(binary);
  }
}
BENCHMARK(BM_JsonToBinaryDynamicMessage);

// JSON -> generated StepRequest -> binary (a lower bound for the conversion).
void BM_JsonToBinaryGenerated(benchmark::State& st) {
  for (auto _ : st) {
    sagabench::participants::v1::StepRequest msg;
    auto status = pb::util::JsonStringToMessage(RequestJson(), &msg);
    if (!status.ok()) st.SkipWithError("JsonStringToMessage failed");
    std::string binary = msg.SerializeAsString();
    benchmark::DoNotOptimize(binary);
  }
}
BENCHMARK(BM_JsonToBinaryGenerated);

// The reply: binary StepReply -> JSON, through a TypeResolver (the invoker's path).
void BM_BinaryToJsonTypeResolver(benchmark::State& st) {
  const auto& def = BenchOrder();
  std::unique_ptr<pb::util::TypeResolver> resolver(
      pb::util::NewTypeResolverForDescriptorPool(kTypeUrlPrefix, def.pool.get()));
  const std::string url =
      std::string(kTypeUrlPrefix) + "/" + ChargeMethod().output_type()->full_name();
  sagabench::participants::v1::StepReply reply;
  reply.set_ok(true);
  reply.set_ref("charge-1700000000123000");
  const std::string binary = reply.SerializeAsString();
  for (auto _ : st) {
    std::string json;
    auto status = pb::util::BinaryToJsonString(resolver.get(), url, binary, &json);
    if (!status.ok()) st.SkipWithError("BinaryToJsonString failed");
    benchmark::DoNotOptimize(json);
  }
}
BENCHMARK(BM_BinaryToJsonTypeResolver);

// The reply through a DynamicMessage: parse binary, MessageToJsonString.
void BM_BinaryToJsonDynamicMessage(benchmark::State& st) {
  const auto& def = BenchOrder();
  pb::DynamicMessageFactory factory(def.pool.get());
  const pb::Message* prototype = factory.GetPrototype(ChargeMethod().output_type());
  sagabench::participants::v1::StepReply reply;
  reply.set_ok(true);
  reply.set_ref("charge-1700000000123000");
  const std::string binary = reply.SerializeAsString();
  for (auto _ : st) {
    std::unique_ptr<pb::Message> msg(prototype->New());
    msg->ParseFromString(binary);
    std::string json;
    auto status = pb::util::MessageToJsonString(*msg, &json);
    if (!status.ok()) st.SkipWithError("MessageToJsonString failed");
    benchmark::DoNotOptimize(json);
  }
}
BENCHMARK(BM_BinaryToJsonDynamicMessage);

}  // namespace
}  // namespace saga::bench

BENCHMARK_MAIN();
