#include "orchestrator/common/metrics.h"

#include <thread>
#include <vector>

#include "absl/strings/str_split.h"
#include "gtest/gtest.h"

namespace saga::common {
namespace {

bool Contains(const std::string& text, const std::string& line) {
  for (absl::string_view l : absl::StrSplit(text, '\n')) {
    if (l == line) return true;
  }
  return false;
}

TEST(MetricsTest, CountersGaugesAndFunctions) {
  MetricsRegistry r;
  auto& started = r.AddCounter("saga_started_total", "Sagas started.", {"definition"});
  auto& running = r.AddGauge("saga_running", "Sagas held.");
  r.AddCounter("plain_total", "No labels.");
  r.AddGaugeFunction("pool_in_use", "Connections lent.", [] { return 3.0; });
  r.AddCounterFunction("commits_total", "Commits.", [] { return 12345.0; });
  started.WithLabels({"order"}).Increment();
  started.WithLabels({"order"}).Increment(2);
  started.WithLabels({"refund"}).Increment();
  running.Get().Set(7);
  running.Get().Add(-2.5);
  const std::string text = r.TextExposition();
  EXPECT_TRUE(Contains(text, "# HELP saga_started_total Sagas started.")) << text;
  EXPECT_TRUE(Contains(text, "# TYPE saga_started_total counter")) << text;
  EXPECT_TRUE(Contains(text, "saga_started_total{definition=\"order\"} 3")) << text;
  EXPECT_TRUE(Contains(text, "saga_started_total{definition=\"refund\"} 1")) << text;
  EXPECT_TRUE(Contains(text, "# TYPE saga_running gauge")) << text;
  EXPECT_TRUE(Contains(text, "saga_running 4.5")) << text;
  EXPECT_TRUE(Contains(text, "plain_total 0")) << text;
  EXPECT_TRUE(Contains(text, "pool_in_use 3")) << text;
  EXPECT_TRUE(Contains(text, "commits_total 12345")) << text;
  // Registration order is kept.
  EXPECT_LT(text.find("saga_started_total"), text.find("saga_running"));
  EXPECT_EQ(text.back(), '\n');
}

TEST(MetricsTest, HistogramBucketsAreCumulative) {
  MetricsRegistry r;
  auto& h = r.AddHistogram("step_seconds", "Latency.", {"step"}, {0.25, 0.5, 1});
  auto& s = h.WithLabels({"charge"});
  s.Observe(0.125);
  s.Observe(0.25);  // le is inclusive
  s.Observe(0.375);
  s.Observe(2);
  const std::string text = r.TextExposition();
  EXPECT_TRUE(Contains(text, "# TYPE step_seconds histogram")) << text;
  EXPECT_TRUE(Contains(text, "step_seconds_bucket{step=\"charge\",le=\"0.25\"} 2")) << text;
  EXPECT_TRUE(Contains(text, "step_seconds_bucket{step=\"charge\",le=\"0.5\"} 3")) << text;
  EXPECT_TRUE(Contains(text, "step_seconds_bucket{step=\"charge\",le=\"1\"} 3")) << text;
  EXPECT_TRUE(Contains(text, "step_seconds_bucket{step=\"charge\",le=\"+Inf\"} 4")) << text;
  EXPECT_TRUE(Contains(text, "step_seconds_sum{step=\"charge\"} 2.75")) << text;
  EXPECT_TRUE(Contains(text, "step_seconds_count{step=\"charge\"} 4")) << text;
  auto& unlabeled = r.AddHistogram("batch", "Sizes.", {}, {1, 10});
  unlabeled.Get().Observe(5);
  const std::string t2 = r.TextExposition();
  EXPECT_TRUE(Contains(t2, "batch_bucket{le=\"10\"} 1")) << t2;
  EXPECT_TRUE(Contains(t2, "batch_count 1")) << t2;
}

TEST(MetricsTest, LabelValuesAreEscaped) {
  MetricsRegistry r;
  auto& c = r.AddCounter("c_total", "Help with \\ and\nnewline.", {"a", "b"});
  c.WithLabels({"quo\"te", "back\\slash\nnl"}).Increment();
  const std::string text = r.TextExposition();
  EXPECT_TRUE(Contains(text, "# HELP c_total Help with \\\\ and\\nnewline.")) << text;
  EXPECT_TRUE(Contains(text, "c_total{a=\"quo\\\"te\",b=\"back\\\\slash\\nnl\"} 1")) << text;
}

TEST(MetricsTest, LabelValuesDoNotCollide) {
  MetricsRegistry r;
  auto& c = r.AddCounter("c_total", "h", {"a", "b"});
  c.WithLabels({"x;", "y"}).Increment();
  c.WithLabels({"x", ";y"}).Increment(5);
  EXPECT_EQ(c.WithLabels({"x;", "y"}).Value(), 1u);
  EXPECT_EQ(c.WithLabels({"x", ";y"}).Value(), 5u);
}

TEST(MetricsTest, SeriesAreCappedPerFamily) {
  MetricsRegistry r;
  auto& c = r.AddCounter("c_total", "h", {"a"});
  for (size_t i = 0; i < kMaxSeriesPerFamily + 5; ++i) {
    c.WithLabels({std::to_string(i)}).Increment();
  }
  EXPECT_EQ(c.dropped_series(), 5u);
}

TEST(MetricsTest, ConcurrentUpdatesAreCounted) {
  MetricsRegistry r;
  auto& c = r.AddCounter("c_total", "h", {"t"});
  auto& h = r.AddHistogram("h_seconds", "h", {"t"}, {0.5});
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 10000; ++i) {
        c.WithLabels({t % 2 == 0 ? "even" : "odd"}).Increment();
        h.WithLabels({"all"}).Observe(1);
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(c.WithLabels({"even"}).Value(), 20000u);
  EXPECT_EQ(c.WithLabels({"odd"}).Value(), 20000u);
  EXPECT_EQ(h.WithLabels({"all"}).Read().count, 40000u);
  EXPECT_EQ(h.WithLabels({"all"}).Read().sum, 40000.0);
}

TEST(MetricsTest, FormatSampleValue) {
  EXPECT_EQ(FormatSampleValue(0), "0");
  EXPECT_EQ(FormatSampleValue(42), "42");
  EXPECT_EQ(FormatSampleValue(-3), "-3");
  EXPECT_EQ(FormatSampleValue(0.005), "0.005");
  EXPECT_EQ(FormatSampleValue(2.5), "2.5");
  EXPECT_EQ(FormatSampleValue(1.0 / 0.0), "+Inf");
  EXPECT_EQ(FormatSampleValue(-1.0 / 0.0), "-Inf");
  EXPECT_EQ(FormatSampleValue(0.0 / 0.0), "NaN");
}

TEST(MetricsTest, ExponentialBuckets) {
  EXPECT_EQ(ExponentialBuckets(0.5, 2, 3), (std::vector<double>{0.5, 1.0, 2.0}));
}

}  // namespace
}  // namespace saga::common
