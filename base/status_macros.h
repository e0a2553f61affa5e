// Early-return helpers for absl::Status and absl::StatusOr.
//
// Debian 12's Abseil (20220623) has no status macros of its own, so cvmbus carries these two.
#ifndef CVMBUS_BASE_STATUS_MACROS_H_
#define CVMBUS_BASE_STATUS_MACROS_H_

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

// Returns from the enclosing function with the status of `expr` if it is not OK.
#define CVMBUS_RETURN_IF_ERROR(expr)                 \
  do {                                               \
    ::absl::Status cvmbus_status_ = (expr);          \
    if (!cvmbus_status_.ok()) return cvmbus_status_; \
  } while (0)

#define CVMBUS_STATUS_CONCAT_INNER_(a, b) a##b
#define CVMBUS_STATUS_CONCAT_(a, b) CVMBUS_STATUS_CONCAT_INNER_(a, b)

// `CVMBUS_ASSIGN_OR_RETURN(T x, StatusOrExpr)`: declares and assigns `x` from the value of an
// absl::StatusOr, or returns its status from the enclosing function.
#define CVMBUS_ASSIGN_OR_RETURN(lhs, expr) \
  CVMBUS_ASSIGN_OR_RETURN_IMPL_(CVMBUS_STATUS_CONCAT_(cvmbus_statusor_, __LINE__), lhs, expr)

#define CVMBUS_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, expr) \
  auto statusor = (expr);                                  \
  if (!statusor.ok()) return std::move(statusor).status(); \
  lhs = std::move(statusor).value()

#endif  // CVMBUS_BASE_STATUS_MACROS_H_
