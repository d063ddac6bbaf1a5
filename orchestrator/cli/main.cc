// sagactl: the command-line client of sagad's public gRPC API.
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"
#include "google/protobuf/util/json_util.h"
#include "google/protobuf/util/time_util.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "orchestrator/definition/loader.h"
#include "orchestrator/sim/scenario.h"
#include "saga/v1/orchestrator.grpc.pb.h"

namespace {

using google::protobuf::util::TimeUtil;

struct Globals {
  std::string address = "localhost:50051";
  std::string output = "table";
  int timeout_seconds = 30;
};

[[noreturn]] void Die(const std::string& what) {
  std::cerr << "sagactl: " << what << "\n";
  std::exit(1);
}

[[noreturn]] void DieRpc(const grpc::Status& s) {
  const int code = static_cast<int>(s.error_code());
  const std::string name = absl::StatusCodeToString(static_cast<absl::StatusCode>(code));
  std::cerr << "sagactl: " << (name.empty() ? "ERROR" : name) << ": " << s.error_message() << "\n";
  std::exit(code == 5 ? 3 : 1);
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) Die("cannot read " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string ToJson(const google::protobuf::Message& m) {
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  std::string out;
  (void)google::protobuf::util::MessageToJsonString(m, &out, options);
  return out;
}

std::string StatusName(saga::v1::SagaStatus s) {
  std::string name = saga::v1::SagaStatus_Name(s);
  const std::string prefix = "SAGA_STATUS_";
  return name.rfind(prefix, 0) == 0 ? name.substr(prefix.size()) : name;
}

std::string StepStatusName(saga::v1::StepStatus s) {
  std::string name = saga::v1::StepStatus_Name(s);
  const std::string prefix = "STEP_STATUS_";
  return name.rfind(prefix, 0) == 0 ? name.substr(prefix.size()) : name;
}

std::string Time(const google::protobuf::Timestamp& t) {
  if (t.seconds() == 0 && t.nanos() == 0) return "-";
  return TimeUtil::ToString(t);
}

class Client {
 public:
  explicit Client(const Globals& g) : g_(g) {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(64 << 20);
    channel_ = grpc::CreateCustomChannel(g.address, grpc::InsecureChannelCredentials(), args);
    stub_ = saga::v1::SagaOrchestrator::NewStub(channel_);
  }
  std::unique_ptr<grpc::ClientContext> Context(bool deadline = true) const {
    auto ctx = std::make_unique<grpc::ClientContext>();
    if (deadline) {
      ctx->set_deadline(std::chrono::system_clock::now() +
                        std::chrono::seconds(g_.timeout_seconds));
    }
    return ctx;
  }
  saga::v1::SagaOrchestrator::Stub* stub() { return stub_.get(); }
  std::shared_ptr<grpc::Channel> channel() { return channel_; }

 private:
  const Globals& g_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<saga::v1::SagaOrchestrator::Stub> stub_;
};

void PrintSaga(const Globals& g, const saga::v1::Saga& saga) {
  if (g.output == "json") {
    std::cout << ToJson(saga) << "\n";
    return;
  }
  std::cout << "saga        " << saga.id() << "\n"
            << "definition  " << saga.definition() << " v" << saga.version() << "\n"
            << "status      " << StatusName(saga.status()) << "\n";
  if (!saga.idempotency_key().empty()) {
    std::cout << "key         " << saga.idempotency_key() << "\n";
  }
  if (!saga.error().empty()) std::cout << "error       " << saga.error() << "\n";
  std::cout << "created     " << Time(saga.created_at()) << "\n"
            << "updated     " << Time(saga.updated_at()) << "\n"
            << "input       " << saga.input_json() << "\n\n";
  std::printf("%-20s %-20s %8s %8s  %s\n", "STEP", "STATUS", "ATTEMPTS", "UNDO", "DETAIL");
  for (const auto& s : saga.steps()) {
    std::string detail = !s.last_error().empty() ? s.last_error() : s.output_json();
    if (detail.size() > 80) detail = detail.substr(0, 77) + "...";
    std::printf("%-20s %-20s %8d %8d  %s\n", s.name().c_str(), StepStatusName(s.status()).c_str(),
                s.attempts(), s.compensation_attempts(), detail.c_str());
  }
  if (saga.history_size() > 0) {
    std::cout << "\n";
    std::printf("%4s %-30s %-28s %-12s %3s  %s\n", "SEQ", "TIME", "EVENT", "STEP", "TRY", "DETAIL");
    for (const auto& e : saga.history()) {
      std::printf("%4lld %-30s %-28s %-12s %3d  %s\n", static_cast<long long>(e.seq()),
                  Time(e.recorded_at()).c_str(), e.type().c_str(), e.step().c_str(), e.attempt(),
                  e.detail_json() == "{}" ? "" : e.detail_json().c_str());
    }
  }
}

void PrintEvent(const Globals& g, const saga::v1::SagaEvent& e) {
  if (g.output == "json") {
    std::cout << ToJson(e) << std::endl;
    return;
  }
  const std::string attempt = e.step().empty() ? "" : std::to_string(e.attempt());
  std::printf("%4lld %-28s %-12s %3s %-13s %s\n", static_cast<long long>(e.seq()), e.type().c_str(),
              e.step().c_str(), attempt.c_str(), StatusName(e.status()).c_str(),
              e.detail_json() == "{}" ? "" : e.detail_json().c_str());
  std::fflush(stdout);
}

// Streams a saga's events; returns its final status.
saga::v1::SagaStatus Watch(const Globals& g, Client& client, const std::string& id) {
  auto ctx = client.Context(/*deadline=*/false);
  saga::v1::WatchSagaRequest req;
  req.set_saga_id(id);
  auto reader = client.stub()->WatchSaga(ctx.get(), req);
  saga::v1::SagaEvent e;
  saga::v1::SagaStatus last = saga::v1::SAGA_STATUS_UNSPECIFIED;
  while (reader->Read(&e)) {
    PrintEvent(g, e);
    last = e.status();
  }
  grpc::Status s = reader->Finish();
  if (!s.ok()) DieRpc(s);
  return last;
}

std::string InputArg(const std::string& input) {
  if (!input.empty() && input[0] == '@') return ReadFile(input.substr(1));
  return input;
}

}  // namespace

int main(int argc, char** argv) {
  Globals g;
  if (const char* a = std::getenv("SAGA_ADDRESS")) g.address = a;
  CLI::App app{"sagactl: start, watch and operate sagas on sagad"};
  app.require_subcommand(1);
  app.add_option("--address", g.address, "sagad address (env SAGA_ADDRESS)")->capture_default_str();
  app.add_option("-o,--output", g.output, "output format")
      ->check(CLI::IsMember({"table", "json"}))
      ->capture_default_str();
  app.add_option("--timeout", g.timeout_seconds, "RPC deadline in seconds")->capture_default_str();

  // --- def ---
  auto* def = app.add_subcommand("def", "workflow definitions");
  def->require_subcommand(1);
  std::vector<std::string> files;
  std::vector<std::string> proto_path;
  auto* def_validate = def->add_subcommand("validate", "check workflow files offline (no server)");
  def_validate->add_option("files", files, "workflow files")->required();
  def_validate->add_option("--proto-path", proto_path, "folders searched for .proto files");
  auto* def_register = def->add_subcommand("register", "register workflow files");
  def_register->add_option("files", files, "workflow files")->required();
  auto* def_list = def->add_subcommand("list", "list definitions (latest versions)");
  std::string def_name;
  int def_version = 0;
  auto* def_get = def->add_subcommand("get", "show a definition");
  def_get->add_option("name", def_name)->required();
  def_get->add_option("--version", def_version, "version (default latest)");

  // --- saga ---
  auto* saga = app.add_subcommand("saga", "sagas");
  saga->require_subcommand(1);
  std::string name, input = "{}", key, id, reason, status_filter, def_filter, traceparent;
  int version = 0, limit = 20;
  bool wait = false, history = false;
  auto* start = saga->add_subcommand("start", "start a saga");
  start->add_option("definition", name)->required();
  start->add_option("--input", input, "input JSON, or @file")->capture_default_str();
  start->add_option("--key", key, "idempotency key");
  start->add_option("--version", version, "definition version (default latest)");
  start->add_option("--traceparent", traceparent, "W3C trace context");
  start->add_flag("--wait", wait, "stream the saga's events; exit 0 only if it COMPLETED");
  auto* get = saga->add_subcommand("get", "show a saga");
  get->add_option("id", id)->required();
  get->add_flag("--history", history, "include the event history");
  auto* list = saga->add_subcommand("list", "list sagas, newest first");
  list->add_option("--status", status_filter,
                   "RUNNING, COMPLETED, COMPENSATING, COMPENSATED, FAILED");
  list->add_option("--definition", def_filter);
  list->add_option("--limit", limit)->capture_default_str();
  auto* watch = saga->add_subcommand("watch", "stream a saga's events until it ends");
  watch->add_option("id", id)->required();
  auto* abort = saga->add_subcommand("abort", "abort a saga (compensates what was done)");
  abort->add_option("id", id)->required();
  abort->add_option("--reason", reason)->required();
  auto* retry = saga->add_subcommand("retry", "resume a FAILED saga's compensation");
  retry->add_option("id", id)->required();

  auto* health = app.add_subcommand("health", "check that sagad is serving");

  // --- simulate ---
  saga::sim::CommandArgs sim_args;
  std::vector<std::string> sim_fail, sim_timeout, sim_comp_fail, sim_comp_timeout, sim_abort;
  auto* simulate = app.add_subcommand(
      "simulate", "offline: run a workflow file through the engine with scripted participants");
  simulate->add_option("file", sim_args.file, "workflow file")->required();
  simulate->add_option("--input", sim_args.input, "input JSON, or @file")->capture_default_str();
  simulate->add_option("--key", sim_args.key,
                       "the saga's idempotency key (${saga.idempotency_key})");
  const std::vector<std::pair<saga::sim::ScriptFlag::Kind, CLI::Option*>> sim_script_options = {
      {saga::sim::ScriptFlag::Kind::kFail,
       simulate->add_option("--fail", sim_fail, "STEP=CODE[xN]: attempts of STEP answer CODE")},
      {saga::sim::ScriptFlag::Kind::kTimeout,
       simulate->add_option("--timeout", sim_timeout, "STEP[xN]: attempts of STEP time out")},
      {saga::sim::ScriptFlag::Kind::kCompFail,
       simulate->add_option("--comp-fail", sim_comp_fail, "STEP=CODE[xN]: compensation attempts")},
      {saga::sim::ScriptFlag::Kind::kCompTimeout,
       simulate->add_option("--comp-timeout", sim_comp_timeout, "STEP[xN]: compensation timeouts")},
      {saga::sim::ScriptFlag::Kind::kAbortAfter,
       simulate->add_option("--abort-after", sim_abort, "STEP: abort right after STEP succeeds")},
  };
  for (const auto& [kind, option] : sim_script_options) option->allow_extra_args(false);
  simulate->add_option("--proto-path", sim_args.proto_path, "folders searched for .proto files");
  simulate->add_option("--seed", sim_args.seed, "jitter seed")->capture_default_str();
  simulate->add_option("-o,--output", g.output, "output format")
      ->check(CLI::IsMember({"table", "json"}));

  CLI11_PARSE(app, argc, argv);

  if (def_validate->parsed()) {
    int bad = 0;
    for (const auto& f : files) {
      std::string text = ReadFile(f);
      auto proto = saga::definition::ParseDefinitionText(text, f);
      absl::Status st = proto.status();
      if (proto.ok()) {
        saga::definition::ProtoSources sources;
        const auto slash = f.find_last_of('/');
        sources.search_path.push_back(slash == std::string::npos ? "." : f.substr(0, slash));
        for (const auto& p : proto_path) sources.search_path.push_back(p);
        st = saga::definition::Compile(*proto, sources, f).status();
      }
      if (st.ok()) {
        std::cout << f << ": ok\n";
      } else {
        ++bad;
        std::cout << st.message() << "\n";
      }
    }
    return bad == 0 ? 0 : 1;
  }

  if (simulate->parsed()) {
    // Each scripting flag's values in the order they were given (a step's outcomes apply in
    // that order).
    std::map<const CLI::Option*, size_t> next;
    for (const CLI::Option* option : simulate->parse_order()) {
      for (const auto& [kind, script_option] : sim_script_options) {
        if (option != script_option) continue;
        const size_t i = next[option]++;
        if (i < option->results().size()) sim_args.script.push_back({kind, option->results()[i]});
      }
    }
    sim_args.input = InputArg(sim_args.input);
    sim_args.json = g.output == "json";
    absl::StatusOr<std::string> out = saga::sim::RunCommand(sim_args);
    if (!out.ok()) Die(std::string(out.status().message()));
    std::cout << *out;
    return 0;
  }

  Client client(g);
  if (def_register->parsed()) {
    for (const auto& f : files) {
      saga::v1::RegisterDefinitionRequest req;
      req.set_text(ReadFile(f));
      req.set_source_name(f);
      saga::v1::RegisterDefinitionResponse resp;
      auto ctx = client.Context();
      grpc::Status s = client.stub()->RegisterDefinition(ctx.get(), req, &resp);
      if (!s.ok()) DieRpc(s);
      if (g.output == "json") {
        std::cout << ToJson(resp) << "\n";
      } else {
        std::cout << resp.name() << " v" << resp.version()
                  << (resp.created() ? " registered" : " unchanged") << "\n";
      }
    }
    return 0;
  }
  if (def_list->parsed()) {
    saga::v1::ListDefinitionsResponse resp;
    auto ctx = client.Context();
    grpc::Status s = client.stub()->ListDefinitions(ctx.get(), {}, &resp);
    if (!s.ok()) DieRpc(s);
    if (g.output == "json") {
      std::cout << ToJson(resp) << "\n";
      return 0;
    }
    std::printf("%-30s %7s %6s  %s\n", "NAME", "VERSION", "STEPS", "CREATED");
    for (const auto& d : resp.definitions()) {
      std::printf("%-30s %7d %6d  %s\n", d.name().c_str(), d.version(), d.definition().steps_size(),
                  Time(d.created_at()).c_str());
    }
    return 0;
  }
  if (def_get->parsed()) {
    saga::v1::GetDefinitionRequest req;
    req.set_name(def_name);
    req.set_version(def_version);
    saga::v1::DefinitionInfo resp;
    auto ctx = client.Context();
    grpc::Status s = client.stub()->GetDefinition(ctx.get(), req, &resp);
    if (!s.ok()) DieRpc(s);
    std::cout << ToJson(resp) << "\n";
    return 0;
  }
  if (start->parsed()) {
    saga::v1::StartSagaRequest req;
    req.set_definition(name);
    req.set_version(version);
    req.set_input_json(InputArg(input));
    req.set_idempotency_key(key);
    req.set_traceparent(traceparent);
    saga::v1::StartSagaResponse resp;
    auto ctx = client.Context();
    grpc::Status s = client.stub()->StartSaga(ctx.get(), req, &resp);
    if (!s.ok()) DieRpc(s);
    if (g.output == "json") {
      std::cout << ToJson(resp) << "\n";
    } else {
      std::cout << resp.saga_id() << (resp.created() ? "" : " (existing)") << "\n";
    }
    if (!wait) return 0;
    saga::v1::SagaStatus final_status = Watch(g, client, resp.saga_id());
    if (g.output != "json") {
      std::cout << "saga " << resp.saga_id() << " " << StatusName(final_status) << "\n";
    }
    return final_status == saga::v1::SAGA_STATUS_COMPLETED ? 0 : 2;
  }
  if (get->parsed()) {
    saga::v1::GetSagaRequest req;
    req.set_saga_id(id);
    req.set_include_history(history);
    saga::v1::Saga resp;
    auto ctx = client.Context();
    grpc::Status s = client.stub()->GetSaga(ctx.get(), req, &resp);
    if (!s.ok()) DieRpc(s);
    PrintSaga(g, resp);
    return 0;
  }
  if (list->parsed()) {
    saga::v1::ListSagasRequest req;
    if (!status_filter.empty()) {
      saga::v1::SagaStatus st;
      if (!saga::v1::SagaStatus_Parse("SAGA_STATUS_" + status_filter, &st)) {
        Die("--status: unknown status '" + status_filter + "'");
      }
      req.set_status(st);
    }
    req.set_definition(def_filter);
    req.set_page_size(limit);
    saga::v1::ListSagasResponse resp;
    auto ctx = client.Context();
    grpc::Status s = client.stub()->ListSagas(ctx.get(), req, &resp);
    if (!s.ok()) DieRpc(s);
    if (g.output == "json") {
      std::cout << ToJson(resp) << "\n";
      return 0;
    }
    std::printf("%-36s %-24s %-12s  %s\n", "ID", "DEFINITION", "STATUS", "CREATED");
    for (const auto& sg : resp.sagas()) {
      std::printf("%-36s %-24s %-12s  %s\n", sg.id().c_str(),
                  (sg.definition() + " v" + std::to_string(sg.version())).c_str(),
                  StatusName(sg.status()).c_str(), Time(sg.created_at()).c_str());
    }
    return 0;
  }
  if (watch->parsed()) {
    saga::v1::SagaStatus final_status = Watch(g, client, id);
    return final_status == saga::v1::SAGA_STATUS_COMPLETED ? 0 : 2;
  }
  if (abort->parsed()) {
    saga::v1::AbortSagaRequest req;
    req.set_saga_id(id);
    req.set_reason(reason);
    saga::v1::AbortSagaResponse resp;
    auto ctx = client.Context();
    grpc::Status s = client.stub()->AbortSaga(ctx.get(), req, &resp);
    if (!s.ok()) DieRpc(s);
    std::cout << "abort requested for " << id << "\n";
    return 0;
  }
  if (retry->parsed()) {
    saga::v1::RetrySagaRequest req;
    req.set_saga_id(id);
    saga::v1::RetrySagaResponse resp;
    auto ctx = client.Context();
    grpc::Status s = client.stub()->RetrySaga(ctx.get(), req, &resp);
    if (!s.ok()) DieRpc(s);
    std::cout << "retry requested for " << id << "\n";
    return 0;
  }
  if (health->parsed()) {
    auto stub = grpc::health::v1::Health::NewStub(client.channel());
    grpc::health::v1::HealthCheckRequest req;
    grpc::health::v1::HealthCheckResponse resp;
    auto ctx = client.Context();
    grpc::Status s = stub->Check(ctx.get(), req, &resp);
    if (!s.ok()) DieRpc(s);
    const bool serving = resp.status() == grpc::health::v1::HealthCheckResponse::SERVING;
    std::cout << (serving ? "SERVING" : "NOT_SERVING") << "\n";
    return serving ? 0 : 1;
  }
  return 0;
}
