// The saga state machine's vocabulary: statuses, events (the persisted history) and the state
// they fold into. Plain data; no I/O.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/time/time.h"
#include "nlohmann/json.hpp"

namespace saga::engine {

enum class SagaStatus : int {
  kRunning = 1,
  kCompleted = 2,
  kCompensating = 3,
  kCompensated = 4,
  kFailed = 5,
};

enum class StepStatus : int {
  kPending = 1,
  kRunning = 2,
  kSucceeded = 3,
  kFailed = 4,
  kCompensating = 5,
  kCompensated = 6,
  kCompensationFailed = 7,
};

// Which call of a step.
enum class CallKind : int { kAction = 0, kCompensation = 1 };

// The persisted history. Numbers are stored; never renumber.
enum class EventType : int {
  kSagaStarted = 1,            // detail: {}
  kStepStarted = 2,            // step, attempt; write-ahead of a forward attempt
  kStepSucceeded = 3,          // step, attempt; detail: {"output": <json>}
  kStepRetryScheduled = 4,     // step, attempt; detail: {"code","message","retry_at_us"}
  kStepFailed = 5,             // step, attempt; detail: {"code","message","unknown":bool}
  kCompensationStarted = 6,    // step, attempt; write-ahead of a compensation attempt
  kCompensationSucceeded = 7,  // step, attempt
  kCompensationRetryScheduled = 8,
  kCompensationFailed = 9,  // the compensation could not complete within its policy
  kAbortRequested = 10,     // detail: {"reason"}
  kRetryRequested = 11,     // operator resumed a FAILED saga
  kSagaCompleted = 12,
  kSagaCompensating = 13,  // detail: {"reason"}
  kSagaCompensated = 14,
  kSagaFailed = 15,  // detail: {"reason"}
};

std::string_view EventTypeName(EventType type);
std::string_view SagaStatusName(SagaStatus status);
std::string_view StepStatusName(StepStatus status);
bool IsTerminal(SagaStatus status);
bool IsTerminalEvent(EventType type);
// Parses the names above; false if unknown.
bool ParseSagaStatus(std::string_view name, SagaStatus* out);

struct Event {
  int64_t seq = 0;
  EventType type = EventType::kSagaStarted;
  // Step index, -1 for saga-level events.
  int step = -1;
  int attempt = 0;
  nlohmann::json detail = nlohmann::json::object();
  // Set by the store when read back; the engine does not use it.
  absl::Time recorded_at = absl::InfinitePast();
};

struct StepState {
  StepStatus status = StepStatus::kPending;
  int attempts = 0;               // forward attempts started
  int compensation_attempts = 0;  // compensation attempts started (since the last retry)
  bool in_flight = false;         // an attempt is recorded without an outcome
  // When a retry is due (after a transient failure); InfinitePast when none is pending.
  absl::Time retry_at = absl::InfinitePast();
  bool outcome_unknown = false;
  nlohmann::json output;  // null until succeeded
  std::string last_error;
};

struct SagaState {
  SagaStatus status = SagaStatus::kRunning;
  std::vector<StepState> steps;
  int64_t last_seq = 0;
  bool abort_requested = false;
  std::string abort_reason;
  // Why the saga is compensating or failed.
  std::string error;
};

}  // namespace saga::engine
