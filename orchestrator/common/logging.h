// Structured logging for sagad on top of spdlog.
//
// Two line formats, chosen by InitLogging():
// - JSON lines (the default when stderr is not a terminal): one object per line with `ts`
//   (RFC 3339, UTC, microseconds), `level`, `msg`, and, when the logging thread has a
//   ScopedLogContext, `saga_id`, `step` and `trace_id`. Every string is escaped by
//   nlohmann::json; invalid UTF-8 is replaced by U+FFFD, so a line is always valid JSON
//   whatever a saga's input, error or abort reason holds.
// - Text (the default on a terminal): "2024-05-01T12:00:00.123Z info  message  saga_id=... "
//   with control characters escaped (\n, \x1b, ...), so user data cannot forge lines or
//   drive the terminal.
//
// Context: a ScopedLogContext sets the saga fields for the current thread until it goes out of
// scope (scopes nest; the previous context comes back). The formatters read it on the thread
// that logs, which is what spdlog's synchronous loggers do (do not use an async logger).
//
// Thread-safety: the formatters are used under the sink's lock; ScopedLogContext is
// thread-local; InitLogging should be called once, early in main(), before other threads log.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "spdlog/formatter.h"
#include "spdlog/spdlog.h"

namespace saga::common {

enum class LogFormat { kAuto, kJson, kText };

// "auto", "json" or "text". INVALID_ARGUMENT otherwise.
absl::StatusOr<LogFormat> ParseLogFormat(std::string_view text);
// "trace", "debug", "info", "warn", "error", "critical" or "off". INVALID_ARGUMENT otherwise.
absl::StatusOr<spdlog::level::level_enum> ParseLogLevel(std::string_view text);

// The saga fields of the current thread's log lines. Views: the ScopedLogContext that set them
// guarantees that the strings outlive it.
struct LogContext {
  std::string_view saga_id;
  std::string_view step;
  std::string_view trace_id;
};

// The current thread's context (empty fields when none is set).
const LogContext& CurrentLogContext();

// Sets the current thread's log context for the lifetime of this object. The strings must
// outlive it (pass members of an object that the scope keeps alive). Empty fields are left out
// of log lines.
class ScopedLogContext {
 public:
  explicit ScopedLogContext(std::string_view saga_id, std::string_view step = {},
                            std::string_view trace_id = {});
  ~ScopedLogContext();
  ScopedLogContext(const ScopedLogContext&) = delete;
  ScopedLogContext& operator=(const ScopedLogContext&) = delete;

 private:
  LogContext saved_;
};

// The trace id (the 32 hex digits) of a W3C traceparent "00-<trace id>-<span id>-<flags>";
// empty if `traceparent` does not have that shape. The view points into `traceparent`.
std::string_view TraceIdOf(std::string_view traceparent);

// One JSON object per line (see the file comment).
class JsonLogFormatter final : public spdlog::formatter {
 public:
  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override;
  std::unique_ptr<spdlog::formatter> clone() const override;
};

// One human-readable line per message (see the file comment).
class TextLogFormatter final : public spdlog::formatter {
 public:
  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override;
  std::unique_ptr<spdlog::formatter> clone() const override;
};

// kJson or kText; kAuto resolves to kText when stderr is a terminal, else kJson.
LogFormat ResolveLogFormat(LogFormat format);

// Makes the default spdlog logger write to stderr in `format` at `level`.
void InitLogging(LogFormat format, spdlog::level::level_enum level);

}  // namespace saga::common
