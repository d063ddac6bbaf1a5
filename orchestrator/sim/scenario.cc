#include "orchestrator/sim/scenario.h"

#include <filesystem>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "orchestrator/definition/loader.h"
#include "yaml-cpp/yaml.h"

namespace saga::sim {
namespace {

namespace fs = std::filesystem;

absl::StatusOr<std::string> ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string Folder(const std::string& path) {
  const std::string parent = fs::path(path).parent_path().string();
  return parent.empty() ? "." : parent;
}

std::string Resolve(const std::string& folder, const std::string& path) {
  if (fs::path(path).is_absolute()) return path;
  return (fs::path(folder) / path).lexically_normal().string();
}

// Plain YAML scalars take their JSON type; quoted ones stay strings.
nlohmann::json ScalarToJson(const YAML::Node& node) {
  const std::string& s = node.Scalar();
  if (node.Tag() != "?") return s;
  if (s == "true" || s == "True") return true;
  if (s == "false" || s == "False") return false;
  if (s == "null" || s == "~" || s.empty()) return nullptr;
  int64_t i = 0;
  if (absl::SimpleAtoi(s, &i)) return i;
  double d = 0;
  if (s.find_first_of("0123456789") != std::string::npos && absl::SimpleAtod(s, &d)) return d;
  return s;
}

nlohmann::json YamlToJson(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Scalar:
      return ScalarToJson(node);
    case YAML::NodeType::Sequence: {
      nlohmann::json out = nlohmann::json::array();
      for (const auto& item : node) out.push_back(YamlToJson(item));
      return out;
    }
    case YAML::NodeType::Map: {
      nlohmann::json out = nlohmann::json::object();
      for (const auto& kv : node) out[kv.first.as<std::string>()] = YamlToJson(kv.second);
      return out;
    }
    default:
      return nullptr;
  }
}

// A string or a list of strings.
absl::StatusOr<std::vector<std::string>> Strings(const YAML::Node& node, const std::string& where) {
  std::vector<std::string> out;
  if (node.IsScalar()) {
    out.push_back(node.Scalar());
  } else if (node.IsSequence()) {
    for (const auto& item : node) {
      if (!item.IsScalar()) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": expected a list of strings"));
      }
      out.push_back(item.Scalar());
    }
  } else if (!node.IsNull()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": expected a string or a list"));
  }
  return out;
}

absl::StatusOr<Scenario> ParseScenario(const std::string& path, const std::string& text) {
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", e.what()));
  }
  if (!root.IsMap()) return absl::InvalidArgumentError(absl::StrCat(path, ": expected a map"));
  Scenario sc;
  sc.path = path;
  const std::string folder = Folder(path);
  for (const auto& kv : root) {
    const std::string key = kv.first.as<std::string>();
    const YAML::Node& v = kv.second;
    const std::string where = absl::StrCat(path, ": ", key);
    if (key == "definition") {
      if (!v.IsScalar()) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": expected a path"));
      }
      sc.definition = Resolve(folder, v.Scalar());
    } else if (key == "proto_path") {
      auto dirs = Strings(v, where);
      if (!dirs.ok()) return dirs.status();
      for (const auto& d : *dirs) sc.proto_path.push_back(Resolve(folder, d));
    } else if (key == "input") {
      sc.input = YamlToJson(v);
      if (!sc.input.is_object()) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": expected a map"));
      }
    } else if (key == "seed") {
      if (!v.IsScalar() || !absl::SimpleAtoi(v.Scalar(), &sc.seed)) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": expected an unsigned integer"));
      }
    } else if (key == "script") {
      if (!v.IsMap()) return absl::InvalidArgumentError(absl::StrCat(where, ": expected a map"));
      for (const auto& entry : v) {
        const std::string kind = entry.first.as<std::string>();
        ScriptFlag::Kind k;
        if (kind == "fail") {
          k = ScriptFlag::Kind::kFail;
        } else if (kind == "timeout") {
          k = ScriptFlag::Kind::kTimeout;
        } else if (kind == "comp_fail") {
          k = ScriptFlag::Kind::kCompFail;
        } else if (kind == "comp_timeout") {
          k = ScriptFlag::Kind::kCompTimeout;
        } else if (kind == "abort_after") {
          k = ScriptFlag::Kind::kAbortAfter;
        } else {
          return absl::InvalidArgumentError(
              absl::StrCat(where, ": unknown key '", kind,
                           "' (fail, timeout, comp_fail, comp_timeout, abort_after)"));
        }
        auto values = Strings(entry.second, absl::StrCat(where, ".", kind));
        if (!values.ok()) return values.status();
        for (auto& value : *values) sc.script.push_back({k, std::move(value)});
      }
    } else if (key == "expect") {
      auto values = Strings(v, where);
      if (!values.ok()) return values.status();
      sc.expect = std::move(*values);
    } else if (key == "final") {
      if (!v.IsScalar()) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": expected a status"));
      }
      sc.final_status = v.Scalar();
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": unknown key '", key,
                       "' (definition, proto_path, seed, input, script, expect, final)"));
    }
  }
  if (sc.definition.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": definition is required"));
  }
  return sc;
}

}  // namespace

absl::StatusOr<std::shared_ptr<definition::Definition>> LoadDefinitionFile(
    const std::string& path, const std::vector<std::string>& proto_path) {
  absl::StatusOr<std::string> text = ReadText(path);
  if (!text.ok()) return text.status();
  auto proto = definition::ParseDefinitionText(*text, path);
  if (!proto.ok()) return proto.status();
  definition::ProtoSources sources;
  sources.search_path.push_back(Folder(path));
  for (const auto& p : proto_path) sources.search_path.push_back(p);
  return definition::Compile(*proto, sources, path);
}

absl::StatusOr<nlohmann::json> ParseInput(std::string_view text) {
  nlohmann::json input = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (input.is_discarded()) return absl::InvalidArgumentError("--input: not valid JSON");
  if (!input.is_object()) {
    return absl::InvalidArgumentError("--input: the saga input must be a JSON object");
  }
  return input;
}

absl::StatusOr<Scenario> LoadScenario(const std::string& path) {
  absl::StatusOr<std::string> text = ReadText(path);
  if (!text.ok()) return text.status();
  return ParseScenario(path, *text);
}

absl::StatusOr<ScenarioRun> RunScenario(const Scenario& scenario) {
  ScenarioRun run;
  auto def = LoadDefinitionFile(scenario.definition, scenario.proto_path);
  if (!def.ok()) return def.status();
  run.def = std::move(*def);
  auto script = BuildScript(*run.def, scenario.script);
  if (!script.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(scenario.path, ": ", script.status().message()));
  }
  run.options.input = scenario.input;
  run.options.script = std::move(*script);
  run.options.seed = scenario.seed;
  auto result = Simulate(*run.def, run.options);
  if (!result.ok()) return result.status();
  run.result = std::move(*result);
  return run;
}

std::vector<std::string> EventSummary(const definition::Definition& def, const Result& result) {
  std::vector<std::string> out;
  for (const TraceEvent& te : result.events) {
    std::string s(engine::EventTypeName(te.event.type));
    if (te.event.step >= 0) {
      absl::StrAppend(&s, " ", def.steps[static_cast<size_t>(te.event.step)].name);
    }
    out.push_back(std::move(s));
  }
  return out;
}

absl::StatusOr<std::string> RunCommand(const CommandArgs& args) {
  auto def = LoadDefinitionFile(args.file, args.proto_path);
  if (!def.ok()) return def.status();
  Options options;
  auto input = ParseInput(args.input);
  if (!input.ok()) return input.status();
  options.input = std::move(*input);
  options.saga_key = args.key;
  options.seed = args.seed;
  options.max_events = args.max_events;
  auto script = BuildScript(**def, args.script);
  if (!script.ok()) return script.status();
  options.script = std::move(*script);
  auto result = Simulate(**def, options);
  if (!result.ok()) return result.status();
  if (args.json) return TraceJson(**def, options, *result).dump(2) + "\n";
  return FormatTrace(**def, *result);
}

}  // namespace saga::sim
