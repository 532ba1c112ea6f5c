// mplus-tokenize: encodes JSON lines {"text": ...} from stdin into {"ids": [...]} lines on
// stdout with a tokenizer.json (no BOS), e.g. to check against another tokenizer.
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/match.h"
#include "common/flags_help.h"
#include "engine/tokenizer.h"
#include "nlohmann/json.hpp"

ABSL_FLAG(std::string, tokenizer, "", "Path of a Hugging Face tokenizer.json (required).");
ABSL_FLAG(bool, parse_special, false,
          "Turn added/special-token strings in the text (\"<|eot_id|>\") into their ids; "
          "otherwise they are plain text.");

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Tokenizes JSON lines.\n"
      "  mplus-tokenize --tokenizer PATH/tokenizer.json [--parse_special] < in.jsonl > out.jsonl\n"
      "Each input line is an object {\"text\": string, ...}; each output line is {\"ids\": [...]}"
      "\n(no BOS). Blank lines are skipped. A bad line stops the run with exit status 1.");
  // --help lists the flags of files named like the program; ours is tokenize_main.cc.
  mplus::ShowFlagsOfFileInHelp(__FILE__);
  absl::ParseCommandLine(argc, argv);
  const std::string path = absl::GetFlag(FLAGS_tokenizer);
  if (path.empty()) {
    std::fprintf(stderr, "mplus-tokenize: --tokenizer is required (see --help)\n");
    return 2;
  }
  auto tokenizer = mplus::engine::Tokenizer::Load(path);
  if (!tokenizer.ok()) {
    std::fprintf(stderr, "mplus-tokenize: %s\n", tokenizer.status().ToString().c_str());
    return 1;
  }
  const bool parse_special = absl::GetFlag(FLAGS_parse_special);
  std::string line;
  for (int lineno = 1; std::getline(std::cin, line); ++lineno) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const nlohmann::json record = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (record.is_discarded()) {
      std::fprintf(stderr, "mplus-tokenize: stdin line %d: not valid JSON\n", lineno);
      return 1;
    }
    if (!record.is_object() || !record.contains("text") || !record["text"].is_string()) {
      std::fprintf(stderr, "mplus-tokenize: stdin line %d: want an object with a string \"text\"\n",
                   lineno);
      return 1;
    }
    const std::vector<int32_t> ids =
        (*tokenizer)->Encode(record["text"].get_ref<const std::string&>(), parse_special);
    std::cout << nlohmann::json{{"ids", ids}}.dump() << '\n';
  }
  std::cout.flush();
  if (!std::cout) {
    std::fprintf(stderr, "mplus-tokenize: writing stdout failed\n");
    return 1;
  }
  return 0;
}
