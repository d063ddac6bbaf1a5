// sagad's configuration: command-line flags, SAGA_* environment variables, an optional YAML
// config file, and defaults, in that order of precedence (a flag beats its variable, which
// beats the file, which beats the default). Secrets can come from files: --database-url-file /
// SAGA_DATABASE_URL_FILE / `database-url-file:` (the URL and its file form are one setting; at
// the same level giving both is an error).
//
// Config file: YAML, a map whose keys are the flag names without the leading dashes
// (`lease: 10s`, `proto-path: [protos, more]`, `dev: true`); `_` may stand for `-`. Unknown keys
// are errors. `sagad config print` prints the effective configuration in the same form (with
// the database password redacted), so its output can be used as a config file.
//
// Thread-safety: ParseArgs reads the process environment; call it from main() only.
// Errors: ParseArgs prints one line "sagad: <what>: <why>" to `err` and returns exit code 2.
#pragma once

#include <iosfwd>
#include <map>
#include <string>
#include <string_view>

#include "orchestrator/server/server.h"

namespace saga::server {

struct DaemonConfig {
  Config server;
  std::string log_format = "auto";  // auto | json | text
  std::string log_level = "info";   // trace | debug | info | warn | error | critical | off
  bool dev = false;
  std::string dev_data_dir = ".sagad-dev";
  std::string config_file;
  // Where each setting came from, by name: "default", "flag", "env SAGA_X", "file PATH".
  std::map<std::string, std::string> origin;
};

struct ParsedArgs {
  enum class Action {
    kServe,        // run the daemon with `config`
    kPrintConfig,  // `sagad config print`
    kExit,         // --help, --version or an error: exit with `exit_code`
  };
  Action action = Action::kExit;
  int exit_code = 0;
  DaemonConfig config;
};

// Parses argv, the environment and the config file. --help and --version print to `out`;
// errors print one line to `err` (exit code 2).
ParsedArgs ParseArgs(int argc, const char* const* argv, std::ostream& out, std::ostream& err);

// The effective configuration as YAML (a valid config file), each line commented with its
// origin; the database URL's password is redacted.
std::string FormatConfig(const DaemonConfig& config);

// A libpq connection string with its password replaced by ***: the URI form
// ("postgresql://user:***@host/db", and a `password=` query parameter) and the key=value form
// ("password=***"). Everything else is kept.
std::string RedactConnectionString(std::string_view conninfo);

}  // namespace saga::server
