// mplus: command-line client of an mplus-server (sessions, inject, generate, export/import).
#include <cstdio>
#include <string>

#include "absl/status/statusor.h"
#include "client/cli_args.h"
#include "client/cli_commands.h"

int main(int argc, char** argv) {
  absl::StatusOr<mplus::client::ParsedArgs> args =
      mplus::client::ParseArgs(argc, argv, mplus::client::RepeatableFlags());
  if (!args.ok()) {
    std::fprintf(stderr, "mplus: %s\nRun 'mplus help' for usage.\n",
                 std::string(args.status().message()).c_str());
    return mplus::client::kExitUsage;
  }
  if (args->positional.empty() && !args->help) {
    mplus::client::PrintHelp(stderr);
    return mplus::client::kExitUsage;
  }
  if (args->help || args->positional[0] == "help") {
    mplus::client::PrintHelp(stdout);
    return mplus::client::kExitOk;
  }
  return mplus::client::RunCli(*args);
}
