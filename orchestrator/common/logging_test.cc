#include "orchestrator/common/logging.h"

#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "spdlog/sinks/ostream_sink.h"

namespace saga::common {
namespace {

std::string Format(spdlog::formatter& f, std::string_view payload,
                   spdlog::level::level_enum level = spdlog::level::info) {
  spdlog::details::log_msg msg(spdlog::source_loc{}, "test", level,
                               spdlog::string_view_t(payload.data(), payload.size()));
  spdlog::memory_buf_t buf;
  f.format(msg, buf);
  return std::string(buf.data(), buf.size());
}

// Strings a saga's input, error or abort reason may hold.
std::vector<std::string> HostileStrings() {
  return {
      "plain",
      "quote \" and 'single' quotes",
      "new\nline and \r\n crlf",
      "back\\slash \\\" \\n (escaped-looking)",
      std::string("nul \0 byte", 10),
      "bell \x07 escape \x1b[31m red \x7f del",
      "'; DROP TABLE sagas; --",
      "{\"json\": \"inside\", \"n\": [1,2]}",
      "tab\there",
      "unicode \xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80",
  };
}

TEST(JsonLogFormatterTest, HostileStringsGiveOneValidJsonLineEach) {
  JsonLogFormatter f;
  for (const std::string& s : HostileStrings()) {
    const std::string line = Format(f, s);
    ASSERT_FALSE(line.empty());
    EXPECT_EQ(line.back(), '\n');
    EXPECT_EQ(line.find('\n'), line.size() - 1) << "raw newline inside: " << line;
    const auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    ASSERT_FALSE(j.is_discarded()) << line;
    EXPECT_EQ(j.at("msg").get<std::string>(), s);
    EXPECT_EQ(j.at("level"), "info");
  }
}

TEST(JsonLogFormatterTest, InvalidUtf8IsReplacedNotDropped) {
  JsonLogFormatter f;
  const std::vector<std::string> bad = {"bad \xff\xfe byte", "truncated \xe2\x82",
                                        "overlong \xc0\xaf", "lone surrogate \xed\xa0\x80"};
  for (const std::string& s : bad) {
    const std::string line = Format(f, s);
    const auto j = nlohmann::json::parse(line, nullptr, false);
    ASSERT_FALSE(j.is_discarded()) << line;
    const std::string msg = j.at("msg").get<std::string>();
    EXPECT_NE(msg.find("\xef\xbf\xbd"), std::string::npos) << msg;  // U+FFFD
    EXPECT_EQ(msg.substr(0, 3), s.substr(0, 3));
  }
}

TEST(JsonLogFormatterTest, TimestampIsRfc3339UtcWithMicroseconds) {
  JsonLogFormatter f;
  const auto j = nlohmann::json::parse(Format(f, "x", spdlog::level::warn));
  EXPECT_TRUE(std::regex_match(j.at("ts").get<std::string>(),
                               std::regex(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z)")))
      << j.at("ts");
  EXPECT_EQ(j.at("level"), "warn");
  // Field order: ts, level, msg first.
  const std::string line = Format(f, "x");
  EXPECT_EQ(line.rfind("{\"ts\":", 0), 0u) << line;
  EXPECT_LT(line.find("\"level\""), line.find("\"msg\""));
}

TEST(JsonLogFormatterTest, ContextFieldsComeFromTheScope) {
  JsonLogFormatter f;
  auto j = nlohmann::json::parse(Format(f, "no context"));
  EXPECT_FALSE(j.contains("saga_id"));
  EXPECT_FALSE(j.contains("step"));
  EXPECT_FALSE(j.contains("trace_id"));
  const std::string saga = "5f0c6a1e-0000-4000-8000-000000000001";
  const std::string step = "charge \"quoted\"\n";
  const std::string trace = "4bf92f3577b34da6a3ce929d0e0e4736";
  {
    ScopedLogContext outer(saga, {}, trace);
    j = nlohmann::json::parse(Format(f, "outer"));
    EXPECT_EQ(j.at("saga_id"), saga);
    EXPECT_EQ(j.at("trace_id"), trace);
    EXPECT_FALSE(j.contains("step"));
    {
      ScopedLogContext inner(saga, step, trace);
      j = nlohmann::json::parse(Format(f, "inner"));
      EXPECT_EQ(j.at("step"), step);
    }
    j = nlohmann::json::parse(Format(f, "outer again"));
    EXPECT_FALSE(j.contains("step"));
    EXPECT_EQ(j.at("saga_id"), saga);
  }
  j = nlohmann::json::parse(Format(f, "after"));
  EXPECT_FALSE(j.contains("saga_id"));
}

TEST(JsonLogFormatterTest, ThroughSpdlogWithFormatArguments) {
  std::ostringstream out;
  auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(out);
  sink->set_formatter(std::make_unique<JsonLogFormatter>());
  spdlog::logger logger("t", sink);
  for (const std::string& s : HostileStrings()) {
    logger.info("saga {} COMPENSATED: {}", "id-1", s);
  }
  std::istringstream lines(out.str());
  std::string line;
  size_t n = 0;
  while (std::getline(lines, line)) {
    const auto j = nlohmann::json::parse(line, nullptr, false);
    ASSERT_FALSE(j.is_discarded()) << line;
    EXPECT_EQ(j.at("msg").get<std::string>(), "saga id-1 COMPENSATED: " + HostileStrings()[n]);
    ++n;
  }
  EXPECT_EQ(n, HostileStrings().size());
}

TEST(TextLogFormatterTest, EscapesControlCharacters) {
  TextLogFormatter f;
  const std::string line = Format(f, "a\nb\x1b[31mc\x07");
  EXPECT_EQ(line.find('\n'), line.size() - 1) << line;
  EXPECT_NE(line.find("a\\nb\\x1b[31mc\\x07"), std::string::npos) << line;
  EXPECT_EQ(line.find('\x1b'), std::string::npos);
  EXPECT_NE(line.find(" info "), std::string::npos) << line;
  ScopedLogContext ctx("id-7", "ship", "abc");
  const std::string with = Format(f, "m");
  EXPECT_NE(with.find("saga_id=id-7 step=ship trace_id=abc"), std::string::npos) << with;
}

TEST(LoggingTest, TraceIdOf) {
  EXPECT_EQ(TraceIdOf("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            "4bf92f3577b34da6a3ce929d0e0e4736");
  EXPECT_EQ(TraceIdOf(""), "");
  EXPECT_EQ(TraceIdOf("00-4bf92f3577b34da6"), "");
  EXPECT_EQ(TraceIdOf("00-4bf92f3577b34da6a3ce929d0e0e473x-00f067aa0ba902b7-01"), "");
}

TEST(LoggingTest, ParseFormatAndLevel) {
  EXPECT_EQ(*ParseLogFormat("json"), LogFormat::kJson);
  EXPECT_EQ(*ParseLogFormat("text"), LogFormat::kText);
  EXPECT_EQ(*ParseLogFormat("auto"), LogFormat::kAuto);
  EXPECT_FALSE(ParseLogFormat("xml").ok());
  EXPECT_EQ(*ParseLogLevel("debug"), spdlog::level::debug);
  EXPECT_EQ(*ParseLogLevel("WARN"), spdlog::level::warn);
  EXPECT_EQ(*ParseLogLevel("error"), spdlog::level::err);
  EXPECT_FALSE(ParseLogLevel("loud").ok());
  EXPECT_EQ(ResolveLogFormat(LogFormat::kJson), LogFormat::kJson);
}

}  // namespace
}  // namespace saga::common
