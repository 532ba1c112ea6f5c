#include "client/cli_commands.h"

#include <cstdint>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "client/mplus_client.h"
#include "client/progress.h"
#include "client/text_pieces.h"
#include "google/protobuf/util/json_util.h"
#include "google/protobuf/util/time_util.h"

// Connection (every subcommand).
ABSL_FLAG(std::string, server, "127.0.0.1:50051", "mplus-server address, HOST:PORT.");
ABSL_FLAG(double, timeout, 300, "Deadline of each call in seconds, retries included.");
ABSL_FLAG(int, max_attempts, 5, "Attempts per call when the server is UNAVAILABLE (1: no retry).");
ABSL_FLAG(bool, tls, false, "Connect with TLS.");
ABSL_FLAG(std::string, tls_ca_file, "",
          "PEM file of the TLS root certificates (default roots if empty).");
ABSL_FLAG(bool, json, false, "Print sessions as JSON (one object per line).");
// session create
ABSL_FLAG(std::string, id, "", "session create: the new session's id (empty: server-chosen).");
ABSL_FLAG(std::vector<std::string>, label, {}, "session create: a label KEY=VALUE (repeatable).");
ABSL_FLAG(uint64_t, drop_seed, 0,
          "session create: seed of the memory drop choice (0: from the id).");
// inject / generate / export / import
ABSL_FLAG(std::string, session, "",
          "The session id (import: the id to give the imported session).");
ABSL_FLAG(std::string, file, "", "inject: a file to inject ('-': standard input).");
ABSL_FLAG(int64_t, chunk_bytes, 65536, "inject: bytes per Inject call when splitting large texts.");
ABSL_FLAG(int, chunk_tokens, 0, "inject: tokens per memory chunk (0: the server's default).");
ABSL_FLAG(int, max_new_tokens, 0, "generate: tokens to generate at most (0: server default).");
ABSL_FLAG(double, temperature, 0, "generate: softmax temperature; 0 is greedy.");
ABSL_FLAG(double, top_p, 0, "generate: nucleus mass in (0, 1]; 0 or 1 disables.");
ABSL_FLAG(int, top_k, 0, "generate: keep the k most likely tokens; 0 disables.");
ABSL_FLAG(double, min_p, 0, "generate: drop tokens below min_p x the top probability; 0 disables.");
ABSL_FLAG(double, repetition_penalty, 0, "generate: penalty of repeated tokens; 0 or 1 disables.");
ABSL_FLAG(std::vector<std::string>, stop, {}, "generate: a stop string (repeatable).");
ABSL_FLAG(uint64_t, seed, 0, "generate: sampler seed.");
ABSL_FLAG(std::string, out, "", "export: the file to write.");
ABSL_FLAG(std::string, in, "", "import: the export file to read.");

namespace mplus::client {
namespace {

constexpr char kHelp[] = R"(mplus: command-line client of mplus-server (mplus.v1.MemoryService).

Usage: mplus [global flags] COMMAND [flags] [ARGS]

Commands:
  session create [--id ID] [--label KEY=VALUE ...] [--drop_seed N]
      Creates a session (the server picks the id when --id is empty) and prints it.
  session get ID
      Prints a session's metadata and counters.
  session list
      Lists every session (all pages).
  session delete ID
      Deletes a session and all of its memory.
  inject --session S (--file F | TEXT...)
      Writes text into the session's memory. Large inputs are split at whitespace (or UTF-8
      character boundaries) into pieces of about --chunk_bytes, one Inject call each. Pieces of
      a --file carry request ids derived from the file's content, so re-running an interrupted
      upload skips what the server already applied. Uploads of several pieces show progress on
      stderr (a bar on a terminal, a line every few seconds otherwise). Flags: --chunk_bytes
      (default 65536), --chunk_tokens.
  generate --session S [sampling flags] PROMPT...
      Streams a continuation of PROMPT to stdout as it is generated; the finish reason and token
      counts go to stderr. Sampling flags: --max_new_tokens N --temperature T --top_p P
      --top_k K --min_p P --repetition_penalty R --stop STRING (repeatable) --seed N.
  export --session S --out FILE
      Saves a snapshot of the session to FILE (written as FILE.partial, renamed when complete).
  import --in FILE [--session NEWID]
      Recreates a session from an export (same model required), optionally under a new id.
  help
      Shows this text (also --help).

Global flags:
  --server=HOST:PORT   server address (default 127.0.0.1:50051)
  --timeout=SECONDS    deadline of each call, retries included (default 300)
  --max_attempts=N     attempts when the server is UNAVAILABLE, with exponential backoff (5)
  --tls                use TLS; --tls_ca_file=PEM for custom roots
  --json               print sessions as JSON

Flags may come before or after the command words; "--" ends flags (for text starting with -).

Exit status: 0 success, 1 the server or a file operation failed (the gRPC code and message are
printed), 2 usage error.
)";

// A usage error: message on stderr, exit 2.
int Usage(const std::string& message) {
  std::fprintf(stderr, "mplus: %s\nRun 'mplus help' for usage.\n", message.c_str());
  return kExitUsage;
}

// A failed call: code and message on stderr, exit 1.
int Fail(const absl::Status& status, const std::string& context = "") {
  std::fprintf(stderr, "mplus: %s%s%s: %s\n", context.c_str(), context.empty() ? "" : ": ",
               absl::StatusCodeToString(status.code()).c_str(),
               std::string(status.message()).c_str());
  return kExitError;
}

std::string FormatTime(const google::protobuf::Timestamp& t) {
  if (t.seconds() == 0 && t.nanos() == 0) return "-";
  return google::protobuf::util::TimeUtil::ToString(t);
}

std::string Labels(const v1::Session& s) {
  // Sorted for stable output (proto maps have no order).
  const std::map<std::string, std::string> sorted(s.labels().begin(), s.labels().end());
  return absl::StrJoin(sorted, ",", absl::PairFormatter("="));
}

std::string ToJson(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  std::string json;
  if (!google::protobuf::util::MessageToJsonString(message, &json, options).ok()) {
    json = "{}";
  }
  return json;
}

void PrintSession(const v1::Session& s) {
  if (absl::GetFlag(FLAGS_json)) {
    std::printf("%s\n", ToJson(s).c_str());
    return;
  }
  absl::PrintF(
      "session_id: %s\nlabels: %s\ninjected_tokens: %d\ninject_count: %d\nstm_tokens: %d\n"
      "ltm_tokens: %d\nresident: %s\ncreate_time: %s\nupdate_time: %s\n",
      s.session_id(), Labels(s), s.injected_tokens(), s.inject_count(), s.stm_tokens(),
      s.ltm_tokens(), s.resident() ? "true" : "false", FormatTime(s.create_time()),
      FormatTime(s.update_time()));
}

std::unique_ptr<MemoryClient> NewClient(std::string* error) {
  ClientOptions options;
  options.target = absl::GetFlag(FLAGS_server);
  options.timeout = absl::Seconds(absl::GetFlag(FLAGS_timeout));
  options.retry.max_attempts = absl::GetFlag(FLAGS_max_attempts);
  options.use_tls = absl::GetFlag(FLAGS_tls);
  if (const std::string ca = absl::GetFlag(FLAGS_tls_ca_file); !ca.empty()) {
    std::ifstream in(ca, std::ios::binary);
    if (!in) {
      *error = absl::StrCat("cannot read --tls_ca_file ", ca);
      return nullptr;
    }
    options.tls_root_certs_pem.assign(std::istreambuf_iterator<char>(in), {});
  }
  return MemoryClient::Create(options);
}

// Checks that exactly `n` words follow the command words.
bool Arity(const std::vector<std::string>& args, size_t n) { return args.size() == n; }

int SessionCommand(MemoryClient& client, const std::vector<std::string>& args) {
  if (args.size() < 2) return Usage("session needs a subcommand: create, get, list or delete");
  const std::string& sub = args[1];
  if (sub == "create") {
    if (!Arity(args, 2)) return Usage("session create takes no arguments (use --id)");
    std::map<std::string, std::string> labels;
    for (const std::string& kv : absl::GetFlag(FLAGS_label)) {
      const size_t eq = kv.find('=');
      if (eq == std::string::npos || eq == 0) return Usage("--label must be KEY=VALUE");
      labels[kv.substr(0, eq)] = kv.substr(eq + 1);
    }
    absl::StatusOr<v1::Session> s =
        client.CreateSession(absl::GetFlag(FLAGS_id), labels, absl::GetFlag(FLAGS_drop_seed));
    if (!s.ok()) return Fail(s.status());
    PrintSession(*s);
    return kExitOk;
  }
  if (sub == "get") {
    if (!Arity(args, 3)) return Usage("usage: mplus session get ID");
    absl::StatusOr<v1::Session> s = client.GetSession(args[2]);
    if (!s.ok()) return Fail(s.status());
    PrintSession(*s);
    return kExitOk;
  }
  if (sub == "list") {
    if (!Arity(args, 2)) return Usage("session list takes no arguments");
    const bool json = absl::GetFlag(FLAGS_json);
    if (!json)
      absl::PrintF("%-40s %15s %8s %12s %8s  %s\n", "SESSION_ID", "INJECTED_TOKENS", "INJECTS",
                   "LTM_TOKENS", "RESIDENT", "LABELS");
    absl::Status status = client.ForEachSession([&](const v1::Session& s) {
      if (json) {
        std::printf("%s\n", ToJson(s).c_str());
      } else {
        absl::PrintF("%-40s %15d %8d %12d %8s  %s\n", s.session_id(), s.injected_tokens(),
                     s.inject_count(), s.ltm_tokens(), s.resident() ? "yes" : "no", Labels(s));
      }
      return true;
    });
    return status.ok() ? kExitOk : Fail(status);
  }
  if (sub == "delete") {
    if (!Arity(args, 3)) return Usage("usage: mplus session delete ID");
    absl::Status status = client.DeleteSession(args[2]);
    if (!status.ok()) return Fail(status);
    absl::PrintF("deleted session %s\n", args[2]);
    return kExitOk;
  }
  return Usage(absl::StrCat("unknown session subcommand '", sub, "'"));
}

int InjectCommand(MemoryClient& client, const std::vector<std::string>& args) {
  const std::string session = absl::GetFlag(FLAGS_session);
  const std::string file = absl::GetFlag(FLAGS_file);
  if (session.empty()) return Usage("inject needs --session");
  if (file.empty() == (args.size() == 1)) return Usage("inject needs either --file F or TEXT");
  const int64_t chunk_bytes = absl::GetFlag(FLAGS_chunk_bytes);
  if (chunk_bytes < 4) return Usage("--chunk_bytes must be at least 4");

  std::string text;
  if (file.empty()) {
    text = absl::StrJoin(args.begin() + 1, args.end(), " ");
  } else if (file == "-") {
    text.assign(std::istreambuf_iterator<char>(std::cin), {});
  } else {
    std::ifstream in(file, std::ios::binary);
    if (!in) return Fail(absl::NotFoundError(absl::StrCat("cannot read ", file)));
    text.assign(std::istreambuf_iterator<char>(in), {});
  }
  if (text.empty()) return Usage("nothing to inject: the text is empty");

  const std::vector<std::string_view> pieces =
      SplitIntoPieces(text, static_cast<size_t>(chunk_bytes));
  // Progress only when the upload takes several calls.
  std::optional<Progress> progress;
  if (pieces.size() > 1) {
    progress.emplace(stderr, static_cast<int64_t>(text.size()),
                     static_cast<int64_t>(pieces.size()));
  }
  int64_t done_bytes = 0, tokens = 0, chunks = 0;
  v1::Session last;
  for (size_t i = 0; i < pieces.size(); ++i) {
    // Content-derived ids make a re-run of the same file resume; typed text is injected anew.
    const std::string request_id =
        file.empty() ? "" : PieceRequestId(text, static_cast<size_t>(chunk_bytes), i);
    absl::StatusOr<v1::InjectResponse> response = client.InjectText(
        session, std::string(pieces[i]), request_id, absl::GetFlag(FLAGS_chunk_tokens));
    if (!response.ok()) {
      if (progress) progress->Finish();
      return Fail(response.status(),
                  absl::StrFormat("piece %d of %d failed%s", i + 1, pieces.size(),
                                  file.empty() ? "" : " (re-run the same command to resume)"));
    }
    done_bytes += static_cast<int64_t>(pieces[i].size());
    tokens += response->tokens_injected();
    chunks += response->chunks();
    last = response->session();
    if (progress) progress->Update(done_bytes, static_cast<int64_t>(i + 1), tokens);
  }
  if (progress) progress->Finish();
  absl::PrintF("injected %d tokens in %d chunks (%d pieces) into session %s\n", tokens, chunks,
               pieces.size(), session);
  absl::PrintF("session %s: injected_tokens=%d inject_count=%d ltm_tokens=%d\n", last.session_id(),
               last.injected_tokens(), last.inject_count(), last.ltm_tokens());
  return kExitOk;
}

const char* FinishReasonName(v1::FinishReason reason) {
  switch (reason) {
    case v1::FINISH_REASON_STOP:
      return "stop";
    case v1::FINISH_REASON_LENGTH:
      return "length";
    case v1::FINISH_REASON_CANCELLED:
      return "cancelled";
    default:
      return "unspecified";
  }
}

int GenerateCommand(MemoryClient& client, const std::vector<std::string>& args) {
  const std::string session = absl::GetFlag(FLAGS_session);
  if (session.empty()) return Usage("generate needs --session");
  if (args.size() < 2) return Usage("generate needs a PROMPT");
  v1::GenerateRequest request;
  request.set_session_id(session);
  request.set_text(absl::StrJoin(args.begin() + 1, args.end(), " "));
  v1::SamplingParams& sampling = *request.mutable_sampling();
  sampling.set_max_new_tokens(absl::GetFlag(FLAGS_max_new_tokens));
  sampling.set_temperature(static_cast<float>(absl::GetFlag(FLAGS_temperature)));
  sampling.set_top_p(static_cast<float>(absl::GetFlag(FLAGS_top_p)));
  sampling.set_top_k(absl::GetFlag(FLAGS_top_k));
  sampling.set_min_p(static_cast<float>(absl::GetFlag(FLAGS_min_p)));
  sampling.set_repetition_penalty(static_cast<float>(absl::GetFlag(FLAGS_repetition_penalty)));
  for (const std::string& stop : absl::GetFlag(FLAGS_stop)) sampling.add_stop(stop);
  sampling.set_seed(absl::GetFlag(FLAGS_seed));

  absl::StatusOr<GenerateResult> result =
      client.Generate(request, [](const v1::GenerateResponse& response) {
        std::fwrite(response.text().data(), 1, response.text().size(), stdout);
        std::fflush(stdout);
        return true;
      });
  if (!result.ok()) {
    std::fflush(stdout);
    return Fail(result.status());
  }
  if (!result->text.empty() && result->text.back() != '\n') std::fputc('\n', stdout);
  std::fflush(stdout);
  const v1::Usage& usage = result->usage;
  absl::FPrintF(stderr,
                "[finish: %s | prompt %d tokens | completion %d tokens | retrieved ltm %d tokens"
                " | first token %.3f s | retrieval %.3f s]\n",
                FinishReasonName(result->finish_reason), usage.prompt_tokens(),
                usage.completion_tokens(), usage.retrieved_ltm_tokens(),
                usage.time_to_first_token_seconds(), usage.retrieval_seconds());
  return kExitOk;
}

int ExportCommand(MemoryClient& client, const std::vector<std::string>& args) {
  const std::string session = absl::GetFlag(FLAGS_session);
  const std::string out = absl::GetFlag(FLAGS_out);
  if (session.empty() || out.empty() || args.size() != 1) {
    return Usage("usage: mplus export --session S --out FILE");
  }
  absl::StatusOr<ExportStats> stats = client.ExportSessionToFile(session, out);
  if (!stats.ok()) return Fail(stats.status());
  absl::PrintF("exported session %s to %s (%d chunks, %d data bytes)\n", session, out,
               stats->chunks, stats->data_bytes);
  return kExitOk;
}

int ImportCommand(MemoryClient& client, const std::vector<std::string>& args) {
  const std::string in = absl::GetFlag(FLAGS_in);
  if (in.empty() || args.size() != 1) {
    return Usage("usage: mplus import --in FILE [--session NEWID]");
  }
  absl::StatusOr<v1::Session> session =
      client.ImportSessionFromFile(in, absl::GetFlag(FLAGS_session));
  if (!session.ok()) return Fail(session.status());
  PrintSession(*session);
  return kExitOk;
}

}  // namespace

void PrintHelp(FILE* out) { std::fputs(kHelp, out); }

int RunCli(const ParsedArgs& args) {
  if (auto it = args.repeated.find("label"); it != args.repeated.end()) {
    absl::SetFlag(&FLAGS_label, it->second);
  }
  if (auto it = args.repeated.find("stop"); it != args.repeated.end()) {
    absl::SetFlag(&FLAGS_stop, it->second);
  }
  if (absl::GetFlag(FLAGS_timeout) <= 0) return Usage("--timeout must be positive");

  const std::vector<std::string>& words = args.positional;
  const std::string& command = words[0];
  int (*run)(MemoryClient&, const std::vector<std::string>&) = nullptr;
  if (command == "session") {
    run = SessionCommand;
  } else if (command == "inject") {
    run = InjectCommand;
  } else if (command == "generate") {
    run = GenerateCommand;
  } else if (command == "export") {
    run = ExportCommand;
  } else if (command == "import") {
    run = ImportCommand;
  } else {
    return Usage(absl::StrCat("unknown command '", command, "'"));
  }
  std::string error;
  std::unique_ptr<MemoryClient> client = NewClient(&error);
  if (client == nullptr) return Fail(absl::NotFoundError(error));
  return run(*client, words);
}

}  // namespace mplus::client
