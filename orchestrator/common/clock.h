// Time as an injected dependency, so that the runtime can be driven deterministically.
// Thread-safe.
#pragma once

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace saga::common {

class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() const = 0;
};

class RealClock final : public Clock {
 public:
  absl::Time Now() const override { return absl::Now(); }
  static Clock* Get() {
    static RealClock clock;
    return &clock;
  }
};

}  // namespace saga::common
