#include "orchestrator/server/config.h"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
#include <ostream>
#include <set>
#include <sstream>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/time.h"
#include "nlohmann/json.hpp"
#include "orchestrator/common/logging.h"
#include "orchestrator/common/status_macros.h"
#include "orchestrator/server/ops_metrics.h"
#include "yaml-cpp/yaml.h"

namespace saga::server {
namespace {

enum class Kind { kScalar, kList, kBool };

// One setting: a flag --<name>, a variable <env>, a config file key <name>.
struct Setting {
  std::string name;
  std::string env;
  std::string group;
  std::string help;
  std::string default_text;  // for --help
  Kind kind = Kind::kScalar;
  // The database URL and its file form are resolved together, after the others.
  bool special = false;
  // Parses `values` into the config; the error says what is wrong with the value.
  std::function<absl::Status(const std::vector<std::string>& values, DaemonConfig* c)> apply;
  // The effective value, as YAML.
  std::function<std::string(const DaemonConfig& c)> show;
};

std::string Quote(std::string_view s) { return nlohmann::json(std::string(s)).dump(); }

std::string QuoteList(const std::vector<std::string>& list) {
  std::vector<std::string> quoted;
  quoted.reserve(list.size());
  for (const auto& s : list) quoted.push_back(Quote(s));
  return absl::StrCat("[", absl::StrJoin(quoted, ", "), "]");
}

absl::Status ParseDurationValue(const std::string& text, absl::Duration min, absl::Duration max,
                                absl::Duration* out) {
  absl::Duration d;
  if (!absl::ParseDuration(text, &d) || d == absl::InfiniteDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", text, "' is not a duration (write e.g. 500ms, 10s or 1m)"));
  }
  if (d < min) {
    return absl::InvalidArgumentError(
        min == absl::ZeroDuration()
            ? absl::StrCat("'", text, "' must not be negative")
            : absl::StrCat("'", text, "' is too short: at least ", absl::FormatDuration(min)));
  }
  if (d > max) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", text, "' is too long: at most ", absl::FormatDuration(max)));
  }
  *out = d;
  return absl::OkStatus();
}

absl::Status ParseIntValue(const std::string& text, int lo, int hi, int* out) {
  int v = 0;
  if (!absl::SimpleAtoi(text, &v) || v < lo || v > hi) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", text, "' is not a whole number in ", lo, "..", hi));
  }
  *out = v;
  return absl::OkStatus();
}

absl::Status ParseBoolValue(const std::string& text, bool* out) {
  const std::string t = absl::AsciiStrToLower(absl::StripAsciiWhitespace(text));
  if (t == "true" || t == "1" || t == "yes" || t == "on") {
    *out = true;
  } else if (t == "false" || t == "0" || t == "no" || t == "off") {
    *out = false;
  } else {
    return absl::InvalidArgumentError(absl::StrCat("'", text, "' is not true or false"));
  }
  return absl::OkStatus();
}

absl::Status ValidateListenAddress(const std::string& text, bool allow_empty) {
  if (text.empty()) {
    if (allow_empty) return absl::OkStatus();
    return absl::InvalidArgumentError("an address is required (host:port)");
  }
  if (absl::StartsWith(text, "unix:")) return absl::OkStatus();
  std::string host;
  int port = 0;
  return SplitHostPort(text, &host, &port);
}

// The single value of a scalar setting (the last one given).
const std::string& Last(const std::vector<std::string>& values) { return values.back(); }

std::vector<Setting> MakeSettings() {
  const absl::Duration kHour = absl::Hours(1);
  std::vector<Setting> s;
  s.push_back({.name = "listen",
               .env = "SAGA_LISTEN",
               .group = "Server",
               .help = "gRPC listen address (host:port, [v6]:port or unix:PATH)",
               .default_text = "0.0.0.0:50051",
               .apply =
                   [](const std::vector<std::string>& v, DaemonConfig* c) {
                     if (absl::Status st = ValidateListenAddress(Last(v), false); !st.ok()) {
                       return st;
                     }
                     c->server.listen = Last(v);
                     return absl::OkStatus();
                   },
               .show = [](const DaemonConfig& c) { return Quote(c.server.listen); }});
  s.push_back({.name = "database-url",
               .env = "SAGA_DATABASE_URL",
               .group = "Database",
               .help = "PostgreSQL connection string (URI or key=value)",
               .default_text = "empty: libpq's PGHOST, PGUSER, ... variables",
               .special = true,
               .show = [](const DaemonConfig& c) {
                 return Quote(RedactConnectionString(c.server.database_url));
               }});
  s.push_back({.name = "database-url-file",
               .env = "SAGA_DATABASE_URL_FILE",
               .group = "Database",
               .help = "file holding the connection string (for secrets); same level as "
                       "--database-url, give one of them",
               .default_text = "none",
               .special = true});
  s.push_back({.name = "definitions",
               .env = "SAGA_DEFINITIONS",
               .group = "Server",
               .help = "folder of workflow files (*.yaml, *.yml, *.json) registered at startup",
               .default_text = "none",
               .apply =
                   [](const std::vector<std::string>& v, DaemonConfig* c) {
                     c->server.definitions_dir = Last(v);
                     return absl::OkStatus();
                   },
               .show = [](const DaemonConfig& c) { return Quote(c.server.definitions_dir); }});
  s.push_back({.name = "proto-path",
               .env = "SAGA_PROTO_PATH",
               .group = "Server",
               .help = "folders searched for participants' .proto files (repeatable; the "
                       "variable separates them with ':')",
               .default_text = "none",
               .kind = Kind::kList,
               .apply =
                   [](const std::vector<std::string>& v, DaemonConfig* c) {
                     c->server.proto_path = v;
                     return absl::OkStatus();
                   },
               .show = [](const DaemonConfig& c) { return QuoteList(c.server.proto_path); }});
  s.push_back({.name = "owner-id",
               .env = "SAGA_OWNER_ID",
               .group = "Server",
               .help = "replica identity written as the owner of its sagas",
               .default_text = "<host>-<pid>-<random>",
               .apply =
                   [](const std::vector<std::string>& v, DaemonConfig* c) {
                     if (Last(v).size() > 200) {
                       return absl::InvalidArgumentError("at most 200 bytes");
                     }
                     c->server.owner_id = Last(v);
                     return absl::OkStatus();
                   },
               .show = [](const DaemonConfig& c) { return Quote(c.server.owner_id); }});
  // A duration in [lo, hi], in the Server group.
  auto duration_setting = [](std::string name, std::string env, std::string help, std::string def,
                             absl::Duration lo, absl::Duration hi, absl::Duration Config::*field) {
    return Setting{.name = name,
                   .env = env,
                   .group = "Server",
                   .help = help,
                   .default_text = def,
                   .apply =
                       [lo, hi, field](const std::vector<std::string>& v, DaemonConfig* c) {
                         return ParseDurationValue(Last(v), lo, hi, &(c->server.*field));
                       },
                   .show =
                       [field](const DaemonConfig& c) {
                         return Quote(absl::FormatDuration(c.server.*field));
                       }};
  };
  s.push_back(
      duration_setting("lease", "SAGA_LEASE",
                       "how long a replica owns a saga without renewing (renewed every third)",
                       "10s", absl::Milliseconds(100), kHour, &Config::lease));
  s.push_back(duration_setting("poll-interval", "SAGA_POLL_INTERVAL",
                               "how often due sagas are looked for", "1s", absl::Milliseconds(10),
                               kHour, &Config::poll_interval));
  s.push_back(duration_setting("drain-timeout", "SAGA_DRAIN_TIMEOUT",
                               "how long SIGTERM waits for calls in flight before exiting", "20s",
                               absl::ZeroDuration(), kHour, &Config::drain_timeout));
  s.push_back(
      {.name = "retention",
       .env = "SAGA_RETENTION",
       .group = "Server",
       .help = "how long sagas that ended COMPLETED or COMPENSATED are kept (with "
               "their events and idempotency keys) before they are deleted; FAILED "
               "sagas are kept; 0 keeps every saga",
       .default_text = "720h (30 days)",
       .apply =
           [](const std::vector<std::string>& v, DaemonConfig* c) {
             absl::Duration d;
             SAGA_RETURN_IF_ERROR(ParseDurationValue(Last(v), absl::ZeroDuration(),
                                                     absl::Hours(24 * 365 * 100), &d));
             if (d > absl::ZeroDuration() && d < absl::Seconds(1)) {
               return absl::InvalidArgumentError(
                   absl::StrCat("'", Last(v), "' is too short: at least 1s (0 keeps every saga)"));
             }
             c->server.retention = d;
             return absl::OkStatus();
           },
       .show =
           [](const DaemonConfig& c) { return Quote(absl::FormatDuration(c.server.retention)); }});
  s.push_back(duration_setting("purge-interval", "SAGA_PURGE_INTERVAL",
                               "how often sagas past the retention are looked for and deleted",
                               "1m", absl::Milliseconds(100), kHour, &Config::purge_interval));
  auto int_setting = [](std::string name, std::string env, std::string help, int def, int lo,
                        int hi, int Config::*field) {
    return Setting{
        .name = name,
        .env = env,
        .group = "Tuning",
        .help = help,
        .default_text = absl::StrCat(def),
        .apply =
            [lo, hi, field](const std::vector<std::string>& v, DaemonConfig* c) {
              return ParseIntValue(Last(v), lo, hi, &(c->server.*field));
            },
        .show = [field](const DaemonConfig& c) { return absl::StrCat(c.server.*field); }};
  };
  s.push_back(int_setting("db-pool-size", "SAGA_DB_POOL_SIZE",
                          "database connections at most (committers included)", 8, 1, 1000,
                          &Config::db_pool_size));
  s.push_back(int_setting("committers", "SAGA_COMMITTERS", "database connections that group-commit",
                          2, 1, 64, &Config::committers));
  s.push_back(int_setting("workers", "SAGA_WORKERS", "threads running saga decisions", 2, 1, 256,
                          &Config::workers));
  s.push_back(int_setting("rpc-threads", "SAGA_RPC_THREADS",
                          "threads handling gRPC events (API calls, participants' replies)", 1, 1,
                          64, &Config::rpc_threads));
  s.push_back(int_setting("max-active", "SAGA_MAX_ACTIVE", "sagas held in memory at most", 20000, 1,
                          10000000, &Config::max_active));
  s.push_back({.name = "metrics-listen",
               .env = "SAGA_METRICS_LISTEN",
               .group = "Observability",
               .help = "Prometheus metrics HTTP address, served at /metrics; empty disables",
               .default_text = "0.0.0.0:9090",
               .apply =
                   [](const std::vector<std::string>& v, DaemonConfig* c) {
                     if (absl::StartsWith(Last(v), "unix:")) {
                       return absl::InvalidArgumentError("must be host:port");
                     }
                     if (absl::Status st = ValidateListenAddress(Last(v), true); !st.ok()) {
                       return st;
                     }
                     c->server.metrics_listen = Last(v);
                     return absl::OkStatus();
                   },
               .show = [](const DaemonConfig& c) { return Quote(c.server.metrics_listen); }});
  s.push_back({.name = "log-format",
               .env = "SAGA_LOG_FORMAT",
               .group = "Observability",
               .help = "json (one JSON object per line), text, or auto: text on a terminal, "
                       "else json",
               .default_text = "auto",
               .apply =
                   [](const std::vector<std::string>& v, DaemonConfig* c) {
                     absl::StatusOr<common::LogFormat> f = common::ParseLogFormat(Last(v));
                     if (!f.ok()) return absl::InvalidArgumentError(f.status().message());
                     c->log_format = Last(v);
                     return absl::OkStatus();
                   },
               .show = [](const DaemonConfig& c) { return Quote(c.log_format); }});
  s.push_back({.name = "log-level",
               .env = "SAGA_LOG_LEVEL",
               .group = "Observability",
               .help = "trace, debug, info, warn, error, critical or off",
               .default_text = "info",
               .apply =
                   [](const std::vector<std::string>& v, DaemonConfig* c) {
                     auto level = common::ParseLogLevel(Last(v));
                     if (!level.ok()) return absl::InvalidArgumentError(level.status().message());
                     c->log_level = absl::AsciiStrToLower(Last(v));
                     return absl::OkStatus();
                   },
               .show = [](const DaemonConfig& c) { return Quote(c.log_level); }});
  s.push_back({.name = "dev",
               .env = "SAGA_DEV",
               .group = "Dev mode",
               .help = "development mode: run a private PostgreSQL (initdb + pg_ctl, newest "
                       "/usr/lib/postgresql/<version>/bin) in --dev-data-dir, on a unix socket "
                       "only, kept across restarts, stopped on exit. Only with this flag",
               .default_text = "false",
               .kind = Kind::kBool,
               .apply = [](const std::vector<std::string>& v,
                           DaemonConfig* c) { return ParseBoolValue(Last(v), &c->dev); },
               .show = [](const DaemonConfig& c) { return c.dev ? "true" : "false"; }});
  s.push_back({.name = "dev-data-dir",
               .env = "SAGA_DEV_DATA_DIR",
               .group = "Dev mode",
               .help = "where --dev keeps its PostgreSQL (data, socket, log)",
               .default_text = ".sagad-dev",
               .apply =
                   [](const std::vector<std::string>& v, DaemonConfig* c) {
                     if (Last(v).empty()) return absl::InvalidArgumentError("must not be empty");
                     c->dev_data_dir = Last(v);
                     return absl::OkStatus();
                   },
               .show = [](const DaemonConfig& c) { return Quote(c.dev_data_dir); }});
  return s;
}

struct FileValue {
  std::vector<std::string> values;
  bool is_list = false;
  int line = 0;
};

absl::Status LoadConfigFile(const std::string& path, const std::set<std::string>& known,
                            std::map<std::string, FileValue>* out) {
  {
    std::ifstream probe(path);
    if (!probe) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot read config file '", path, "': ", std::strerror(errno)));
    }
  }
  try {
    const YAML::Node root = YAML::LoadFile(path);
    if (root.IsNull()) return absl::OkStatus();
    if (!root.IsMap()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": a config file is a YAML map of setting: value"));
    }
    for (const auto& item : root) {
      const int line = item.first.Mark().line + 1;
      std::string key = item.first.as<std::string>();
      std::replace(key.begin(), key.end(), '_', '-');
      if (!known.contains(key)) {
        return absl::InvalidArgumentError(absl::StrCat(
            path, ":", line, ": unknown setting '", key,
            "' (the keys are the flag names without dashes, e.g. lease, database-url)"));
      }
      FileValue fv;
      fv.line = line;
      const YAML::Node& v = item.second;
      if (v.IsNull()) {
        fv.values.push_back("");
      } else if (v.IsScalar()) {
        fv.values.push_back(v.Scalar());
      } else if (v.IsSequence()) {
        fv.is_list = true;
        for (const auto& e : v) {
          if (!e.IsScalar()) {
            return absl::InvalidArgumentError(
                absl::StrCat(path, ":", e.Mark().line + 1, ": ", key, ": list items are values"));
          }
          fv.values.push_back(e.Scalar());
        }
      } else {
        return absl::InvalidArgumentError(
            absl::StrCat(path, ":", line, ": ", key, ": must be a value or a list of values"));
      }
      (*out)[key] = std::move(fv);
    }
  } catch (const YAML::ParserException& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ":", e.mark.line + 1, ": not valid YAML: ", e.msg));
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", e.what()));
  }
  return absl::OkStatus();
}

std::vector<std::string> SplitPathList(absl::string_view text) {
  std::vector<std::string> out;
  for (absl::string_view part : absl::StrSplit(text, ':', absl::SkipEmpty())) {
    out.emplace_back(part);
  }
  return out;
}

absl::StatusOr<std::string> ReadSecretFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot read '", path, "': ", std::strerror(errno)));
  }
  std::stringstream ss;
  ss << in.rdbuf();
  return std::string(absl::StripTrailingAsciiWhitespace(ss.str()));
}

constexpr char kFooter[] =
    R"(Precedence: flags > SAGA_* environment variables > --config file > defaults.
Config file: YAML; keys are the flag names without the dashes, e.g.
    lease: 10s
    proto-path: [examples/participants/proto]
Secrets: --database-url-file / SAGA_DATABASE_URL_FILE read the URL from a file.
Commands:
  sagad config print   print the effective configuration (password redacted) and exit
Signals: SIGTERM/SIGINT drain (health NOT_SERVING, calls in flight finish up to
--drain-timeout, leases released) and exit 0; a second signal exits at once (code 1).)";

}  // namespace

ParsedArgs ParseArgs(int argc, const char* const* argv, std::ostream& out, std::ostream& err) {
  ParsedArgs result;
  DaemonConfig& cfg = result.config;
  cfg.server.metrics_listen = "0.0.0.0:9090";  // the daemon serves metrics by default
  std::vector<Setting> settings = MakeSettings();

  CLI::App app{
      "sagad: the saga orchestrator daemon. Runs sagas across gRPC participant "
      "services, recording every transition in PostgreSQL.",
      "sagad"};
  app.fallthrough();
  app.footer(kFooter);
  app.set_version_flag("--version", std::string(Version()));
  std::string config_file;
  CLI::Option* config_opt =
      app.add_option("--config", config_file,
                     "YAML config file (keys = flag names) [default: none] [env: SAGA_CONFIG]")
          ->type_name("FILE")
          ->group("Server");
  // Raw values per setting; CLI11 only parses flags (the environment and the file are layered
  // here, so that a variable beats the file).
  std::vector<std::string> scalar(settings.size());
  std::vector<std::vector<std::string>> lists(settings.size());
  auto bools = std::make_unique<bool[]>(settings.size());
  std::vector<CLI::Option*> options(settings.size(), nullptr);
  for (size_t i = 0; i < settings.size(); ++i) {
    const Setting& s = settings[i];
    const std::string help =
        absl::StrCat(s.help, " [default: ", s.default_text, "] [env: ", s.env, "]");
    const std::string flag = "--" + s.name;
    if (s.kind == Kind::kList) {
      options[i] = app.add_option(flag, lists[i], help)
                       ->type_name("DIR")
                       ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll)
                       ->delimiter(':');
    } else if (s.kind == Kind::kBool) {
      options[i] = app.add_flag(flag, bools[i], help);
    } else {
      static const std::map<std::string, std::string> kTypeNames = {{"listen", "ADDR"},
                                                                    {"database-url", "URL"},
                                                                    {"database-url-file", "FILE"},
                                                                    {"definitions", "DIR"},
                                                                    {"owner-id", "ID"},
                                                                    {"lease", "DURATION"},
                                                                    {"poll-interval", "DURATION"},
                                                                    {"drain-timeout", "DURATION"},
                                                                    {"retention", "DURATION"},
                                                                    {"purge-interval", "DURATION"},
                                                                    {"metrics-listen", "ADDR"},
                                                                    {"log-format", "FORMAT"},
                                                                    {"log-level", "LEVEL"},
                                                                    {"dev-data-dir", "DIR"}};
      auto type = kTypeNames.find(s.name);
      options[i] = app.add_option(flag, scalar[i], help)
                       ->type_name(type != kTypeNames.end() ? type->second : "N")
                       ->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
    }
    options[i]->group(s.group);
  }
  CLI::App* config_cmd = app.add_subcommand("config", "inspect the configuration");
  CLI::App* print_cmd = config_cmd->add_subcommand(
      "print", "print the effective configuration (YAML, password redacted) and exit");
  config_cmd->require_subcommand(1);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) {  // --help, --version
      app.exit(e, out, err);
      result.exit_code = 0;
      return result;
    }
    err << "sagad: " << e.what() << " (see sagad --help)\n";
    result.exit_code = 2;
    return result;
  }
  auto fail = [&](const std::string& where, absl::string_view why) {
    err << "sagad: " << where << ": " << why << "\n";
    result.action = ParsedArgs::Action::kExit;
    result.exit_code = 2;
    return result;
  };

  // The config file.
  if (config_opt->count() == 0) {
    if (const char* env = std::getenv("SAGA_CONFIG"); env != nullptr) config_file = env;
  }
  cfg.config_file = config_file;
  std::map<std::string, FileValue> file;
  if (!config_file.empty()) {
    std::set<std::string> known;
    for (const auto& s : settings) known.insert(s.name);
    if (absl::Status st = LoadConfigFile(config_file, known, &file); !st.ok()) {
      err << "sagad: " << st.message() << "\n";
      result.exit_code = 2;
      return result;
    }
  }

  // Resolves one setting: its values, a label naming where they came from, and the origin.
  struct Resolved {
    bool found = false;
    std::vector<std::string> values;
    std::string where;
    std::string origin;
  };
  auto resolve = [&](size_t i) {
    const Setting& s = settings[i];
    Resolved r;
    if (options[i]->count() > 0) {
      r.found = true;
      r.where = "--" + s.name;
      r.origin = "flag";
      if (s.kind == Kind::kList) {
        r.values = lists[i];
      } else if (s.kind == Kind::kBool) {
        r.values = {bools[i] ? "true" : "false"};
      } else {
        r.values = {scalar[i]};
      }
    } else if (const char* env = std::getenv(s.env.c_str()); env != nullptr) {
      r.found = true;
      r.where = s.env;
      r.origin = "env " + s.env;
      r.values = s.kind == Kind::kList ? SplitPathList(env) : std::vector<std::string>{env};
    } else if (auto it = file.find(s.name); it != file.end()) {
      r.found = true;
      r.where = absl::StrCat(config_file, ":", it->second.line, ": ", s.name);
      r.origin = "file " + config_file;
      if (s.kind == Kind::kList) {
        for (const auto& v : it->second.values) {
          for (auto& part : SplitPathList(v)) r.values.push_back(std::move(part));
        }
      } else {
        r.values = it->second.values;
        if (it->second.is_list || r.values.size() != 1) r.values.clear();
      }
    }
    return r;
  };

  for (size_t i = 0; i < settings.size(); ++i) {
    const Setting& s = settings[i];
    if (s.special) continue;
    Resolved r = resolve(i);
    cfg.origin[s.name] = r.found ? r.origin : "default";
    if (!r.found) continue;
    if (s.kind != Kind::kList && r.values.empty()) {
      return fail(r.where, "takes one value, not a list");
    }
    if (s.kind == Kind::kList && r.values.empty()) {
      r.values.clear();  // an empty list is allowed
    }
    if (absl::Status st = s.apply(r.values, &cfg); !st.ok()) return fail(r.where, st.message());
  }

  // The database URL: at each level, the URL or its file (not both).
  {
    size_t url_i = 0, file_i = 0;
    for (size_t i = 0; i < settings.size(); ++i) {
      if (settings[i].name == "database-url") url_i = i;
      if (settings[i].name == "database-url-file") file_i = i;
    }
    // Levels: 0 flag, 1 env, 2 file.
    auto level_of = [&](size_t i, Resolved* r) {
      *r = resolve(i);
      if (!r->found) return 3;
      if (r->origin == "flag") return 0;
      if (absl::StartsWith(r->origin, "env")) return 1;
      return 2;
    };
    Resolved url, url_file;
    const int url_level = level_of(url_i, &url);
    const int file_level = level_of(file_i, &url_file);
    cfg.origin["database-url"] = "default";
    if (url_level < 3 && url_level == file_level) {
      return fail(url.where, absl::StrCat("also given as ", url_file.where, "; give one of them"));
    }
    if (url_level < file_level) {
      if (url.values.size() != 1) return fail(url.where, "takes one value, not a list");
      cfg.server.database_url = url.values[0];
      cfg.origin["database-url"] = url.origin;
    } else if (file_level < 3) {
      if (url_file.values.size() != 1) return fail(url_file.where, "takes one value, not a list");
      absl::StatusOr<std::string> text = ReadSecretFile(url_file.values[0]);
      if (!text.ok()) return fail(url_file.where, text.status().message());
      cfg.server.database_url = *text;
      cfg.origin["database-url"] =
          absl::StrCat(url_file.origin, " via ", url_file.where, " (", url_file.values[0], ")");
    }
  }

  if (cfg.dev && !cfg.server.database_url.empty()) {
    return fail("--dev", absl::StrCat("runs a private PostgreSQL, but a database URL is also "
                                      "set (",
                                      cfg.origin["database-url"], "); remove one of them"));
  }
  cfg.server.renew_interval = cfg.server.lease / 3;
  // The default metrics address is best effort (another sagad on this host may hold it); one
  // that was asked for must bind.
  cfg.server.metrics_optional = cfg.origin["metrics-listen"] == "default";
  result.action =
      print_cmd->parsed() ? ParsedArgs::Action::kPrintConfig : ParsedArgs::Action::kServe;
  result.exit_code = 0;
  return result;
}

std::string FormatConfig(const DaemonConfig& config) {
  std::string out =
      "# sagad effective configuration (flags > SAGA_* environment > config file > defaults)\n";
  if (!config.config_file.empty()) {
    absl::StrAppend(&out, "# config file: ", config.config_file, "\n");
  }
  for (const Setting& s : MakeSettings()) {
    if (!s.show) continue;
    std::string line = absl::StrCat(s.name, ": ", s.show(config));
    std::string origin = "default";
    if (auto it = config.origin.find(s.name); it != config.origin.end()) origin = it->second;
    if (s.name == "database-url" && config.dev) origin = "--dev: a private PostgreSQL";
    if (s.name == "owner-id" && config.server.owner_id.empty()) origin += ": <host>-<pid>-<random>";
    if (line.size() < 44) line.resize(44, ' ');
    absl::StrAppend(&out, line, "  # ", origin, "\n");
  }
  return out;
}

std::string RedactConnectionString(std::string_view conninfo) {
  const absl::string_view s(conninfo.data(), conninfo.size());
  const bool uri = absl::StartsWith(s, "postgresql://") || absl::StartsWith(s, "postgres://");
  if (uri) {
    const size_t scheme_end = s.find("://") + 3;
    size_t auth_end = s.find_first_of("/?", scheme_end);
    if (auth_end == absl::string_view::npos) auth_end = s.size();
    std::string out(s.substr(0, scheme_end));
    const absl::string_view auth = s.substr(scheme_end, auth_end - scheme_end);
    const size_t at = auth.rfind('@');
    if (at != absl::string_view::npos) {
      const absl::string_view userinfo = auth.substr(0, at);
      const size_t colon = userinfo.find(':');
      if (colon != absl::string_view::npos) {
        absl::StrAppend(&out, userinfo.substr(0, colon), ":***");
      } else {
        absl::StrAppend(&out, userinfo);
      }
      absl::StrAppend(&out, auth.substr(at));
    } else {
      absl::StrAppend(&out, auth);
    }
    const absl::string_view rest = s.substr(auth_end);
    const size_t q = rest.find('?');
    if (q == absl::string_view::npos) {
      absl::StrAppend(&out, rest);
      return out;
    }
    absl::StrAppend(&out, rest.substr(0, q + 1));
    std::vector<std::string> params;
    for (absl::string_view p : absl::StrSplit(rest.substr(q + 1), '&')) {
      const absl::string_view key = p.substr(0, p.find('='));
      params.push_back(key == "password" ? "password=***" : std::string(p));
    }
    absl::StrAppend(&out, absl::StrJoin(params, "&"));
    return out;
  }
  // key=value pairs; values may be 'quoted' with \-escapes.
  std::string out;
  size_t i = 0;
  const size_t n = s.size();
  auto space = [&](size_t j) { return absl::ascii_isspace(static_cast<unsigned char>(s[j])); };
  while (i < n) {
    if (space(i)) {
      out += s[i++];
      continue;
    }
    const size_t start = i;
    while (i < n && !space(i) && s[i] != '=') ++i;
    const absl::string_view key = s.substr(start, i - start);
    while (i < n && space(i)) ++i;
    if (i >= n || s[i] != '=') {
      absl::StrAppend(&out, s.substr(start, i - start));
      continue;
    }
    ++i;
    while (i < n && space(i)) ++i;
    if (i < n && s[i] == '\'') {
      ++i;
      while (i < n && s[i] != '\'') {
        if (s[i] == '\\' && i + 1 < n) ++i;
        ++i;
      }
      if (i < n) ++i;
    } else {
      while (i < n && !space(i)) {
        if (s[i] == '\\' && i + 1 < n) ++i;
        ++i;
      }
    }
    if (key == "password") {
      out += "password=***";
    } else {
      absl::StrAppend(&out, s.substr(start, i - start));
    }
  }
  return out;
}

}  // namespace saga::server
