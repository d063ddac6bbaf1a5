#include "orchestrator/common/failure_log.h"

#include "gtest/gtest.h"

namespace saga::common {
namespace {

const absl::Time kT0 = absl::FromUnixSeconds(1'800'000'000);

TEST(FailureLog, LogsTheFirstFailureThenOneLinePerIntervalWithTheCount) {
  FailureLog log(absl::Seconds(30));
  EXPECT_EQ(log.Failed(kT0), 1);
  // Polled every 200 ms for 29.8 s: silent.
  int64_t logged = 0;
  for (int i = 1; i < 150; ++i) logged += log.Failed(kT0 + absl::Milliseconds(200 * i));
  EXPECT_EQ(logged, 0);
  // At 30 s: one line for the 150 failures since the first line.
  EXPECT_EQ(log.Failed(kT0 + absl::Seconds(30)), 150);
  EXPECT_EQ(log.Failed(kT0 + absl::Seconds(31)), 0);
}

TEST(FailureLog, SuccessReportsTheOutageOnceAndResets) {
  FailureLog log(absl::Seconds(30));
  EXPECT_EQ(log.Succeeded(), 0);
  log.Failed(kT0);
  log.Failed(kT0 + absl::Seconds(1));
  log.Failed(kT0 + absl::Seconds(2));
  EXPECT_EQ(log.Succeeded(), 3);
  EXPECT_EQ(log.Succeeded(), 0);
  // The next outage's first failure is logged at once, however soon it comes.
  EXPECT_EQ(log.Failed(kT0 + absl::Seconds(3)), 1);
}

}  // namespace
}  // namespace saga::common
