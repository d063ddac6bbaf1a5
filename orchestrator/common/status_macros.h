// Early-return helpers for absl::Status and absl::StatusOr.
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define SAGA_STATUS_CONCAT_INNER_(a, b) a##b
#define SAGA_STATUS_CONCAT_(a, b) SAGA_STATUS_CONCAT_INNER_(a, b)

// Returns the status from the enclosing function if `expr` is not OK.
#define SAGA_RETURN_IF_ERROR(expr)               \
  do {                                           \
    ::absl::Status saga_status_ = (expr);        \
    if (!saga_status_.ok()) return saga_status_; \
  } while (false)

// `SAGA_ASSIGN_OR_RETURN(auto x, F());` declares x from the StatusOr or returns its error.
#define SAGA_ASSIGN_OR_RETURN(lhs, expr) \
  SAGA_ASSIGN_OR_RETURN_IMPL_(SAGA_STATUS_CONCAT_(saga_statusor_, __LINE__), lhs, expr)

#define SAGA_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, expr) \
  auto statusor = (expr);                                \
  if (!statusor.ok()) return statusor.status();          \
  lhs = std::move(statusor).value()
