#include "orchestrator/server/config.h"

#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"

namespace saga::server {
namespace {

constexpr const char* kVariables[] = {
    "SAGA_CONFIG",        "SAGA_LISTEN",        "SAGA_DATABASE_URL",   "SAGA_DATABASE_URL_FILE",
    "SAGA_DEFINITIONS",   "SAGA_PROTO_PATH",    "SAGA_OWNER_ID",       "SAGA_LEASE",
    "SAGA_POLL_INTERVAL", "SAGA_DRAIN_TIMEOUT", "SAGA_DB_POOL_SIZE",   "SAGA_COMMITTERS",
    "SAGA_WORKERS",       "SAGA_MAX_ACTIVE",    "SAGA_METRICS_LISTEN", "SAGA_LOG_FORMAT",
    "SAGA_LOG_LEVEL",     "SAGA_DEV",           "SAGA_DEV_DATA_DIR",   "SAGA_RETENTION",
    "SAGA_PURGE_INTERVAL"};

class ConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* v : kVariables) unsetenv(v);
    dir_ = std::filesystem::temp_directory_path() /
           absl::StrCat("sagad-config-test-", getpid(), "-",
                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override {
    for (const char* v : kVariables) unsetenv(v);
    std::filesystem::remove_all(dir_);
  }

  ParsedArgs Parse(std::vector<std::string> args) {
    args.insert(args.begin(), "sagad");
    std::vector<const char*> argv;
    for (const auto& a : args) argv.push_back(a.c_str());
    out_.str("");
    err_.str("");
    return ParseArgs(static_cast<int>(argv.size()), argv.data(), out_, err_);
  }

  std::string Write(const std::string& name, const std::string& text) {
    const std::string path = (dir_ / name).string();
    std::ofstream(path) << text;
    return path;
  }

  // The error printed: exactly one line.
  std::string Error() {
    const std::string e = err_.str();
    EXPECT_FALSE(e.empty());
    EXPECT_EQ(e.find('\n'), e.size() - 1) << "not one line: " << e;
    return e;
  }

  std::filesystem::path dir_;
  std::ostringstream out_;
  std::ostringstream err_;
};

TEST_F(ConfigTest, Defaults) {
  ParsedArgs p = Parse({});
  ASSERT_EQ(p.action, ParsedArgs::Action::kServe) << err_.str();
  const DaemonConfig& c = p.config;
  EXPECT_EQ(c.server.listen, "0.0.0.0:50051");
  EXPECT_EQ(c.server.metrics_listen, "0.0.0.0:9090");
  EXPECT_EQ(c.server.database_url, "");
  EXPECT_EQ(c.server.lease, absl::Seconds(10));
  EXPECT_EQ(c.server.renew_interval, absl::Seconds(10) / 3);
  EXPECT_EQ(c.server.poll_interval, absl::Seconds(1));
  EXPECT_EQ(c.server.drain_timeout, absl::Seconds(20));
  EXPECT_EQ(c.server.retention, absl::Hours(30 * 24));
  EXPECT_EQ(c.server.purge_interval, absl::Minutes(1));
  EXPECT_EQ(c.server.db_pool_size, 8);
  EXPECT_EQ(c.server.committers, 2);
  EXPECT_EQ(c.server.workers, 2);
  EXPECT_EQ(c.server.max_active, 20000);
  EXPECT_EQ(c.log_format, "auto");
  EXPECT_EQ(c.log_level, "info");
  EXPECT_FALSE(c.dev);
  EXPECT_EQ(c.dev_data_dir, ".sagad-dev");
  EXPECT_EQ(c.origin.at("lease"), "default");
}

TEST_F(ConfigTest, FlagBeatsEnvironmentBeatsFileBeatsDefault) {
  const std::string file = Write("sagad.yaml",
                                 "lease: 5s\n"
                                 "workers: 3\n"
                                 "proto_path: [p1, p2]\n"
                                 "log-level: debug\n");
  setenv("SAGA_LEASE", "7s", 1);
  setenv("SAGA_WORKERS", "4", 1);
  ParsedArgs p = Parse({"--config", file, "--lease", "9s"});
  ASSERT_EQ(p.action, ParsedArgs::Action::kServe) << err_.str();
  EXPECT_EQ(p.config.server.lease, absl::Seconds(9));
  EXPECT_EQ(p.config.origin.at("lease"), "flag");
  EXPECT_EQ(p.config.server.workers, 4);
  EXPECT_EQ(p.config.origin.at("workers"), "env SAGA_WORKERS");
  EXPECT_EQ(p.config.server.proto_path, (std::vector<std::string>{"p1", "p2"}));
  EXPECT_EQ(p.config.origin.at("proto-path"), "file " + file);
  EXPECT_EQ(p.config.log_level, "debug");
  EXPECT_EQ(p.config.server.poll_interval, absl::Seconds(1));  // default

  p = Parse({"--config", file});
  EXPECT_EQ(p.config.server.lease, absl::Seconds(7));
  unsetenv("SAGA_LEASE");
  p = Parse({"--config", file});
  EXPECT_EQ(p.config.server.lease, absl::Seconds(5));
  // SAGA_CONFIG names the file too.
  setenv("SAGA_CONFIG", file.c_str(), 1);
  p = Parse({});
  EXPECT_EQ(p.config.server.lease, absl::Seconds(5));
}

TEST_F(ConfigTest, ListsFromFlagsAndEnvironment) {
  setenv("SAGA_PROTO_PATH", "a:b::c", 1);
  ParsedArgs p = Parse({});
  EXPECT_EQ(p.config.server.proto_path, (std::vector<std::string>{"a", "b", "c"}));
  p = Parse({"--proto-path", "x", "--proto-path", "y:z"});
  EXPECT_EQ(p.config.server.proto_path, (std::vector<std::string>{"x", "y", "z"}));
}

TEST_F(ConfigTest, OnlyTheDefaultMetricsAddressIsBestEffort) {
  EXPECT_TRUE(Parse({}).config.server.metrics_optional);
  EXPECT_FALSE(Parse({"--metrics-listen", "127.0.0.1:9090"}).config.server.metrics_optional);
  setenv("SAGA_METRICS_LISTEN", "0.0.0.0:9090", 1);
  EXPECT_FALSE(Parse({}).config.server.metrics_optional);
}

TEST_F(ConfigTest, EmptyMetricsListenDisablesMetrics) {
  EXPECT_EQ(Parse({"--metrics-listen", ""}).config.server.metrics_listen, "");
  setenv("SAGA_METRICS_LISTEN", "", 1);
  EXPECT_EQ(Parse({}).config.server.metrics_listen, "");
  EXPECT_EQ(Parse({"--metrics-listen", "127.0.0.1:0"}).config.server.metrics_listen, "127.0.0.1:0");
}

TEST_F(ConfigTest, DatabaseUrlFromAFile) {
  const std::string secret = Write("db-url", "postgresql://app:s3cret@db/sagas\n");
  setenv("SAGA_DATABASE_URL_FILE", secret.c_str(), 1);
  ParsedArgs p = Parse({});
  ASSERT_EQ(p.action, ParsedArgs::Action::kServe) << err_.str();
  EXPECT_EQ(p.config.server.database_url, "postgresql://app:s3cret@db/sagas");
  // A flag beats the variable.
  p = Parse({"--database-url", "host=/tmp"});
  EXPECT_EQ(p.config.server.database_url, "host=/tmp");
  // Both forms at one level: an error.
  setenv("SAGA_DATABASE_URL", "host=/x", 1);
  p = Parse({});
  EXPECT_EQ(p.exit_code, 2);
  EXPECT_NE(Error().find("SAGA_DATABASE_URL"), std::string::npos);
  unsetenv("SAGA_DATABASE_URL");
  setenv("SAGA_DATABASE_URL_FILE", (dir_ / "missing").c_str(), 1);
  p = Parse({});
  EXPECT_EQ(p.exit_code, 2);
  EXPECT_NE(Error().find("cannot read"), std::string::npos);
}

TEST_F(ConfigTest, RetentionZeroKeepsEverySaga) {
  ParsedArgs p = Parse({"--retention", "0"});
  ASSERT_EQ(p.action, ParsedArgs::Action::kServe) << err_.str();
  EXPECT_EQ(p.config.server.retention, absl::ZeroDuration());
  setenv("SAGA_RETENTION", "2160h", 1);
  p = Parse({});
  EXPECT_EQ(p.config.server.retention, absl::Hours(90 * 24));
  unsetenv("SAGA_RETENTION");
}

TEST_F(ConfigTest, InvalidValuesExit2WithOnePreciseLine) {
  struct Case {
    std::vector<std::string> args;
    std::vector<std::pair<std::string, std::string>> env;
    std::string want;
  };
  const std::vector<Case> cases = {
      {{"--lease", "10x"}, {}, "sagad: --lease: '10x' is not a duration"},
      {{"--lease", "0s"}, {}, "sagad: --lease: '0s' is too short"},
      {{"--drain-timeout", "-1s"}, {}, "sagad: --drain-timeout: '-1s' must not be negative"},
      {{"--workers", "0"}, {}, "sagad: --workers: '0' is not a whole number in 1..256"},
      {{"--retention", "-1h"}, {}, "sagad: --retention: '-1h' must not be negative"},
      {{"--retention", "500ms"}, {}, "sagad: --retention: '500ms' is too short: at least 1s"},
      {{"--retention", "30d"}, {}, "sagad: --retention: '30d' is not a duration"},
      {{}, {{"SAGA_PURGE_INTERVAL", "0s"}}, "sagad: SAGA_PURGE_INTERVAL: '0s' is too short"},
      {{}, {{"SAGA_DB_POOL_SIZE", "many"}}, "sagad: SAGA_DB_POOL_SIZE: 'many' is not a whole"},
      {{}, {{"SAGA_LOG_FORMAT", "xml"}}, "sagad: SAGA_LOG_FORMAT: log format must be"},
      {{"--log-level", "loud"}, {}, "sagad: --log-level: log level must be"},
      {{"--metrics-listen", "9090"}, {}, "sagad: --metrics-listen: '9090' is not host:port"},
      {{"--listen", "localhost:99999"}, {}, "sagad: --listen: 'localhost:99999': the port"},
      {{}, {{"SAGA_DEV", "maybe"}}, "sagad: SAGA_DEV: 'maybe' is not true or false"},
      {{"--dev", "--database-url", "host=/tmp"}, {}, "sagad: --dev: runs a private PostgreSQL"},
      {{"--no-such-flag"}, {}, "sagad: "},
  };
  for (const Case& c : cases) {
    for (const auto& [k, v] : c.env) setenv(k.c_str(), v.c_str(), 1);
    ParsedArgs p = Parse(c.args);
    EXPECT_EQ(p.action, ParsedArgs::Action::kExit);
    EXPECT_EQ(p.exit_code, 2) << c.want;
    EXPECT_EQ(Error().rfind(c.want, 0), 0u) << "got: " << err_.str() << "want: " << c.want;
    for (const auto& [k, v] : c.env) unsetenv(k.c_str());
  }
}

TEST_F(ConfigTest, ConfigFileErrorsNameFileAndLine) {
  std::string file = Write("bad-key.yaml", "lease: 5s\nleese: 6s\n");
  ParsedArgs p = Parse({"--config", file});
  EXPECT_EQ(p.exit_code, 2);
  EXPECT_EQ(Error().rfind(absl::StrCat("sagad: ", file, ":2: unknown setting 'leese'"), 0), 0u)
      << err_.str();
  file = Write("bad-value.yaml", "workers: 3\nlease: soon\n");
  p = Parse({"--config", file});
  EXPECT_EQ(Error().rfind(absl::StrCat("sagad: ", file, ":2: lease: 'soon' is not a duration"), 0),
            0u)
      << err_.str();
  file = Write("bad-yaml.yaml", "lease: [5s\n");
  p = Parse({"--config", file});
  EXPECT_EQ(p.exit_code, 2);
  EXPECT_NE(Error().find("not valid YAML"), std::string::npos);
  p = Parse({"--config", (dir_ / "nope.yaml").string()});
  EXPECT_EQ(p.exit_code, 2);
  EXPECT_NE(Error().find("cannot read config file"), std::string::npos);
  file = Write("list.yaml", "lease: [5s, 6s]\n");
  p = Parse({"--config", file});
  EXPECT_NE(Error().find("takes one value"), std::string::npos);
}

TEST_F(ConfigTest, HelpDocumentsEverySetting) {
  ParsedArgs p = Parse({"--help"});
  EXPECT_EQ(p.action, ParsedArgs::Action::kExit);
  EXPECT_EQ(p.exit_code, 0);
  const std::string help = out_.str();
  for (const char* v : kVariables) EXPECT_NE(help.find(v), std::string::npos) << v;
  for (const char* flag : {"--listen",
                           "--database-url",
                           "--database-url-file",
                           "--definitions",
                           "--proto-path",
                           "--owner-id",
                           "--lease",
                           "--poll-interval",
                           "--drain-timeout",
                           "--retention",
                           "--purge-interval",
                           "--db-pool-size",
                           "--committers",
                           "--workers",
                           "--max-active",
                           "--metrics-listen",
                           "--log-format",
                           "--log-level",
                           "--dev",
                           "--dev-data-dir",
                           "--config",
                           "config print"}) {
    EXPECT_NE(help.find(flag), std::string::npos) << flag;
  }
  EXPECT_NE(help.find("[default: 0.0.0.0:9090]"), std::string::npos) << help;
  EXPECT_NE(help.find("[default: 10s]"), std::string::npos) << help;
}

TEST_F(ConfigTest, PrintRedactsAndRoundTrips) {
  setenv("SAGA_DATABASE_URL", "postgresql://app:s3cret@db:5432/sagas?sslmode=require", 1);
  ParsedArgs p = Parse({"config", "print", "--lease", "4s", "--proto-path", "a:b"});
  ASSERT_EQ(p.action, ParsedArgs::Action::kPrintConfig) << err_.str();
  const std::string text = FormatConfig(p.config);
  EXPECT_EQ(text.find("s3cret"), std::string::npos) << text;
  EXPECT_NE(text.find("postgresql://app:***@db:5432/sagas?sslmode=require"), std::string::npos)
      << text;
  EXPECT_NE(text.find("lease: \"4s\""), std::string::npos) << text;
  EXPECT_NE(text.find("# flag"), std::string::npos) << text;
  EXPECT_NE(text.find("# env SAGA_DATABASE_URL"), std::string::npos) << text;
  // The output is a config file giving the same settings (except the redacted URL).
  unsetenv("SAGA_DATABASE_URL");
  std::string file_text;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (!absl::StartsWith(line, "database-url:")) absl::StrAppend(&file_text, line, "\n");
  }
  const std::string file = Write("printed.yaml", file_text);
  ParsedArgs q = Parse({"--config", file});
  ASSERT_EQ(q.action, ParsedArgs::Action::kServe) << err_.str();
  EXPECT_EQ(q.config.server.lease, absl::Seconds(4));
  EXPECT_EQ(q.config.server.proto_path, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(q.config.server.metrics_listen, "0.0.0.0:9090");
}

TEST_F(ConfigTest, RedactConnectionString) {
  EXPECT_EQ(RedactConnectionString("postgresql://user:pw@host/db"),
            "postgresql://user:***@host/db");
  EXPECT_EQ(RedactConnectionString("postgres://user@host:5432/db"), "postgres://user@host:5432/db");
  EXPECT_EQ(RedactConnectionString("postgresql://u:p%40ss@h1,h2/db?password=x&sslmode=off"),
            "postgresql://u:***@h1,h2/db?password=***&sslmode=off");
  EXPECT_EQ(RedactConnectionString("postgresql://h?user=u&password=secret"),
            "postgresql://h?user=u&password=***");
  EXPECT_EQ(RedactConnectionString("host=db user=app password=secret dbname=x"),
            "host=db user=app password=*** dbname=x");
  EXPECT_EQ(RedactConnectionString("host=db password = 'it\\'s a secret' port=5"),
            "host=db password=*** port=5");
  EXPECT_EQ(RedactConnectionString("host='/tmp/x y' password='a b'"),
            "host='/tmp/x y' password=***");
  EXPECT_EQ(RedactConnectionString(""), "");
}

}  // namespace
}  // namespace saga::server
