#include "orchestrator/engine/types.h"

namespace saga::engine {

std::string_view EventTypeName(EventType type) {
  switch (type) {
    case EventType::kSagaStarted:
      return "SAGA_STARTED";
    case EventType::kStepStarted:
      return "STEP_STARTED";
    case EventType::kStepSucceeded:
      return "STEP_SUCCEEDED";
    case EventType::kStepRetryScheduled:
      return "STEP_RETRY_SCHEDULED";
    case EventType::kStepFailed:
      return "STEP_FAILED";
    case EventType::kCompensationStarted:
      return "COMPENSATION_STARTED";
    case EventType::kCompensationSucceeded:
      return "COMPENSATION_SUCCEEDED";
    case EventType::kCompensationRetryScheduled:
      return "COMPENSATION_RETRY_SCHEDULED";
    case EventType::kCompensationFailed:
      return "COMPENSATION_FAILED";
    case EventType::kAbortRequested:
      return "ABORT_REQUESTED";
    case EventType::kRetryRequested:
      return "RETRY_REQUESTED";
    case EventType::kSagaCompleted:
      return "SAGA_COMPLETED";
    case EventType::kSagaCompensating:
      return "SAGA_COMPENSATING";
    case EventType::kSagaCompensated:
      return "SAGA_COMPENSATED";
    case EventType::kSagaFailed:
      return "SAGA_FAILED";
  }
  return "UNKNOWN";
}

std::string_view SagaStatusName(SagaStatus status) {
  switch (status) {
    case SagaStatus::kRunning:
      return "RUNNING";
    case SagaStatus::kCompleted:
      return "COMPLETED";
    case SagaStatus::kCompensating:
      return "COMPENSATING";
    case SagaStatus::kCompensated:
      return "COMPENSATED";
    case SagaStatus::kFailed:
      return "FAILED";
  }
  return "UNKNOWN";
}

std::string_view StepStatusName(StepStatus status) {
  switch (status) {
    case StepStatus::kPending:
      return "PENDING";
    case StepStatus::kRunning:
      return "RUNNING";
    case StepStatus::kSucceeded:
      return "SUCCEEDED";
    case StepStatus::kFailed:
      return "FAILED";
    case StepStatus::kCompensating:
      return "COMPENSATING";
    case StepStatus::kCompensated:
      return "COMPENSATED";
    case StepStatus::kCompensationFailed:
      return "COMPENSATION_FAILED";
  }
  return "UNKNOWN";
}

bool IsTerminal(SagaStatus status) {
  return status == SagaStatus::kCompleted || status == SagaStatus::kCompensated;
}

bool IsTerminalEvent(EventType type) {
  return type == EventType::kSagaCompleted || type == EventType::kSagaCompensated ||
         type == EventType::kSagaFailed;
}

bool ParseSagaStatus(std::string_view name, SagaStatus* out) {
  for (auto s : {SagaStatus::kRunning, SagaStatus::kCompleted, SagaStatus::kCompensating,
                 SagaStatus::kCompensated, SagaStatus::kFailed}) {
    if (SagaStatusName(s) == name) {
      *out = s;
      return true;
    }
  }
  return false;
}

}  // namespace saga::engine
