// Early-return helpers for absl::Status / absl::StatusOr (this abseil has none public).
#ifndef MPLUS_ENGINE_STATUS_MACROS_H_
#define MPLUS_ENGINE_STATUS_MACROS_H_

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define MPLUS_STATUS_CONCAT_INNER(a, b) a##b
#define MPLUS_STATUS_CONCAT(a, b) MPLUS_STATUS_CONCAT_INNER(a, b)

// Returns the status from the enclosing function when `expr` is not OK.
#define MPLUS_RETURN_IF_ERROR(expr)                                                  \
  do {                                                                               \
    if (absl::Status mplus_status = (expr); !mplus_status.ok()) return mplus_status; \
  } while (0)

// `lhs = value of expr`, or returns its error status.
#define MPLUS_ASSIGN_OR_RETURN(lhs, expr) \
  MPLUS_ASSIGN_OR_RETURN_IMPL(MPLUS_STATUS_CONCAT(mplus_statusor_, __LINE__), lhs, expr)
#define MPLUS_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                                \
  if (!tmp.ok()) return tmp.status();               \
  lhs = std::move(*tmp)

#endif  // MPLUS_ENGINE_STATUS_MACROS_H_
