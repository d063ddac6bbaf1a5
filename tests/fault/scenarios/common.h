// Helpers shared by the fault scenarios.
#pragma once

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "tests/fault/harness/scenario.h"
#include "tests/fault/harness/util.h"

namespace saga::fault {

inline const std::vector<std::string> kAllInvariants = {"I1", "I2", "I3", "I4",
                                                        "I5", "I6", "I7", "I8"};

using Figures = std::vector<std::pair<std::string, std::string>>;

// Polls `done` every `every` until it is true or `timeout` passes.
inline bool WaitUntil(const std::function<bool()>& done, absl::Duration timeout,
                      absl::Duration every = absl::Milliseconds(50)) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    if (done()) return true;
    absl::SleepFor(every);
  }
  return done();
}

inline std::string Seconds(absl::Duration d) {
  return absl::StrFormat("%.2f s", absl::ToDoubleSeconds(d));
}

inline std::string Millis(absl::Duration d) {
  return absl::StrFormat("%.0f ms", absl::ToDoubleMilliseconds(d));
}

// The per-call fault mix: 5% UNAVAILABLE, 3% apply-then-drop, 1% late apply, plus 5%
// slow replies; held answers wait 1.5 s (past the 1 s step deadline).
inline bank::v1::FaultConfig ChaosFaults(uint64_t seed) {
  bank::v1::FaultConfig f;
  f.set_seed(seed);
  f.set_unavailable(0.05);
  f.set_drop_reply(0.03);
  f.set_late_apply(0.01);
  f.set_slow(0.05);
  f.set_hold_ms(1500);
  f.set_slow_max_ms(300);
  return f;
}

// Runs the checker and reports; fails the test on a checker error.
inline CheckReport CheckAndReport(Scenario& scenario, const std::vector<StartRecord>& records,
                                  CheckOptions options, const Figures& figures,
                                  const std::vector<std::string>& invariants) {
  absl::StatusOr<CheckReport> report = scenario.Check(records, std::move(options));
  if (!report.ok()) {
    ADD_FAILURE() << "checker: " << report.status();
    scenario.KeepOnExit();
    return CheckReport{};
  }
  scenario.Report(figures, *report, invariants);
  return *std::move(report);
}

}  // namespace saga::fault
