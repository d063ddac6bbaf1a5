// The sagad binary's command line: --help, --version, `config print` with redaction, exit code 2
// with one line for invalid settings, exit 1 when the metrics port is taken. No database.
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/ops/ops_util.h"

namespace saga::testing {
namespace {

bool OneLine(const std::string& s) { return !s.empty() && s.find('\n') == s.size() - 1; }

TEST(SagadCliTest, HelpListsEverySettingWithItsDefaultAndVariable) {
  RunResult r = RunSagad({"--help"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  for (const char* s :
       {"--config", "SAGA_CONFIG", "--metrics-listen", "SAGA_METRICS_LISTEN",
        "[default: 0.0.0.0:9090]", "--log-format", "SAGA_LOG_FORMAT", "--log-level", "--dev",
        "--dev-data-dir", "[default: .sagad-dev]", "SAGA_DATABASE_URL_FILE", "--drain-timeout",
        "[default: 20s]", "config print"}) {
    EXPECT_TRUE(absl::StrContains(r.out, s)) << s << "\n" << r.out;
  }
  r = RunSagad({"--version"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_FALSE(r.out.empty());
}

TEST(SagadCliTest, ConfigPrintRedactsThePassword) {
  RunResult r = RunSagad({"config", "print"},
                         {{"SAGA_DATABASE_URL", "postgresql://app:hunter2@db.internal/sagas"}});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_FALSE(absl::StrContains(r.out, "hunter2")) << r.out;
  EXPECT_TRUE(absl::StrContains(r.out, "postgresql://app:***@db.internal/sagas")) << r.out;
  EXPECT_TRUE(absl::StrContains(r.out, "metrics-listen: \"0.0.0.0:9090\"")) << r.out;
  r = RunSagad({"config", "print", "--database-url", "host=db user=app password='hunter 2'"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_FALSE(absl::StrContains(r.out, "hunter")) << r.out;
  EXPECT_TRUE(absl::StrContains(r.out, "host=db user=app password=***")) << r.out;
}

TEST(SagadCliTest, InvalidValuesExit2WithOneLine) {
  RunResult r = RunSagad({"--lease", "10x"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(r.err, "sagad: --lease: '10x' is not a duration (write e.g. 500ms, 10s or 1m)\n");
  r = RunSagad({}, {{"SAGA_WORKERS", "lots"}});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_TRUE(OneLine(r.err)) << r.err;
  EXPECT_TRUE(absl::StartsWith(r.err, "sagad: SAGA_WORKERS: 'lots'")) << r.err;
  r = RunSagad({"--bogus"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_TRUE(OneLine(r.err)) << r.err;
}

TEST(SagadCliTest, TakenMetricsPortFailsStartup) {
  const ListeningLoopbackSocket taken;
  ASSERT_NE(taken.port(), 0);
  const int port = taken.port();
  RunResult r = RunSagad({"--metrics-listen", absl::StrCat("127.0.0.1:", port), "--listen",
                          absl::StrCat("127.0.0.1:", FreeLoopbackPort()), "--database-url",
                          "host=/nonexistent", "--log-format", "text"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(absl::StrContains(r.err, "cannot listen for metrics")) << r.err;
}

}  // namespace
}  // namespace saga::testing
