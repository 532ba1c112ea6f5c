// The `mplus` subcommands.
#ifndef MPLUS_CLIENT_CLI_COMMANDS_H_
#define MPLUS_CLIENT_CLI_COMMANDS_H_

#include <cstdio>
#include <set>
#include <string>

#include "client/cli_args.h"

namespace mplus::client {

// Exit codes of `mplus`.
inline constexpr int kExitOk = 0;
inline constexpr int kExitError = 1;  // the server (or a local file) failed
inline constexpr int kExitUsage = 2;

// Flags that may be given several times (collected by ParseArgs, values kept whole).
inline const std::set<std::string>& RepeatableFlags() {
  static const std::set<std::string> kFlags = {"label", "stop"};
  return kFlags;
}

// Explains every subcommand and flag.
void PrintHelp(FILE* out);

// Runs the subcommand in `args.positional`; returns the exit code.
int RunCli(const ParsedArgs& args);

}  // namespace mplus::client

#endif  // MPLUS_CLIENT_CLI_COMMANDS_H_
