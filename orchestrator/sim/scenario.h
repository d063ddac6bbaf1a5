// Files around the simulator: workflow files compiled offline (as `sagactl def validate` does),
// the saga input, golden scenario files (saga-defs/testdata/*.yaml) and the `sagactl simulate`
// command itself.
//
// A scenario file is YAML:
//   definition: ../order-fulfillment.yaml          # relative to the scenario file
//   proto_path: [../../examples/participants/proto]  # idem
//   seed: 1                                        # optional, default 1
//   input: {order_id: "1001", ...}
//   script:                                        # optional; entries apply in the order written
//     fail: [charge=UNAVAILABLEx2]                 #   --fail
//     timeout: [charge]                            #   --timeout
//     comp_fail: [reserve=UNAVAILABLE]             #   --comp-fail
//     comp_timeout: [reserve]                      #   --comp-timeout
//     abort_after: reserve                         #   --abort-after
//   expect: ["SAGA_STARTED", "STEP_STARTED reserve", ...]   # every event, in order
//   final: COMPENSATED
//
// Errors are INVALID_ARGUMENT (NOT_FOUND for a file that cannot be read) with one line naming
// the file. Thread-compatible: free functions.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "orchestrator/definition/model.h"
#include "orchestrator/sim/simulator.h"

namespace saga::sim {

// Reads and compiles a workflow file; .proto files are searched in the file's folder, then in
// `proto_path`. Errors carry the loader's "<file>: <path>: <what>" message.
absl::StatusOr<std::shared_ptr<definition::Definition>> LoadDefinitionFile(
    const std::string& path, const std::vector<std::string>& proto_path);

// Parses the saga input; it must be a JSON object.
absl::StatusOr<nlohmann::json> ParseInput(std::string_view text);

struct Scenario {
  std::string path;
  // Resolved against the scenario file's folder.
  std::string definition;
  std::vector<std::string> proto_path;
  nlohmann::json input = nlohmann::json::object();
  std::vector<ScriptFlag> script;
  uint64_t seed = 1;
  // "EVENT_TYPE" or "EVENT_TYPE step", one per expected event.
  std::vector<std::string> expect;
  std::string final_status;
};

absl::StatusOr<Scenario> LoadScenario(const std::string& path);

struct ScenarioRun {
  std::shared_ptr<definition::Definition> def;
  Options options;
  Result result;
};

// Compiles the scenario's definition, builds its script and simulates it.
absl::StatusOr<ScenarioRun> RunScenario(const Scenario& scenario);

// One "EVENT_TYPE step" (or "EVENT_TYPE") per event, comparable with Scenario::expect.
std::vector<std::string> EventSummary(const definition::Definition& def, const Result& result);

// The arguments of `sagactl simulate`.
struct CommandArgs {
  std::string file;
  std::string input = "{}";  // JSON text (the CLI reads @file)
  std::string key;
  std::vector<ScriptFlag> script;  // in command-line order
  std::vector<std::string> proto_path;
  uint64_t seed = 1;
  bool json = false;
  int max_events = kDefaultMaxEvents;
};

// Runs `sagactl simulate`: returns the text to print (human trace or JSON document), or the
// error of a bad file or bad flags.
absl::StatusOr<std::string> RunCommand(const CommandArgs& args);

}  // namespace saga::sim
