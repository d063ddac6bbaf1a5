#include "orchestrator/common/metrics.h"

#include <charconv>
#include <cmath>
#include <limits>
#include <variant>

#include "absl/strings/str_cat.h"
#include "orchestrator/common/check.h"

namespace saga::common {
namespace {

bool IsValidName(std::string_view name, bool allow_colon) {
  if (name.empty()) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool alpha =
        (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (allow_colon && c == ':');
    const bool digit = c >= '0' && c <= '9';
    if (!alpha && !(digit && i > 0)) return false;
  }
  return true;
}

// `{a="x",b="y"` without the closing brace (so that `le` can be added), or "" for no labels.
std::string OpenLabels(const std::vector<std::string>& names,
                       const std::vector<std::string>& values) {
  if (names.empty()) return {};
  std::string out = "{";
  for (size_t i = 0; i < names.size(); ++i) {
    if (i > 0) out += ',';
    absl::StrAppend(&out, names[i], "=\"", EscapeLabelValue(values[i]), "\"");
  }
  return out;
}

std::string CloseLabels(const std::string& open) { return open.empty() ? open : open + "}"; }

void AppendHeader(std::string* out, const std::string& name, const std::string& help,
                  const char* type) {
  absl::StrAppend(out, "# HELP ", name, " ", EscapeHelp(help), "\n# TYPE ", name, " ", type, "\n");
}

}  // namespace

namespace metrics_internal {

std::string SeriesKey(absl::Span<const std::string_view> values) {
  std::string key;
  for (std::string_view v : values) {
    key += std::to_string(v.size());
    key += ':';
    key.append(v.data(), v.size());
    key += ';';
  }
  return key;
}

void LabelCountMismatch(const std::string& name, size_t want, size_t got) {
  std::fprintf(stderr, "metric %s has %zu labels, got %zu values\n", name.c_str(), want, got);
  std::abort();
}

}  // namespace metrics_internal

Histogram::Histogram(const std::vector<double>* bounds)
    : bounds_(bounds), buckets_(new std::atomic<uint64_t>[bounds->size() + 1]) {
  for (size_t i = 0; i <= bounds_->size(); ++i) buckets_[i].store(0, std::memory_order_relaxed);
}

void Histogram::Observe(double value) {
  // Few bounds: a linear scan is as fast as a binary search and branch-predictable.
  size_t i = 0;
  const size_t n = bounds_->size();
  while (i < n && value > (*bounds_)[i]) ++i;
  buckets_[i].fetch_add(1, std::memory_order_relaxed);
  sum_.fetch_add(value, std::memory_order_relaxed);
}

Histogram::Snapshot Histogram::Read() const {
  Snapshot s;
  s.cumulative.reserve(bounds_->size() + 1);
  uint64_t total = 0;
  for (size_t i = 0; i <= bounds_->size(); ++i) {
    total += buckets_[i].load(std::memory_order_relaxed);
    s.cumulative.push_back(total);
  }
  s.count = total;
  s.sum = sum_.load(std::memory_order_relaxed);
  return s;
}

struct MetricsRegistry::Entry {
  MetricType type = MetricType::kCounter;
  std::string name;
  std::string help;
  std::variant<std::unique_ptr<CounterFamily>, std::unique_ptr<GaugeFamily>,
               std::unique_ptr<HistogramFamily>, std::function<double()>>
      source;
  const std::vector<double>* bounds = nullptr;
};

MetricsRegistry::MetricsRegistry() = default;
MetricsRegistry::~MetricsRegistry() = default;

void MetricsRegistry::CheckNewName(std::string_view name,
                                   const std::vector<std::string>& label_names) {
  SAGA_CHECK(IsValidName(name, /*allow_colon=*/true));
  for (const auto& e : entries_) SAGA_CHECK(e->name != name);
  for (const auto& l : label_names) {
    SAGA_CHECK(IsValidName(l, /*allow_colon=*/false));
    SAGA_CHECK(l.rfind("__", 0) != 0 && l != "le");
  }
}

CounterFamily& MetricsRegistry::AddCounter(std::string_view name, std::string_view help,
                                           std::vector<std::string> label_names) {
  absl::MutexLock lock(&mu_);
  CheckNewName(name, label_names);
  const bool unlabeled = label_names.empty();
  auto family = std::unique_ptr<CounterFamily>(
      new CounterFamily(std::string(name), std::string(help), std::move(label_names),
                        [] { return std::make_unique<Counter>(); }));
  if (unlabeled) family->Get();
  CounterFamily& ref = *family;
  auto entry = std::make_unique<Entry>();
  entry->type = MetricType::kCounter;
  entry->name = std::string(name);
  entry->help = std::string(help);
  entry->source = std::move(family);
  entries_.push_back(std::move(entry));
  return ref;
}

GaugeFamily& MetricsRegistry::AddGauge(std::string_view name, std::string_view help,
                                       std::vector<std::string> label_names) {
  absl::MutexLock lock(&mu_);
  CheckNewName(name, label_names);
  const bool unlabeled = label_names.empty();
  auto family = std::unique_ptr<GaugeFamily>(
      new GaugeFamily(std::string(name), std::string(help), std::move(label_names),
                      [] { return std::make_unique<Gauge>(); }));
  if (unlabeled) family->Get();
  GaugeFamily& ref = *family;
  auto entry = std::make_unique<Entry>();
  entry->type = MetricType::kGauge;
  entry->name = std::string(name);
  entry->help = std::string(help);
  entry->source = std::move(family);
  entries_.push_back(std::move(entry));
  return ref;
}

HistogramFamily& MetricsRegistry::AddHistogram(std::string_view name, std::string_view help,
                                               std::vector<std::string> label_names,
                                               std::vector<double> bounds) {
  absl::MutexLock lock(&mu_);
  CheckNewName(name, label_names);
  for (size_t i = 0; i < bounds.size(); ++i) {
    SAGA_CHECK(std::isfinite(bounds[i]));
    SAGA_CHECK(i == 0 || bounds[i] > bounds[i - 1]);
  }
  bounds_.push_back(std::make_unique<std::vector<double>>(std::move(bounds)));
  const std::vector<double>* b = bounds_.back().get();
  const bool unlabeled = label_names.empty();
  auto family = std::unique_ptr<HistogramFamily>(
      new HistogramFamily(std::string(name), std::string(help), std::move(label_names),
                          [b] { return std::make_unique<Histogram>(b); }));
  if (unlabeled) family->Get();
  HistogramFamily& ref = *family;
  auto entry = std::make_unique<Entry>();
  entry->type = MetricType::kHistogram;
  entry->name = std::string(name);
  entry->help = std::string(help);
  entry->bounds = b;
  entry->source = std::move(family);
  entries_.push_back(std::move(entry));
  return ref;
}

void MetricsRegistry::AddCounterFunction(std::string_view name, std::string_view help,
                                         std::function<double()> read) {
  absl::MutexLock lock(&mu_);
  CheckNewName(name, {});
  auto entry = std::make_unique<Entry>();
  entry->type = MetricType::kCounter;
  entry->name = std::string(name);
  entry->help = std::string(help);
  entry->source = std::move(read);
  entries_.push_back(std::move(entry));
}

void MetricsRegistry::AddGaugeFunction(std::string_view name, std::string_view help,
                                       std::function<double()> read) {
  absl::MutexLock lock(&mu_);
  CheckNewName(name, {});
  auto entry = std::make_unique<Entry>();
  entry->type = MetricType::kGauge;
  entry->name = std::string(name);
  entry->help = std::string(help);
  entry->source = std::move(read);
  entries_.push_back(std::move(entry));
}

std::string MetricsRegistry::TextExposition() const {
  std::string out;
  absl::ReaderMutexLock lock(&mu_);
  for (const auto& e : entries_) {
    switch (e->type) {
      case MetricType::kCounter:
        AppendHeader(&out, e->name, e->help, "counter");
        break;
      case MetricType::kGauge:
        AppendHeader(&out, e->name, e->help, "gauge");
        break;
      case MetricType::kHistogram:
        AppendHeader(&out, e->name, e->help, "histogram");
        break;
    }
    if (const auto* read = std::get_if<std::function<double()>>(&e->source)) {
      absl::StrAppend(&out, e->name, " ", FormatSampleValue((*read)()), "\n");
    } else if (const auto* counters = std::get_if<std::unique_ptr<CounterFamily>>(&e->source)) {
      const CounterFamily& f = **counters;
      for (const auto* s : f.Snapshot()) {
        absl::StrAppend(&out, e->name, CloseLabels(OpenLabels(f.label_names_, s->values)), " ",
                        s->metric->Value(), "\n");
      }
    } else if (const auto* gauges = std::get_if<std::unique_ptr<GaugeFamily>>(&e->source)) {
      const GaugeFamily& f = **gauges;
      for (const auto* s : f.Snapshot()) {
        absl::StrAppend(&out, e->name, CloseLabels(OpenLabels(f.label_names_, s->values)), " ",
                        FormatSampleValue(s->metric->Value()), "\n");
      }
    } else if (const auto* hists = std::get_if<std::unique_ptr<HistogramFamily>>(&e->source)) {
      const HistogramFamily& f = **hists;
      for (const auto* s : f.Snapshot()) {
        const Histogram::Snapshot h = s->metric->Read();
        const std::string open = OpenLabels(f.label_names_, s->values);
        const std::string le_prefix = open.empty() ? "{le=\"" : open + ",le=\"";
        for (size_t i = 0; i < e->bounds->size(); ++i) {
          absl::StrAppend(&out, e->name, "_bucket", le_prefix, FormatSampleValue((*e->bounds)[i]),
                          "\"} ", h.cumulative[i], "\n");
        }
        absl::StrAppend(&out, e->name, "_bucket", le_prefix, "+Inf\"} ", h.count, "\n");
        const std::string labels = CloseLabels(open);
        absl::StrAppend(&out, e->name, "_sum", labels, " ", FormatSampleValue(h.sum), "\n");
        absl::StrAppend(&out, e->name, "_count", labels, " ", h.count, "\n");
      }
    }
  }
  return out;
}

std::vector<double> ExponentialBuckets(double start, double factor, int count) {
  std::vector<double> out;
  double v = start;
  for (int i = 0; i < count; ++i, v *= factor) out.push_back(v);
  return out;
}

std::string EscapeLabelValue(std::string_view value) {
  std::string out;
  out.reserve(value.size());
  for (const char c : value) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

std::string EscapeHelp(std::string_view help) {
  std::string out;
  out.reserve(help.size());
  for (const char c : help) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

std::string FormatSampleValue(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
  if (value == std::trunc(value) && std::fabs(value) < 1e15) {
    return absl::StrCat(static_cast<int64_t>(value));
  }
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), value);
  if (ec != std::errc()) return "NaN";
  return std::string(buf, end);
}

}  // namespace saga::common
