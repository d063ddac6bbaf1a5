#include <cstdint>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_replace.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "orchestrator/runtime/runtime.h"

namespace saga::runtime {
namespace {

// The canonical text form: 8-4-4-4-12 lowercase hex digits.
bool IsCanonical(const std::string& id) {
  if (id.size() != 36) return false;
  for (size_t i = 0; i < id.size(); ++i) {
    const bool dash = i == 8 || i == 13 || i == 18 || i == 23;
    const char c = id[i];
    if (dash ? c != '-' : !((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

uint64_t HexPrefix(const std::string& id, size_t digits) {
  uint64_t value = 0;
  EXPECT_TRUE(absl::SimpleHexAtoi(absl::StrReplaceAll(id, {{"-", ""}}).substr(0, digits), &value));
  return value;
}

TEST(NewUuidTest, IsRandomVersion4) {
  const std::string a = NewUuid();
  const std::string b = NewUuid();
  EXPECT_TRUE(IsCanonical(a)) << a;
  EXPECT_EQ(a[14], '4') << a;
  EXPECT_NE(std::string("89ab").find(a[19]), std::string::npos) << a;  // variant 10
  EXPECT_NE(a, b);
}

TEST(NewTimeOrderedUuidTest, IsVersion7WithTheCurrentTime) {
  const int64_t before_ms = absl::ToUnixMillis(absl::Now());
  const std::string id = NewTimeOrderedUuid();
  const int64_t after_ms = absl::ToUnixMillis(absl::Now());
  EXPECT_TRUE(IsCanonical(id)) << id;
  EXPECT_EQ(id[14], '7') << id;
  EXPECT_NE(std::string("89ab").find(id[19]), std::string::npos) << id;  // variant 10
  const int64_t ms = static_cast<int64_t>(HexPrefix(id, 12));            // the first 48 bits
  EXPECT_GE(ms, before_ms);
  EXPECT_LE(ms, after_ms);
}

TEST(NewTimeOrderedUuidTest, LaterIdsSortLaterAndDiffer) {
  std::string previous = NewTimeOrderedUuid();
  for (int i = 0; i < 1000; ++i) {
    absl::SleepFor(absl::Microseconds(i % 100 == 0 ? 300 : 0));
    const std::string id = NewTimeOrderedUuid();
    EXPECT_NE(id, previous);
    // The first 64 bits: milliseconds, version, fraction of the millisecond (1/4096 steps).
    if (HexPrefix(id, 16) > HexPrefix(previous, 16)) {
      EXPECT_GT(id, previous);
    } else {
      EXPECT_EQ(HexPrefix(id, 16), HexPrefix(previous, 16));  // same tick: random order
    }
    EXPECT_GE(HexPrefix(id, 16), HexPrefix(previous, 16));
    previous = id;
  }
}

}  // namespace
}  // namespace saga::runtime
