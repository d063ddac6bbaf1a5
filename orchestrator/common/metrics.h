// A small metrics registry with Prometheus text exposition (format 0.0.4).
//
// Metrics are counters, gauges and histograms grouped in families that have a fixed list of
// label names. A series (one combination of label values) is created on first use and lives
// as long as the registry; callers on a hot path may keep the returned reference.
//
//   MetricsRegistry registry;
//   auto& started = registry.AddCounter("saga_started_total", "Sagas started.", {"definition"});
//   started.WithLabels({"order"}).Increment();
//   std::string text = registry.TextExposition();
//
// Cost: updating a metric is one relaxed atomic operation (a histogram: two, plus a short
// search of its bounds); WithLabels() is a hash lookup under a shared (reader) lock, and takes
// the writer lock only the first time a series appears. Families hold at most
// kMaxSeriesPerFamily series; further label combinations are counted in dropped_series() and
// go to a series that is not exported (a guard against unbounded label values).
//
// Names must match [a-zA-Z_:][a-zA-Z0-9_:]* and label names [a-zA-Z_][a-zA-Z0-9_]*; an invalid
// or duplicate name, or a label value count that differs from the family's, is a programming
// error and aborts (SAGA_CHECK). Label values are any bytes; they are escaped on output.
//
// Thread-safety: every method may be called from any thread.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"

namespace saga::common {

inline constexpr size_t kMaxSeriesPerFamily = 10000;

// A monotonically increasing count.
class Counter {
 public:
  void Increment(uint64_t n = 1) { value_.fetch_add(n, std::memory_order_relaxed); }
  uint64_t Value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> value_{0};
};

// A value that goes up and down.
class Gauge {
 public:
  void Set(double v) { value_.store(v, std::memory_order_relaxed); }
  void Add(double v) { value_.fetch_add(v, std::memory_order_relaxed); }
  double Value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0};
};

// Counts observations into buckets with fixed upper bounds (le), plus their sum.
class Histogram {
 public:
  // `bounds`: strictly increasing, finite; the +Inf bucket is implicit. Must outlive this.
  explicit Histogram(const std::vector<double>* bounds);

  void Observe(double value);

  struct Snapshot {
    std::vector<uint64_t> cumulative;  // per bound, then +Inf (== count)
    double sum = 0;
    uint64_t count = 0;
  };
  Snapshot Read() const;

 private:
  const std::vector<double>* bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> buckets_;  // bounds_->size() + 1, not cumulative
  std::atomic<double> sum_{0};
};

enum class MetricType { kCounter, kGauge, kHistogram };

// The series of one metric name, keyed by label values. M is Counter, Gauge or Histogram.
template <typename M>
class MetricFamily {
 public:
  // The series with these label values, one per label name, in order.
  M& WithLabels(absl::Span<const std::string_view> values);
  M& WithLabels(std::initializer_list<std::string_view> values) {
    return WithLabels(absl::MakeConstSpan(values.begin(), values.size()));
  }
  // The only series of a family without labels.
  M& Get() { return WithLabels({}); }

  const std::string& name() const { return name_; }
  uint64_t dropped_series() const { return dropped_.load(std::memory_order_relaxed); }

 private:
  friend class MetricsRegistry;
  struct Series {
    std::vector<std::string> values;
    std::unique_ptr<M> metric;
  };

  MetricFamily(std::string name, std::string help, std::vector<std::string> label_names,
               std::function<std::unique_ptr<M>()> make);
  // Copies of the series pointers, sorted by label values (for a stable output).
  std::vector<const Series*> Snapshot() const;

  const std::string name_;
  const std::string help_;
  const std::vector<std::string> label_names_;
  const std::function<std::unique_ptr<M>()> make_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::unique_ptr<Series>> series_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<M> overflow_;  // not exported
  std::atomic<uint64_t> dropped_{0};
};

using CounterFamily = MetricFamily<Counter>;
using GaugeFamily = MetricFamily<Gauge>;
using HistogramFamily = MetricFamily<Histogram>;

class MetricsRegistry {
 public:
  MetricsRegistry();
  ~MetricsRegistry();
  MetricsRegistry(const MetricsRegistry&) = delete;
  MetricsRegistry& operator=(const MetricsRegistry&) = delete;

  // A family without labels exports its single series (value 0) from the start; a family with
  // labels exports only the series used so far.
  CounterFamily& AddCounter(std::string_view name, std::string_view help,
                            std::vector<std::string> label_names = {});
  GaugeFamily& AddGauge(std::string_view name, std::string_view help,
                        std::vector<std::string> label_names = {});
  HistogramFamily& AddHistogram(std::string_view name, std::string_view help,
                                std::vector<std::string> label_names, std::vector<double> bounds);

  // Metrics without labels whose value is read at exposition time, e.g. counters kept by
  // another module. `read` must be thread-safe and quick.
  void AddCounterFunction(std::string_view name, std::string_view help,
                          std::function<double()> read);
  void AddGaugeFunction(std::string_view name, std::string_view help, std::function<double()> read);

  // Every metric, in registration order, in the Prometheus text format (version 0.0.4).
  std::string TextExposition() const;

  // Content-Type of TextExposition().
  static constexpr std::string_view kContentType = "text/plain; version=0.0.4; charset=utf-8";

 private:
  struct Entry;
  void CheckNewName(std::string_view name, const std::vector<std::string>& label_names)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  mutable absl::Mutex mu_;
  std::vector<std::unique_ptr<Entry>> entries_ ABSL_GUARDED_BY(mu_);
  std::vector<std::unique_ptr<std::vector<double>>> bounds_ ABSL_GUARDED_BY(mu_);
};

// Bucket bounds: `count` values start, start*factor, start*factor^2, ...
std::vector<double> ExponentialBuckets(double start, double factor, int count);

// Helpers of the text format, exposed for tests.
// A label value or HELP text with \\, \" (label values only) and \n escaped.
std::string EscapeLabelValue(std::string_view value);
std::string EscapeHelp(std::string_view help);
// A sample value: integers exactly ("42"), others shortest round-trip ("0.25"), "+Inf",
// "-Inf", "NaN".
std::string FormatSampleValue(double value);

// ---- implementation ----

template <typename M>
MetricFamily<M>::MetricFamily(std::string name, std::string help,
                              std::vector<std::string> label_names,
                              std::function<std::unique_ptr<M>()> make)
    : name_(std::move(name)),
      help_(std::move(help)),
      label_names_(std::move(label_names)),
      make_(std::move(make)),
      overflow_(make_()) {}

namespace metrics_internal {
// Joins label values into a map key ('\xff' cannot occur in UTF-8; collisions with other bytes
// are avoided by length prefixes).
std::string SeriesKey(absl::Span<const std::string_view> values);
[[noreturn]] void LabelCountMismatch(const std::string& name, size_t want, size_t got);
}  // namespace metrics_internal

template <typename M>
M& MetricFamily<M>::WithLabels(absl::Span<const std::string_view> values) {
  if (values.size() != label_names_.size()) {
    metrics_internal::LabelCountMismatch(name_, label_names_.size(), values.size());
  }
  const std::string key = metrics_internal::SeriesKey(values);
  {
    absl::ReaderMutexLock lock(&mu_);
    auto it = series_.find(key);
    if (it != series_.end()) return *it->second->metric;
  }
  absl::MutexLock lock(&mu_);
  auto it = series_.find(key);
  if (it != series_.end()) return *it->second->metric;
  if (series_.size() >= kMaxSeriesPerFamily) {
    dropped_.fetch_add(1, std::memory_order_relaxed);
    return *overflow_;
  }
  auto series = std::make_unique<Series>();
  series->values.assign(values.begin(), values.end());
  series->metric = make_();
  M& metric = *series->metric;
  series_.emplace(key, std::move(series));
  return metric;
}

template <typename M>
std::vector<const typename MetricFamily<M>::Series*> MetricFamily<M>::Snapshot() const {
  std::vector<const Series*> out;
  {
    absl::ReaderMutexLock lock(&mu_);
    out.reserve(series_.size());
    for (const auto& [key, series] : series_) out.push_back(series.get());
  }
  std::sort(out.begin(), out.end(),
            [](const Series* a, const Series* b) { return a->values < b->values; });
  return out;
}

}  // namespace saga::common
