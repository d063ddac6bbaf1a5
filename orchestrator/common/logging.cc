#include "orchestrator/common/logging.h"

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <ctime>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "spdlog/sinks/stdout_sinks.h"

namespace saga::common {
namespace {

thread_local LogContext current_context;

std::string_view LevelName(spdlog::level::level_enum level) {
  switch (level) {
    case spdlog::level::trace:
      return "trace";
    case spdlog::level::debug:
      return "debug";
    case spdlog::level::info:
      return "info";
    case spdlog::level::warn:
      return "warn";
    case spdlog::level::err:
      return "error";
    case spdlog::level::critical:
      return "critical";
    default:
      return "off";
  }
}

// "2024-05-01T12:00:00.123456Z" (digits = 6) or "...00.123Z" (digits = 3).
std::string FormatTime(std::chrono::system_clock::time_point time, int digits) {
  using std::chrono::duration_cast;
  using std::chrono::microseconds;
  using std::chrono::seconds;
  auto secs = std::chrono::time_point_cast<seconds>(time);
  if (secs > time) secs -= seconds(1);
  const auto micros = duration_cast<microseconds>(time - secs).count();
  const std::time_t tt = std::chrono::system_clock::to_time_t(secs);
  std::tm tm{};
  gmtime_r(&tt, &tm);
  char buf[64];
  if (digits == 6) {
    std::snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02d.%06lldZ", tm.tm_year + 1900,
                  tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                  static_cast<long long>(micros));
  } else {
    std::snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02d.%03lldZ", tm.tm_year + 1900,
                  tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                  static_cast<long long>(micros / 1000));
  }
  return buf;
}

void Append(spdlog::memory_buf_t& dest, std::string_view text) {
  dest.append(text.data(), text.data() + text.size());
}

// Appends `text` with control characters escaped, so that it stays on one line and cannot
// send terminal escape sequences.
void AppendEscaped(spdlog::memory_buf_t& dest, std::string_view text) {
  for (const char c : text) {
    const auto u = static_cast<unsigned char>(c);
    if (c == '\n') {
      Append(dest, "\\n");
    } else if (c == '\r') {
      Append(dest, "\\r");
    } else if (c == '\t') {
      Append(dest, "\\t");
    } else if (u < 0x20 || u == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", u);
      Append(dest, buf);
    } else {
      dest.push_back(c);
    }
  }
}

std::string_view PayloadOf(const spdlog::details::log_msg& msg) {
  return std::string_view(msg.payload.data(), msg.payload.size());
}

}  // namespace

absl::StatusOr<LogFormat> ParseLogFormat(std::string_view text) {
  if (text == "auto") return LogFormat::kAuto;
  if (text == "json") return LogFormat::kJson;
  if (text == "text") return LogFormat::kText;
  return absl::InvalidArgumentError(
      absl::StrCat("log format must be auto, json or text, not '", std::string(text), "'"));
}

absl::StatusOr<spdlog::level::level_enum> ParseLogLevel(std::string_view text) {
  const std::string lower = absl::AsciiStrToLower(std::string(text));
  if (lower == "trace") return spdlog::level::trace;
  if (lower == "debug") return spdlog::level::debug;
  if (lower == "info") return spdlog::level::info;
  if (lower == "warn" || lower == "warning") return spdlog::level::warn;
  if (lower == "error") return spdlog::level::err;
  if (lower == "critical") return spdlog::level::critical;
  if (lower == "off") return spdlog::level::off;
  return absl::InvalidArgumentError(
      absl::StrCat("log level must be trace, debug, info, warn, error, critical or off, not '",
                   std::string(text), "'"));
}

const LogContext& CurrentLogContext() { return current_context; }

ScopedLogContext::ScopedLogContext(std::string_view saga_id, std::string_view step,
                                   std::string_view trace_id)
    : saved_(current_context) {
  current_context = LogContext{saga_id, step, trace_id};
}

ScopedLogContext::~ScopedLogContext() { current_context = saved_; }

std::string_view TraceIdOf(std::string_view traceparent) {
  // "00-" + 32 hex + "-" + 16 hex + "-" + 2 hex.
  if (traceparent.size() < 55 || traceparent[2] != '-' || traceparent[35] != '-') return {};
  const std::string_view id = traceparent.substr(3, 32);
  for (const char c : id) {
    if (!absl::ascii_isxdigit(static_cast<unsigned char>(c))) return {};
  }
  return id;
}

void JsonLogFormatter::format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) {
  nlohmann::ordered_json line;
  line["ts"] = FormatTime(msg.time, 6);
  line["level"] = LevelName(msg.level);
  line["msg"] = PayloadOf(msg);
  const LogContext& ctx = current_context;
  if (!ctx.saga_id.empty()) line["saga_id"] = ctx.saga_id;
  if (!ctx.step.empty()) line["step"] = ctx.step;
  if (!ctx.trace_id.empty()) line["trace_id"] = ctx.trace_id;
  // Invalid UTF-8 becomes U+FFFD instead of an exception: a log line is never lost.
  Append(dest,
         line.dump(-1, ' ', /*ensure_ascii=*/false, nlohmann::json::error_handler_t::replace));
  dest.push_back('\n');
}

std::unique_ptr<spdlog::formatter> JsonLogFormatter::clone() const {
  return std::make_unique<JsonLogFormatter>();
}

void TextLogFormatter::format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) {
  Append(dest, FormatTime(msg.time, 3));
  dest.push_back(' ');
  const std::string_view level = LevelName(msg.level);
  Append(dest, level);
  for (size_t i = level.size(); i < 6; ++i) dest.push_back(' ');
  AppendEscaped(dest, PayloadOf(msg));
  const LogContext& ctx = current_context;
  if (!ctx.saga_id.empty()) {
    Append(dest, "  saga_id=");
    AppendEscaped(dest, ctx.saga_id);
  }
  if (!ctx.step.empty()) {
    Append(dest, " step=");
    AppendEscaped(dest, ctx.step);
  }
  if (!ctx.trace_id.empty()) {
    Append(dest, " trace_id=");
    AppendEscaped(dest, ctx.trace_id);
  }
  dest.push_back('\n');
}

std::unique_ptr<spdlog::formatter> TextLogFormatter::clone() const {
  return std::make_unique<TextLogFormatter>();
}

LogFormat ResolveLogFormat(LogFormat format) {
  if (format != LogFormat::kAuto) return format;
  return isatty(STDERR_FILENO) ? LogFormat::kText : LogFormat::kJson;
}

void InitLogging(LogFormat format, spdlog::level::level_enum level) {
  auto sink = std::make_shared<spdlog::sinks::stderr_sink_mt>();
  if (ResolveLogFormat(format) == LogFormat::kJson) {
    sink->set_formatter(std::make_unique<JsonLogFormatter>());
  } else {
    sink->set_formatter(std::make_unique<TextLogFormatter>());
  }
  auto logger = std::make_shared<spdlog::logger>("sagad", std::move(sink));
  logger->set_level(level);
  logger->flush_on(spdlog::level::trace);
  spdlog::set_default_logger(std::move(logger));
}

}  // namespace saga::common
