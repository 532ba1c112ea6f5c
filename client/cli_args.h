// Command-line parsing for `mplus`: absl flags anywhere among subcommand words, with usage
// errors returned (not exit(1) as absl::ParseCommandLine does) so the CLI can exit with 2.
#ifndef MPLUS_CLIENT_CLI_ARGS_H_
#define MPLUS_CLIENT_CLI_ARGS_H_

#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace mplus::client {

struct ParsedArgs {
  // Non-flag words in order (subcommand, ids, text); everything after "--" lands here too.
  std::vector<std::string> positional;
  // Values of the repeatable flags, every occurrence kept whole (commas included).
  std::map<std::string, std::vector<std::string>> repeated;
  // --help or -h was given.
  bool help = false;
};

// Parses argv[1..]: --name=value, --name value, --bool_flag, --nobool_flag (single dash works
// too). Each name must be a registered absl flag; its value is set with the flag's own parser.
// Names in `repeatable` are collected into `repeated` instead of being set.
absl::StatusOr<ParsedArgs> ParseArgs(int argc, const char* const* argv,
                                     const std::set<std::string>& repeatable);

}  // namespace mplus::client

#endif  // MPLUS_CLIENT_CLI_ARGS_H_
