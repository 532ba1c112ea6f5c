// Makes --help list the flags of the calling program's main file. Abseil's default only lists
// flags from files named after the program (mplus-server ≠ server/main.cc), so --help would
// print "No flags matched".
#ifndef MPLUS_COMMON_FLAGS_HELP_H_
#define MPLUS_COMMON_FLAGS_HELP_H_

#include <string>

#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"

namespace mplus {

// Call before absl::ParseCommandLine with __FILE__ of the file defining the flags.
inline void ShowFlagsOfFileInHelp(const char* main_file) {
  const std::string file = main_file;
  absl::FlagsUsageConfig config;
  config.contains_help_flags = [file](absl::string_view path) {
    return absl::EndsWith(file, path) || absl::EndsWith(path, file);
  };
  absl::SetFlagsUsageConfig(config);
}

}  // namespace mplus

#endif  // MPLUS_COMMON_FLAGS_HELP_H_
