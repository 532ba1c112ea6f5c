// Minimal structured logging to stderr: "<UTC time> <level> <message>". One line per call,
// written with a single write so concurrent lines never interleave.
#ifndef MPLUS_SERVER_LOGGING_H_
#define MPLUS_SERVER_LOGGING_H_

#include <string_view>

#include "absl/strings/str_format.h"

namespace mplus::server {

enum class LogLevel { kInfo, kWarning, kError };

void LogLine(LogLevel level, std::string_view message);

template <typename... Args>
void LogInfo(const absl::FormatSpec<Args...>& format, const Args&... args) {
  LogLine(LogLevel::kInfo, absl::StrFormat(format, args...));
}
template <typename... Args>
void LogWarning(const absl::FormatSpec<Args...>& format, const Args&... args) {
  LogLine(LogLevel::kWarning, absl::StrFormat(format, args...));
}
template <typename... Args>
void LogError(const absl::FormatSpec<Args...>& format, const Args&... args) {
  LogLine(LogLevel::kError, absl::StrFormat(format, args...));
}

}  // namespace mplus::server

#endif  // MPLUS_SERVER_LOGGING_H_
