#include "client/mplus_client.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <ostream>
#include <utility>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "google/protobuf/io/zero_copy_stream_impl.h"
#include "google/protobuf/util/delimited_message_util.h"

namespace mplus::client {
namespace {

absl::BitGen& ThreadBitGen() {
  thread_local absl::BitGen gen;
  return gen;
}

int ClampedMillis(absl::Duration d) {
  return static_cast<int>(
      std::clamp<int64_t>(absl::ToInt64Milliseconds(d), 1, std::numeric_limits<int>::max()));
}

// gRPC rejects metadata values outside printable ASCII; such an id is invalid anyway, so the
// header is left out and the server reports the bad id.
bool IsHeaderSafe(const std::string& value) {
  return !value.empty() &&
         std::all_of(value.begin(), value.end(), [](char c) { return c >= 0x20 && c <= 0x7e; });
}

absl::Status WithAttempts(const absl::Status& status, int attempts) {
  if (attempts <= 1) return status;
  return absl::Status(status.code(),
                      absl::StrCat(status.message(), " (gave up after ", attempts, " attempts)"));
}

}  // namespace

absl::Status ToAbslStatus(const grpc::Status& status) {
  const int code = static_cast<int>(status.error_code());
  // gRPC and absl number their canonical codes identically (0..16).
  if (code < 0 || code > static_cast<int>(absl::StatusCode::kUnauthenticated)) {
    return absl::UnknownError(status.error_message());
  }
  return absl::Status(static_cast<absl::StatusCode>(code), status.error_message());
}

std::string RandomRequestId() {
  absl::BitGen& gen = ThreadBitGen();
  return absl::StrFormat("r-%016x%016x", absl::Uniform<uint64_t>(gen),
                         absl::Uniform<uint64_t>(gen));
}

void CancelToken::Cancel() {
  absl::MutexLock lock(&mu_);
  cancelled_ = true;
  if (context_ != nullptr) context_->TryCancel();
}

bool CancelToken::cancelled() const {
  absl::MutexLock lock(&mu_);
  return cancelled_;
}

void CancelToken::Attach(grpc::ClientContext* context) {
  absl::MutexLock lock(&mu_);
  context_ = context;
  if (context_ != nullptr && cancelled_) context_->TryCancel();
}

std::unique_ptr<MemoryClient> MemoryClient::Create(const ClientOptions& options) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, ClampedMillis(options.keepalive_time));
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, ClampedMillis(options.keepalive_timeout));
  // Retries are ours (RunWithRetries): gRPC's transparent ones would hide attempts from it.
  args.SetInt(GRPC_ARG_ENABLE_RETRIES, 0);
  // Export chunks and Inject texts may exceed gRPC's 4 MiB default.
  args.SetMaxReceiveMessageSize(std::numeric_limits<int>::max());
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  if (options.use_tls) {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = options.tls_root_certs_pem;
    credentials = grpc::SslCredentials(ssl);
  } else {
    credentials = grpc::InsecureChannelCredentials();
  }
  return std::make_unique<MemoryClient>(
      grpc::CreateCustomChannel(options.target, credentials, args), options);
}

MemoryClient::MemoryClient(std::shared_ptr<grpc::Channel> channel, const ClientOptions& options)
    : channel_(std::move(channel)),
      stub_(v1::MemoryService::NewStub(channel_)),
      options_(options) {}

std::unique_ptr<grpc::ClientContext> MemoryClient::NewContext(absl::Time deadline,
                                                              const std::string& session_id) const {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(absl::ToChronoTime(deadline));
  if (IsHeaderSafe(session_id)) context->AddMetadata(kSessionHeader, session_id);
  return context;
}

absl::Duration MemoryClient::Backoff(int retry) {
  const RetryPolicy& p = options_.retry;
  const double base = std::min(
      absl::ToDoubleSeconds(p.initial_backoff) * std::pow(std::max(p.multiplier, 1.0), retry - 1),
      absl::ToDoubleSeconds(p.max_backoff));
  const double jitter = std::clamp(p.jitter, 0.0, 1.0);
  if (jitter == 0.0 || base <= 0.0) return absl::Seconds(std::max(base, 0.0));
  return absl::Seconds(absl::Uniform(ThreadBitGen(), base * (1 - jitter), base * (1 + jitter)));
}

absl::Status MemoryClient::RunWithRetries(
    absl::Time deadline,
    const std::function<absl::Status(absl::Time deadline, bool* retryable)>& attempt) {
  const int max_attempts = std::max(1, options_.retry.max_attempts);
  for (int n = 1;; ++n) {
    bool retryable = true;
    absl::Status status = attempt(deadline, &retryable);
    if (status.ok() || status.code() != absl::StatusCode::kUnavailable || !retryable) {
      return status;
    }
    if (n >= max_attempts) return WithAttempts(status, n);
    const absl::Duration wait = Backoff(n);
    if (absl::Now() + wait >= deadline) return WithAttempts(status, n);
    absl::SleepFor(wait);
  }
}

template <typename Request, typename Response>
absl::StatusOr<Response> MemoryClient::CallUnary(
    grpc::Status (v1::MemoryService::Stub::*method)(grpc::ClientContext*, const Request&,
                                                    Response*),
    const Request& request, const std::string& session_id) {
  Response response;
  absl::Status status =
      RunWithRetries(absl::Now() + options_.timeout, [&](absl::Time deadline, bool*) {
        std::unique_ptr<grpc::ClientContext> context = NewContext(deadline, session_id);
        return ToAbslStatus((stub_.get()->*method)(context.get(), request, &response));
      });
  if (!status.ok()) return status;
  return response;
}

absl::StatusOr<v1::Session> MemoryClient::CreateSession(
    const std::string& session_id, const std::map<std::string, std::string>& labels,
    uint64_t seed) {
  v1::CreateSessionRequest request;
  request.set_session_id(session_id);
  request.mutable_labels()->insert(labels.begin(), labels.end());
  request.set_seed(seed);
  return CallUnary(&v1::MemoryService::Stub::CreateSession, request, session_id);
}

absl::StatusOr<v1::Session> MemoryClient::GetSession(const std::string& session_id) {
  v1::GetSessionRequest request;
  request.set_session_id(session_id);
  return CallUnary(&v1::MemoryService::Stub::GetSession, request, session_id);
}

absl::StatusOr<v1::ListSessionsResponse> MemoryClient::ListSessions(int32_t page_size,
                                                                    const std::string& page_token) {
  v1::ListSessionsRequest request;
  request.set_page_size(page_size);
  request.set_page_token(page_token);
  return CallUnary(&v1::MemoryService::Stub::ListSessions, request, std::string());
}

absl::Status MemoryClient::ForEachSession(const std::function<bool(const v1::Session&)>& visit,
                                          int32_t page_size) {
  std::string token;
  do {
    absl::StatusOr<v1::ListSessionsResponse> page = ListSessions(page_size, token);
    if (!page.ok()) return page.status();
    for (const v1::Session& session : page->sessions()) {
      if (!visit(session)) return absl::OkStatus();
    }
    token = page->next_page_token();
  } while (!token.empty());
  return absl::OkStatus();
}

absl::StatusOr<std::vector<v1::Session>> MemoryClient::ListAllSessions() {
  std::vector<v1::Session> sessions;
  absl::Status status = ForEachSession([&](const v1::Session& s) {
    sessions.push_back(s);
    return true;
  });
  if (!status.ok()) return status;
  return sessions;
}

absl::Status MemoryClient::DeleteSession(const std::string& session_id) {
  v1::DeleteSessionRequest request;
  request.set_session_id(session_id);
  return CallUnary(&v1::MemoryService::Stub::DeleteSession, request, session_id).status();
}

absl::StatusOr<v1::InjectResponse> MemoryClient::InjectText(const std::string& session_id,
                                                            const std::string& text,
                                                            const std::string& request_id,
                                                            int32_t chunk_tokens) {
  v1::InjectRequest request;
  request.set_session_id(session_id);
  request.set_text(text);
  request.set_request_id(request_id);
  request.set_chunk_tokens(chunk_tokens);
  return Inject(std::move(request));
}

absl::StatusOr<v1::InjectResponse> MemoryClient::InjectTokenIds(
    const std::string& session_id, const std::vector<int32_t>& token_ids,
    const std::string& request_id, int32_t chunk_tokens) {
  v1::InjectRequest request;
  request.set_session_id(session_id);
  request.mutable_token_ids()->mutable_ids()->Add(token_ids.begin(), token_ids.end());
  request.set_request_id(request_id);
  request.set_chunk_tokens(chunk_tokens);
  return Inject(std::move(request));
}

absl::StatusOr<v1::InjectResponse> MemoryClient::Inject(v1::InjectRequest request) {
  // The key makes the retry below safe: the server answers a repeat with the first result.
  if (request.request_id().empty()) request.set_request_id(RandomRequestId());
  return CallUnary(&v1::MemoryService::Stub::Inject, request, request.session_id());
}

absl::StatusOr<GenerateResult> MemoryClient::Generate(const v1::GenerateRequest& request,
                                                      const GenerateCallback& on_response,
                                                      CancelToken* cancel) {
  GenerateResult result;
  bool cancelled_by_callback = false;
  absl::Status status =
      RunWithRetries(absl::Now() + options_.timeout, [&](absl::Time deadline, bool* retryable) {
        if (cancel != nullptr && cancel->cancelled()) {
          return absl::CancelledError("generation cancelled by the client");
        }
        std::unique_ptr<grpc::ClientContext> context = NewContext(deadline, request.session_id());
        if (cancel != nullptr) cancel->Attach(context.get());
        std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader =
            stub_->Generate(context.get(), request);
        v1::GenerateResponse response;
        while (reader->Read(&response)) {
          // Text was handed out: a retry would repeat it.
          *retryable = false;
          result.text += response.text();
          result.token_ids.insert(result.token_ids.end(), response.token_ids().begin(),
                                  response.token_ids().end());
          if (response.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
            result.finish_reason = response.finish_reason();
          }
          if (response.has_usage()) result.usage = response.usage();
          if (on_response && !on_response(response)) {
            cancelled_by_callback = true;
            context->TryCancel();
            break;
          }
        }
        const grpc::Status finished = reader->Finish();
        if (cancel != nullptr) cancel->Attach(nullptr);
        if (cancelled_by_callback) {
          return absl::CancelledError("generation cancelled by the client");
        }
        return ToAbslStatus(finished);
      });
  if (!status.ok()) return status;
  return result;
}

absl::Status MemoryClient::ExportAttempt(absl::Time deadline, const std::string& session_id,
                                         std::ostream& out, ExportStats* stats, bool* started) {
  std::unique_ptr<grpc::ClientContext> context = NewContext(deadline, session_id);
  v1::ExportSessionRequest request;
  request.set_session_id(session_id);
  std::unique_ptr<grpc::ClientReader<v1::SessionChunk>> reader =
      stub_->ExportSession(context.get(), request);
  *stats = ExportStats();
  bool saw_last = false;
  absl::Status local;
  v1::SessionChunk chunk;
  while (reader->Read(&chunk)) {
    if (!*started) {
      *started = true;
      out.write(kExportFileMagic, sizeof(kExportFileMagic) - 1);
    }
    if (!google::protobuf::util::SerializeDelimitedToOstream(chunk, &out) || !out.good()) {
      local = absl::DataLossError("writing the export failed");
      context->TryCancel();
      break;
    }
    ++stats->chunks;
    stats->data_bytes += static_cast<int64_t>(chunk.data().size());
    saw_last = chunk.last();
  }
  const grpc::Status finished = reader->Finish();
  if (!local.ok()) return local;
  if (!finished.ok()) return ToAbslStatus(finished);
  if (!saw_last) return absl::DataLossError("export stream ended without its last chunk");
  return absl::OkStatus();
}

absl::StatusOr<ExportStats> MemoryClient::ExportSession(const std::string& session_id,
                                                        std::ostream& out) {
  ExportStats stats;
  absl::Status status =
      RunWithRetries(absl::Now() + options_.timeout, [&](absl::Time deadline, bool* retryable) {
        bool started = false;
        absl::Status s = ExportAttempt(deadline, session_id, out, &stats, &started);
        if (started) *retryable = false;
        return s;
      });
  if (!status.ok()) return status;
  return stats;
}

absl::StatusOr<ExportStats> MemoryClient::ExportSessionToFile(const std::string& session_id,
                                                              const std::string& path) {
  const std::string partial = path + ".partial";
  ExportStats stats;
  absl::Status status =
      RunWithRetries(absl::Now() + options_.timeout, [&](absl::Time deadline, bool*) {
        std::ofstream out(partial, std::ios::binary | std::ios::trunc);
        if (!out) return absl::PermissionDeniedError(absl::StrCat("cannot write ", partial));
        bool started = false;
        absl::Status s = ExportAttempt(deadline, session_id, out, &stats, &started);
        out.close();
        if (s.ok() && !out) s = absl::DataLossError(absl::StrCat("writing ", partial, " failed"));
        return s;
      });
  std::error_code ec;
  if (status.ok()) {
    std::filesystem::rename(partial, path, ec);
    if (ec)
      status = absl::PermissionDeniedError(
          absl::StrCat("cannot rename ", partial, " to ", path, ": ", ec.message()));
  }
  if (!status.ok()) {
    std::filesystem::remove(partial, ec);
    return status;
  }
  return stats;
}

absl::StatusOr<v1::Session> MemoryClient::ImportSessionFromFile(const std::string& path,
                                                                const std::string& new_session_id) {
  v1::Session session;
  absl::Status status =
      RunWithRetries(absl::Now() + options_.timeout, [&](absl::Time deadline, bool*) {
        std::ifstream in(path, std::ios::binary);
        if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
        std::string magic(sizeof(kExportFileMagic) - 1, '\0');
        if (!in.read(magic.data(), static_cast<std::streamsize>(magic.size())) ||
            magic != kExportFileMagic) {
          return absl::InvalidArgumentError(absl::StrCat(path, " is not an mplus export file"));
        }
        google::protobuf::io::IstreamInputStream input(&in);
        auto read_chunk = [&](v1::SessionChunk* chunk, bool* clean_eof) {
          return google::protobuf::util::ParseDelimitedFromZeroCopyStream(chunk, &input, clean_eof);
        };
        v1::SessionChunk chunk;
        bool eof = false;
        if (!read_chunk(&chunk, &eof) || !chunk.has_session()) {
          return absl::DataLossError(absl::StrCat(path, ": missing or corrupt header chunk"));
        }
        if (!new_session_id.empty()) chunk.mutable_session()->set_session_id(new_session_id);
        std::unique_ptr<grpc::ClientContext> context =
            NewContext(deadline, chunk.session().session_id());
        std::unique_ptr<grpc::ClientWriter<v1::SessionChunk>> writer =
            stub_->ImportSession(context.get(), &session);
        absl::Status local;
        // A failed Write means the server ended the call; Finish() below says why.
        while (writer->Write(chunk)) {
          if (!read_chunk(&chunk, &eof)) {
            if (!eof) {
              local = absl::DataLossError(absl::StrCat(path, ": corrupt chunk"));
              context->TryCancel();
            }
            break;
          }
        }
        if (local.ok()) writer->WritesDone();
        const grpc::Status finished = writer->Finish();
        if (!local.ok()) return local;
        return ToAbslStatus(finished);
      });
  if (!status.ok()) return status;
  return session;
}

}  // namespace mplus::client
