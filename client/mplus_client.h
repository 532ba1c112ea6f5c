// C++ client of mplus.v1.MemoryService: channel setup, deadlines, retries of idempotent calls on
// UNAVAILABLE, the session-affinity header, and typed methods returning absl::StatusOr.
#ifndef MPLUS_CLIENT_MPLUS_CLIENT_H_
#define MPLUS_CLIENT_MPLUS_CLIENT_H_

#include <cstdint>
#include <functional>
#include <iosfwd>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "mplus/v1/memory_service.grpc.pb.h"

namespace mplus::client {

// Metadata key sent with every call about one session, so that session-affine load balancers
// can route all of a session's calls to the replica holding its memory.
inline constexpr char kSessionHeader[] = "x-mplus-session";

// Retries of idempotent calls that fail with UNAVAILABLE: exponential backoff with jitter.
struct RetryPolicy {
  // Attempts in all, the first included (1: never retry).
  int max_attempts = 5;
  // Wait before the second attempt; each later wait is `multiplier` times longer, capped.
  absl::Duration initial_backoff = absl::Milliseconds(200);
  absl::Duration max_backoff = absl::Seconds(5);
  double multiplier = 2.0;
  // Each wait is drawn uniformly from [w * (1 - jitter), w * (1 + jitter)] so that clients
  // cut off together do not retry in lockstep.
  double jitter = 0.2;
};

struct ClientOptions {
  // gRPC target, e.g. "127.0.0.1:50051" or "dns:///mplus.example:443".
  std::string target = "127.0.0.1:50051";
  // TLS is off by default (the server listens on plaintext loopback by default).
  bool use_tls = false;
  // PEM roots for TLS; empty: gRPC's default roots.
  std::string tls_root_certs_pem;
  // Deadline of each call, retries and their backoff included (Generate: the whole stream).
  absl::Duration timeout = absl::Seconds(300);
  // HTTP/2 keepalive pings on an idle-looking connection. Not below the server's minimum ping
  // interval (gRPC's default: 5 minutes), or it answers with GOAWAY "too_many_pings".
  absl::Duration keepalive_time = absl::Minutes(5);
  absl::Duration keepalive_timeout = absl::Seconds(20);
  RetryPolicy retry;
};

// Maps a gRPC status to the absl::Status with the same code and message.
absl::Status ToAbslStatus(const grpc::Status& status);

// A random idempotency key ("r-" and 32 hex digits).
std::string RandomRequestId();

// Lets another thread cancel a running Generate (e.g. on SIGINT). Thread-safe; one token may
// serve one call at a time. Cancelling before the call starts cancels it as soon as it does.
class CancelToken {
 public:
  void Cancel();
  bool cancelled() const;

 private:
  friend class MemoryClient;
  // Registers the running call's context (nullptr: the call ended).
  void Attach(grpc::ClientContext* context);

  mutable absl::Mutex mu_;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  grpc::ClientContext* context_ ABSL_GUARDED_BY(mu_) = nullptr;
};

// What one Generate produced: the concatenated stream plus the last message's fields.
struct GenerateResult {
  std::string text;
  std::vector<int32_t> token_ids;
  v1::FinishReason finish_reason = v1::FINISH_REASON_UNSPECIFIED;
  v1::Usage usage;
};

// Called for every streamed message in order; returning false cancels the call.
using GenerateCallback = std::function<bool(const v1::GenerateResponse&)>;

// Totals of one ExportSession.
struct ExportStats {
  int64_t chunks = 0;
  int64_t data_bytes = 0;
};

// Export files are the 8-byte magic below followed by the streamed SessionChunk messages, each
// prefixed by its varint length (protobuf's delimited format).
inline constexpr char kExportFileMagic[] = "MPLSNAP1";

class MemoryClient {
 public:
  // Creates the channel (connection is lazy: nothing fails here for an unreachable server).
  static std::unique_ptr<MemoryClient> Create(const ClientOptions& options);
  // Uses an existing channel (tests, shared channels); `options.target`/TLS are ignored.
  MemoryClient(std::shared_ptr<grpc::Channel> channel, const ClientOptions& options);

  const ClientOptions& options() const { return options_; }

  // Empty `session_id`: the server picks one. `seed` 0: derived from the id.
  absl::StatusOr<v1::Session> CreateSession(const std::string& session_id,
                                            const std::map<std::string, std::string>& labels = {},
                                            uint64_t seed = 0);
  absl::StatusOr<v1::Session> GetSession(const std::string& session_id);
  // One page; `page_size` 0: the server's default.
  absl::StatusOr<v1::ListSessionsResponse> ListSessions(int32_t page_size = 0,
                                                        const std::string& page_token = "");
  // Every page in order; `visit` returning false stops early (still OK).
  absl::Status ForEachSession(const std::function<bool(const v1::Session&)>& visit,
                              int32_t page_size = 0);
  // Every session (convenience over ForEachSession).
  absl::StatusOr<std::vector<v1::Session>> ListAllSessions();
  absl::Status DeleteSession(const std::string& session_id);

  // Writes into memory. `request_id` empty: a random one, kept across retries, so a retried
  // Inject whose first attempt did reach the server is not applied twice. `chunk_tokens` 0: the
  // server's default.
  absl::StatusOr<v1::InjectResponse> InjectText(const std::string& session_id,
                                                const std::string& text,
                                                const std::string& request_id = "",
                                                int32_t chunk_tokens = 0);
  absl::StatusOr<v1::InjectResponse> InjectTokenIds(const std::string& session_id,
                                                    const std::vector<int32_t>& token_ids,
                                                    const std::string& request_id = "",
                                                    int32_t chunk_tokens = 0);
  // The general form (the request_id is filled in when empty).
  absl::StatusOr<v1::InjectResponse> Inject(v1::InjectRequest request);

  // Streams a generation; `on_response` (may be empty) sees each message as it arrives.
  // Retried on UNAVAILABLE only until the first message arrives (what was streamed cannot be
  // taken back). A cancel via callback or `cancel` returns CANCELLED.
  absl::StatusOr<GenerateResult> Generate(const v1::GenerateRequest& request,
                                          const GenerateCallback& on_response = nullptr,
                                          CancelToken* cancel = nullptr);

  // Writes the session's snapshot to `out` in the export file format. Retried on UNAVAILABLE
  // only until the first chunk is written (a stream cannot be rewound).
  absl::StatusOr<ExportStats> ExportSession(const std::string& session_id, std::ostream& out);
  // Same into a file, written under a temporary name and renamed when complete, so retries
  // restart from scratch and a failed export never leaves a truncated file at `path`.
  absl::StatusOr<ExportStats> ExportSessionToFile(const std::string& session_id,
                                                  const std::string& path);
  // Recreates a session from an export file; `new_session_id` non-empty renames it.
  absl::StatusOr<v1::Session> ImportSessionFromFile(const std::string& path,
                                                    const std::string& new_session_id = "");

 private:
  // A context with the call deadline and, when `session_id` is set, the affinity header.
  std::unique_ptr<grpc::ClientContext> NewContext(absl::Time deadline,
                                                  const std::string& session_id) const;
  // Runs `attempt` until it succeeds, fails with a code other than UNAVAILABLE, reports itself
  // not retryable (`*retryable` false), the attempts run out, or the deadline would pass.
  absl::Status RunWithRetries(
      absl::Time deadline,
      const std::function<absl::Status(absl::Time deadline, bool* retryable)>& attempt);
  // Backoff before retry number `retry` (1 = the first retry), jitter applied.
  absl::Duration Backoff(int retry);
  // A unary call with retries; `session_id` non-empty adds the affinity header.
  template <typename Request, typename Response>
  absl::StatusOr<Response> CallUnary(grpc::Status (v1::MemoryService::Stub::*method)(
                                         grpc::ClientContext*, const Request&, Response*),
                                     const Request& request, const std::string& session_id);
  // One ExportSession call into `out`; `*started` is set once anything was written to it.
  absl::Status ExportAttempt(absl::Time deadline, const std::string& session_id, std::ostream& out,
                             ExportStats* stats, bool* started);

  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::MemoryService::Stub> stub_;
  ClientOptions options_;
};

}  // namespace mplus::client

#endif  // MPLUS_CLIENT_MPLUS_CLIENT_H_
