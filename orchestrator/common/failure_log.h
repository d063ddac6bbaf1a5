// Decides which failures of a periodic task (a poll, a renewal) to log, so that an outage
// produces a few lines instead of one per attempt: the first failure, then one line per
// `interval` carrying the count of failures since the previous line, and one line when the
// task works again. Pure logic, time passed in; not thread-safe (one owner loop).
#pragma once

#include <cstdint>

#include "absl/time/time.h"

namespace saga::common {

class FailureLog {
 public:
  explicit FailureLog(absl::Duration interval) : interval_(interval) {}

  // Records a failure at `now`. Returns how many failures the line to log should report
  // (this one included), or 0 when nothing should be logged now.
  int64_t Failed(absl::Time now) {
    ++failures_;
    ++unlogged_;
    if (now - last_line_ < interval_) return 0;
    last_line_ = now;
    const int64_t n = unlogged_;
    unlogged_ = 0;
    return n;
  }

  // Records a success. Returns the number of failures since the last success, for a "works
  // again" line, or 0 when the previous attempt succeeded too.
  int64_t Succeeded() {
    const int64_t n = failures_;
    failures_ = 0;
    unlogged_ = 0;
    last_line_ = absl::InfinitePast();
    return n;
  }

 private:
  absl::Duration interval_;
  int64_t failures_ = 0;
  int64_t unlogged_ = 0;
  absl::Time last_line_ = absl::InfinitePast();
};

}  // namespace saga::common
