#include "server/logging.h"

#include <unistd.h>

#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace mplus::server {

void LogLine(LogLevel level, std::string_view message) {
  static constexpr const char* kNames[] = {"INFO", "WARN", "ERROR"};
  std::string line =
      absl::StrCat(absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(), absl::UTCTimeZone()), " ",
                   kNames[static_cast<int>(level)], " ",
                   absl::string_view(message.data(), message.size()), "\n");
  // One write() keeps lines whole across threads.
  ssize_t ignored = write(STDERR_FILENO, line.data(), line.size());
  (void)ignored;
}

}  // namespace mplus::server
