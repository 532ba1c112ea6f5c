// MemoryClient against a real in-process gRPC server whose MemoryService fails on demand and
// records what each attempt carried.
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/mplus_client.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"

namespace mplus::client {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::StartsWith;

struct Attempt {
  std::string method;
  std::string session_header;  // "<none>" when absent
  std::string request_id;
  absl::Time time;
};

class FakeMemoryService final : public v1::MemoryService::Service {
 public:
  // The next `n` calls fail with UNAVAILABLE before doing anything.
  void FailNext(int n) { failures_left_ = n; }
  // Generate: messages sent before failing with UNAVAILABLE (-1: never fail mid-stream).
  void FailGenerateAfter(int messages) { generate_fail_after_ = messages; }
  // Generate keeps streaming until the client cancels.
  void StreamForever() { stream_forever_ = true; }

  std::vector<Attempt> attempts() const {
    absl::MutexLock lock(&mu_);
    return attempts_;
  }
  std::vector<v1::SessionChunk> imported() const {
    absl::MutexLock lock(&mu_);
    return imported_;
  }

  grpc::Status CreateSession(grpc::ServerContext* context, const v1::CreateSessionRequest* request,
                             v1::Session* response) override {
    response->set_session_id(request->session_id());
    return Record(context, "CreateSession");
  }
  grpc::Status GetSession(grpc::ServerContext* context, const v1::GetSessionRequest* request,
                          v1::Session* response) override {
    if (request->session_id() == "missing") {
      Record(context, "GetSession");
      return grpc::Status(grpc::StatusCode::NOT_FOUND, "no session 'missing'");
    }
    response->set_session_id(request->session_id());
    return Record(context, "GetSession");
  }
  grpc::Status ListSessions(grpc::ServerContext* context, const v1::ListSessionsRequest* request,
                            v1::ListSessionsResponse* response) override {
    // Five sessions s0..s4, two per page; the token is the next index.
    const int start = request->page_token().empty() ? 0 : std::stoi(request->page_token());
    for (int i = start; i < std::min(start + 2, 5); ++i) {
      response->add_sessions()->set_session_id(absl::StrCat("s", i));
    }
    if (start + 2 < 5) response->set_next_page_token(absl::StrCat(start + 2));
    return Record(context, "ListSessions");
  }
  grpc::Status DeleteSession(grpc::ServerContext* context, const v1::DeleteSessionRequest*,
                             v1::DeleteSessionResponse*) override {
    return Record(context, "DeleteSession");
  }
  grpc::Status Inject(grpc::ServerContext* context, const v1::InjectRequest* request,
                      v1::InjectResponse* response) override {
    response->set_tokens_injected(static_cast<int64_t>(request->text().size()));
    return Record(context, "Inject", request->request_id());
  }
  grpc::Status Generate(grpc::ServerContext* context, const v1::GenerateRequest* request,
                        grpc::ServerWriter<v1::GenerateResponse>* writer) override {
    if (grpc::Status s = Record(context, "Generate"); !s.ok()) return s;
    for (int i = 0; stream_forever_ || i < 3; ++i) {
      if (context->IsCancelled()) return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled");
      if (i == generate_fail_after_) {
        return grpc::Status(grpc::StatusCode::UNAVAILABLE, "replica went away");
      }
      v1::GenerateResponse response;
      response.set_text(absl::StrCat("t", i, " "));
      response.add_token_ids(i);
      if (!stream_forever_ && i == 2) {
        response.set_finish_reason(v1::FINISH_REASON_LENGTH);
        response.mutable_usage()->set_completion_tokens(3);
      }
      writer->Write(response);
      if (stream_forever_) absl::SleepFor(absl::Milliseconds(5));
    }
    return grpc::Status::OK;
  }
  grpc::Status ExportSession(grpc::ServerContext* context, const v1::ExportSessionRequest* request,
                             grpc::ServerWriter<v1::SessionChunk>* writer) override {
    if (grpc::Status s = Record(context, "ExportSession"); !s.ok()) return s;
    for (int i = 0; i < 3; ++i) {
      v1::SessionChunk chunk;
      if (i == 0) {
        chunk.set_format_version(1);
        chunk.mutable_session()->set_session_id(request->session_id());
      }
      chunk.set_sequence(static_cast<uint64_t>(i));
      chunk.set_data(std::string(100 + i, static_cast<char>('a' + i)));
      chunk.set_last(i == 2);
      writer->Write(chunk);
    }
    return grpc::Status::OK;
  }
  grpc::Status ImportSession(grpc::ServerContext* context,
                             grpc::ServerReader<v1::SessionChunk>* reader,
                             v1::Session* response) override {
    if (grpc::Status s = Record(context, "ImportSession"); !s.ok()) return s;
    std::vector<v1::SessionChunk> chunks;
    v1::SessionChunk chunk;
    while (reader->Read(&chunk)) chunks.push_back(chunk);
    if (chunks.empty()) return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "no chunks");
    *response = chunks[0].session();
    absl::MutexLock lock(&mu_);
    imported_ = std::move(chunks);
    return grpc::Status::OK;
  }

 private:
  grpc::Status Record(grpc::ServerContext* context, const std::string& method,
                      const std::string& request_id = "") {
    Attempt attempt{method, "<none>", request_id, absl::Now()};
    auto header = context->client_metadata().find(kSessionHeader);
    if (header != context->client_metadata().end()) {
      attempt.session_header.assign(header->second.data(), header->second.size());
    }
    absl::MutexLock lock(&mu_);
    attempts_.push_back(attempt);
    if (failures_left_ > 0) {
      --failures_left_;
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "try again later");
    }
    return grpc::Status::OK;
  }

  mutable absl::Mutex mu_;
  std::vector<Attempt> attempts_ ABSL_GUARDED_BY(mu_);
  std::vector<v1::SessionChunk> imported_ ABSL_GUARDED_BY(mu_);
  int failures_left_ ABSL_GUARDED_BY(mu_) = 0;
  std::atomic<int> generate_fail_after_{-1};
  std::atomic<bool> stream_forever_{false};
};

class ClientRetryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(&service_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    ASSERT_NE(port, 0);
    options_.target = absl::StrCat("127.0.0.1:", port);
    options_.timeout = absl::Seconds(20);
    options_.retry.max_attempts = 4;
    options_.retry.initial_backoff = absl::Milliseconds(50);
    options_.retry.multiplier = 2.0;
    options_.retry.jitter = 0.0;
  }
  void TearDown() override { server_->Shutdown(); }

  std::unique_ptr<MemoryClient> NewClient() { return MemoryClient::Create(options_); }

  FakeMemoryService service_;
  std::unique_ptr<grpc::Server> server_;
  ClientOptions options_;
};

TEST_F(ClientRetryTest, RetriesUnavailableWithBackoffThenSucceeds) {
  service_.FailNext(2);
  absl::StatusOr<v1::Session> session = NewClient()->GetSession("s1");
  ASSERT_TRUE(session.ok()) << session.status();
  EXPECT_EQ(session->session_id(), "s1");
  std::vector<Attempt> attempts = service_.attempts();
  ASSERT_EQ(attempts.size(), 3u);
  // Backoffs of 50 ms then 100 ms (no jitter); allow scheduling slack below, none needed above.
  EXPECT_GE(attempts[1].time - attempts[0].time, absl::Milliseconds(45));
  EXPECT_GE(attempts[2].time - attempts[1].time, absl::Milliseconds(95));
}

TEST_F(ClientRetryTest, JitteredBackoffStaysWithinBounds) {
  options_.retry.jitter = 0.5;
  options_.retry.initial_backoff = absl::Milliseconds(100);
  service_.FailNext(1);
  ASSERT_TRUE(NewClient()->GetSession("s1").ok());
  std::vector<Attempt> attempts = service_.attempts();
  ASSERT_EQ(attempts.size(), 2u);
  EXPECT_GE(attempts[1].time - attempts[0].time, absl::Milliseconds(45));
}

TEST_F(ClientRetryTest, GivesUpAfterMaxAttempts) {
  options_.retry.max_attempts = 3;
  service_.FailNext(100);
  absl::StatusOr<v1::Session> session = NewClient()->GetSession("s1");
  EXPECT_EQ(session.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(session.status().message()), HasSubstr("try again later"));
  EXPECT_THAT(std::string(session.status().message()), HasSubstr("gave up after 3 attempts"));
  EXPECT_EQ(service_.attempts().size(), 3u);
}

TEST_F(ClientRetryTest, StopsRetryingAtTheDeadline) {
  options_.retry.max_attempts = 100;
  options_.retry.initial_backoff = absl::Milliseconds(200);
  options_.timeout = absl::Milliseconds(500);
  service_.FailNext(100);
  const absl::Time start = absl::Now();
  absl::StatusOr<v1::Session> session = NewClient()->GetSession("s1");
  EXPECT_EQ(session.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
  EXPECT_LE(service_.attempts().size(), 3u);
}

TEST_F(ClientRetryTest, OtherErrorsAreNotRetriedAndKeepCodeAndMessage) {
  absl::StatusOr<v1::Session> session = NewClient()->GetSession("missing");
  EXPECT_EQ(session.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(session.status().message(), "no session 'missing'");
  EXPECT_EQ(service_.attempts().size(), 1u);
}

TEST_F(ClientRetryTest, UnreachableServerIsUnavailable) {
  options_.target = "127.0.0.1:1";
  options_.retry.max_attempts = 2;
  options_.retry.initial_backoff = absl::Milliseconds(10);
  absl::StatusOr<v1::Session> session = NewClient()->GetSession("s1");
  EXPECT_EQ(session.status().code(), absl::StatusCode::kUnavailable);
}

TEST_F(ClientRetryTest, SessionCallsCarryTheAffinityHeader) {
  std::unique_ptr<MemoryClient> client = NewClient();
  ASSERT_TRUE(client->CreateSession("alpha", {{"k", "v"}}).ok());
  ASSERT_TRUE(client->GetSession("beta").ok());
  ASSERT_TRUE(client->InjectText("gamma", "hello").ok());
  ASSERT_TRUE(client->DeleteSession("delta").ok());
  v1::GenerateRequest generate;
  generate.set_session_id("eps");
  generate.set_text("hi");
  ASSERT_TRUE(client->Generate(generate).ok());
  ASSERT_TRUE(client->ListSessions().ok());
  std::vector<std::string> headers;
  for (const Attempt& a : service_.attempts()) headers.push_back(a.method + ":" + a.session_header);
  EXPECT_THAT(headers, ElementsAre("CreateSession:alpha", "GetSession:beta", "Inject:gamma",
                                   "DeleteSession:delta", "Generate:eps", "ListSessions:<none>"));
}

TEST_F(ClientRetryTest, InjectKeepsOneGeneratedRequestIdAcrossRetries) {
  std::unique_ptr<MemoryClient> client = NewClient();
  service_.FailNext(2);
  ASSERT_TRUE(client->InjectText("s", "some text").ok());
  ASSERT_TRUE(client->InjectTokenIds("s", {1, 2, 3}).ok());
  std::vector<Attempt> attempts = service_.attempts();
  ASSERT_EQ(attempts.size(), 4u);
  EXPECT_THAT(attempts[0].request_id, StartsWith("r-"));
  EXPECT_EQ(attempts[0].request_id.size(), 34u);
  EXPECT_EQ(attempts[1].request_id, attempts[0].request_id);
  EXPECT_EQ(attempts[2].request_id, attempts[0].request_id);
  // A new Inject gets a new key.
  EXPECT_FALSE(attempts[3].request_id.empty());
  EXPECT_NE(attempts[3].request_id, attempts[0].request_id);
}

TEST_F(ClientRetryTest, InjectKeepsTheCallersRequestId) {
  service_.FailNext(1);
  ASSERT_TRUE(NewClient()->InjectText("s", "x", "mine-1").ok());
  std::vector<Attempt> attempts = service_.attempts();
  ASSERT_EQ(attempts.size(), 2u);
  EXPECT_EQ(attempts[0].request_id, "mine-1");
  EXPECT_EQ(attempts[1].request_id, "mine-1");
}

TEST_F(ClientRetryTest, ForEachSessionWalksEveryPage) {
  service_.FailNext(1);  // the second page's retry is transparent too
  absl::StatusOr<std::vector<v1::Session>> all = NewClient()->ListAllSessions();
  ASSERT_TRUE(all.ok()) << all.status();
  std::vector<std::string> ids;
  for (const v1::Session& s : *all) ids.push_back(s.session_id());
  EXPECT_THAT(ids, ElementsAre("s0", "s1", "s2", "s3", "s4"));
}

TEST_F(ClientRetryTest, GenerateStreamsAndRetriesBeforeTheFirstMessage) {
  service_.FailNext(1);
  v1::GenerateRequest request;
  request.set_session_id("s");
  std::vector<std::string> seen;
  absl::StatusOr<GenerateResult> result =
      NewClient()->Generate(request, [&](const v1::GenerateResponse& r) {
        seen.push_back(r.text());
        return true;
      });
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(seen, ElementsAre("t0 ", "t1 ", "t2 "));
  EXPECT_EQ(result->text, "t0 t1 t2 ");
  EXPECT_THAT(result->token_ids, ElementsAre(0, 1, 2));
  EXPECT_EQ(result->finish_reason, v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(result->usage.completion_tokens(), 3);
  EXPECT_EQ(service_.attempts().size(), 2u);
}

TEST_F(ClientRetryTest, GenerateIsNotRetriedAfterTheFirstMessage) {
  service_.FailGenerateAfter(1);
  v1::GenerateRequest request;
  request.set_session_id("s");
  absl::StatusOr<GenerateResult> result = NewClient()->Generate(request);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(service_.attempts().size(), 1u);
}

TEST_F(ClientRetryTest, GenerateCancelledByCallback) {
  service_.StreamForever();
  v1::GenerateRequest request;
  request.set_session_id("s");
  int messages = 0;
  absl::StatusOr<GenerateResult> result =
      NewClient()->Generate(request, [&](const v1::GenerateResponse&) { return ++messages < 2; });
  EXPECT_EQ(result.status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(messages, 2);
}

TEST_F(ClientRetryTest, GenerateCancelledFromAnotherThread) {
  service_.StreamForever();
  v1::GenerateRequest request;
  request.set_session_id("s");
  CancelToken cancel;
  std::atomic<int> messages{0};
  std::thread canceller([&] {
    while (messages.load() < 3) absl::SleepFor(absl::Milliseconds(1));
    cancel.Cancel();
  });
  absl::StatusOr<GenerateResult> result = NewClient()->Generate(
      request,
      [&](const v1::GenerateResponse&) {
        ++messages;
        return true;
      },
      &cancel);
  canceller.join();
  EXPECT_EQ(result.status().code(), absl::StatusCode::kCancelled);
  EXPECT_TRUE(cancel.cancelled());
}

TEST_F(ClientRetryTest, ExportThenImportRoundTripsThroughAFile) {
  const std::string path = absl::StrCat(::testing::TempDir(), "/export-", getpid(), ".mplus");
  std::unique_ptr<MemoryClient> client = NewClient();
  service_.FailNext(1);
  absl::StatusOr<ExportStats> stats = client->ExportSessionToFile("orig", path);
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->chunks, 3);
  EXPECT_EQ(stats->data_bytes, 100 + 101 + 102);
  EXPECT_FALSE(std::filesystem::exists(path + ".partial"));

  service_.FailNext(1);  // the retry re-reads the file from its start
  absl::StatusOr<v1::Session> session = client->ImportSessionFromFile(path, "copy");
  ASSERT_TRUE(session.ok()) << session.status();
  EXPECT_EQ(session->session_id(), "copy");
  std::vector<v1::SessionChunk> chunks = service_.imported();
  ASSERT_EQ(chunks.size(), 3u);
  EXPECT_EQ(chunks[1].data(), std::string(101, 'b'));
  EXPECT_TRUE(chunks[2].last());
  std::vector<std::string> headers;
  for (const Attempt& a : service_.attempts()) headers.push_back(a.method + ":" + a.session_header);
  EXPECT_THAT(headers, ElementsAre("ExportSession:orig", "ExportSession:orig", "ImportSession:copy",
                                   "ImportSession:copy"));
  std::filesystem::remove(path);
}

TEST_F(ClientRetryTest, ImportRejectsAFileThatIsNoExport) {
  const std::string path = absl::StrCat(::testing::TempDir(), "/not-export-", getpid());
  FILE* f = std::fopen(path.c_str(), "w");
  ASSERT_NE(f, nullptr);
  std::fputs("hello world", f);
  std::fclose(f);
  absl::StatusOr<v1::Session> session = NewClient()->ImportSessionFromFile(path);
  EXPECT_EQ(session.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(service_.attempts().empty());
  std::filesystem::remove(path);
}

}  // namespace
}  // namespace mplus::client
