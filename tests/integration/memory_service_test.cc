// mplus.v1.MemoryService end to end: the real server process on loopback, real gRPC clients,
// the tiny fixture checkpoint.
#include <sys/wait.h>

#include <atomic>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "mplus/v1/memory_service.grpc.pb.h"
#include "tests/integration/server_process.h"

namespace mplus::testing {
namespace {

using v1::MemoryService;

const std::string kModel = std::string(MPLUS_FIXTURES_DIR) + "/tiny-mplus";

class MemoryServiceTest : public ::testing::Test {
 protected:
  void StartServer(std::vector<std::string> extra = {}) {
    if (data_dir_.empty()) data_dir_ = MakeTempDir("mplus-service");
    extra.push_back("--data_dir=" + data_dir_);
    extra.push_back("--model=" + kModel);
    extra.push_back("--sync_writes=false");  // loopback tests: process crashes only
    auto server = ServerProcess::Start(MPLUS_SERVER_BIN, extra);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    stub_ = MemoryService::NewStub(server_->channel());
  }

  v1::Session Create(const std::string& id) {
    grpc::ClientContext ctx;
    v1::CreateSessionRequest req;
    req.set_session_id(id);
    v1::Session session;
    grpc::Status s = stub_->CreateSession(&ctx, req, &session);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return session;
  }

  grpc::Status InjectText(const std::string& id, const std::string& text,
                          v1::InjectResponse* response, const std::string& request_id = "",
                          int64_t chunk_tokens = 0) {
    grpc::ClientContext ctx;
    v1::InjectRequest req;
    req.set_session_id(id);
    req.set_text(text);
    req.set_request_id(request_id);
    req.set_chunk_tokens(chunk_tokens);
    return stub_->Inject(&ctx, req, response);
  }

  struct Generated {
    grpc::Status status;
    std::string text;
    std::vector<int32_t> ids;
    v1::FinishReason finish = v1::FINISH_REASON_UNSPECIFIED;
    v1::Usage usage;
  };
  Generated GenerateIds(const std::string& id, const std::vector<int32_t>& prompt, int max_new) {
    grpc::ClientContext ctx;
    v1::GenerateRequest req;
    req.set_session_id(id);
    for (int32_t t : prompt) req.mutable_token_ids()->add_ids(t);
    req.mutable_sampling()->set_max_new_tokens(max_new);
    auto reader = stub_->Generate(&ctx, req);
    Generated out;
    v1::GenerateResponse piece;
    while (reader->Read(&piece)) {
      out.text += piece.text();
      out.ids.insert(out.ids.end(), piece.token_ids().begin(), piece.token_ids().end());
      if (piece.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
        out.finish = piece.finish_reason();
        out.usage = piece.usage();
      }
    }
    out.status = reader->Finish();
    return out;
  }

  // On a fresh server started with `flag`: one session and, after each of `texts` injected into
  // it, the ids of a 6-token Generate of kPrompt; a failed call fails the test and ends the list.
  std::vector<std::vector<int32_t>> GeneratedAfterEachInject(const std::string& flag,
                                                             const std::vector<std::string>& texts);

  std::string data_dir_;
  std::unique_ptr<ServerProcess> server_;
  std::unique_ptr<MemoryService::Stub> stub_;
};

const std::vector<int32_t> kPrompt = {329, 17, 113, 352, 171, 192};

std::vector<std::vector<int32_t>> MemoryServiceTest::GeneratedAfterEachInject(
    const std::string& flag, const std::vector<std::string>& texts) {
  std::vector<std::vector<int32_t>> generated;
  data_dir_.clear();
  StartServer({flag});
  Create("s");
  for (const std::string& text : texts) {
    v1::InjectResponse r;
    if (grpc::Status s = InjectText("s", text, &r); !s.ok()) {
      ADD_FAILURE() << flag << ": inject: " << s.error_message();
      break;
    }
    const Generated g = GenerateIds("s", kPrompt, 6);
    if (!g.status.ok()) {
      ADD_FAILURE() << flag << ": generate: " << g.status.error_message();
      break;
    }
    generated.push_back(g.ids);
  }
  return generated;
}

TEST_F(MemoryServiceTest, WholeFlow) {
  StartServer();
  v1::Session created = Create("doc-1");
  EXPECT_EQ(created.session_id(), "doc-1");
  EXPECT_EQ(created.inject_count(), 0);
  EXPECT_EQ(created.stm_tokens(), 32);

  v1::InjectResponse injected;
  grpc::Status s = InjectText("doc-1",
                              "The quick brown fox jumps over the lazy dog. "
                              "Pack my box with five dozen liquor jugs.",
                              &injected, /*request_id=*/"", /*chunk_tokens=*/8);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_GT(injected.tokens_injected(), 8);
  EXPECT_GT(injected.chunks(), 1);
  EXPECT_EQ(injected.session().inject_count(), injected.chunks());

  Generated g = GenerateIds("doc-1", kPrompt, 8);
  ASSERT_TRUE(g.status.ok()) << g.status.error_message();
  EXPECT_EQ(g.ids.size(), 8u);
  EXPECT_EQ(g.finish, v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(g.usage.completion_tokens(), 8);
  EXPECT_EQ(g.usage.prompt_tokens(), 6);
  EXPECT_EQ(g.usage.retrieved_ltm_tokens(), 3 * 16);

  grpc::ClientContext list_ctx;
  v1::ListSessionsResponse list;
  ASSERT_TRUE(stub_->ListSessions(&list_ctx, v1::ListSessionsRequest(), &list).ok());
  ASSERT_EQ(list.sessions_size(), 1);
  EXPECT_EQ(list.sessions(0).injected_tokens(), injected.tokens_injected());

  grpc::ClientContext del_ctx;
  v1::DeleteSessionRequest del;
  del.set_session_id("doc-1");
  v1::DeleteSessionResponse deleted;
  ASSERT_TRUE(stub_->DeleteSession(&del_ctx, del, &deleted).ok());
  grpc::ClientContext get_ctx;
  v1::GetSessionRequest get;
  get.set_session_id("doc-1");
  v1::Session gone;
  EXPECT_EQ(stub_->GetSession(&get_ctx, get, &gone).error_code(), grpc::StatusCode::NOT_FOUND);

  // The metrics after the flow: retrieval histogram with counts, memory gauges by use.
  auto body = HttpGet(server_->metrics_address(), "/metrics");
  ASSERT_TRUE(body.ok()) << body.status();
  EXPECT_TRUE(
      absl::StrContains(*body, "mplus_retrieval_latency_seconds_count{scope=\"generate\"} 1"))
      << *body;
  EXPECT_TRUE(absl::StrContains(*body, "mplus_retrieval_latency_seconds_count{scope=\"layer\"} 3"))
      << *body;
  for (const char* use : {"weights", "short_term", "caches", "free", "total"}) {
    EXPECT_TRUE(absl::StrContains(*body, absl::StrCat("use=\"", use, "\"")) ||
                absl::StrContains(*body, absl::StrCat("device=\"cpu\",use=\"", use, "\"")))
        << use;
  }
  EXPECT_TRUE(absl::StrContains(*body, "mplus_requests_total{code=\"OK\",rpc=\"Inject\"} 1"))
      << *body;
  // doc-1 was made resident once, at its first use (the Inject).
  EXPECT_TRUE(absl::StrContains(*body, "mplus_session_load_seconds_count 1\n")) << *body;
  // Every chunk counted once its write was durable (each overlaps the next chunk's inject).
  EXPECT_TRUE(absl::StrContains(
      *body, absl::StrCat("mplus_tokens_injected_total ", injected.tokens_injected(), "\n")))
      << *body;
}

TEST_F(MemoryServiceTest, SessionsAreIsolated) {
  StartServer();
  Create("a");
  Create("b");
  const Generated before = GenerateIds("b", kPrompt, 6);
  v1::InjectResponse r;
  ASSERT_TRUE(
      InjectText("a", "Only session a hears this sentence about purple elephants.", &r).ok());
  const Generated b_after = GenerateIds("b", kPrompt, 6);
  const Generated a_after = GenerateIds("a", kPrompt, 6);
  EXPECT_EQ(before.ids, b_after.ids);  // b untouched by a's inject
  EXPECT_NE(a_after.ids, b_after.ids);
}

TEST_F(MemoryServiceTest, RetriedInjectWithSameRequestIdInjectsOnce) {
  StartServer();
  Create("idem");
  v1::InjectResponse first, second;
  ASSERT_TRUE(InjectText("idem", "Remember the number forty two.", &first, "req-1").ok());
  ASSERT_TRUE(InjectText("idem", "Remember the number forty two.", &second, "req-1").ok());
  EXPECT_EQ(first.session().inject_count(), second.session().inject_count());
  EXPECT_EQ(first.session().injected_tokens(), second.session().injected_tokens());
  v1::InjectResponse third;
  ASSERT_TRUE(InjectText("idem", "Remember the number forty two.", &third, "req-2").ok());
  EXPECT_GT(third.session().inject_count(), first.session().inject_count());
}

TEST_F(MemoryServiceTest, ConcurrentClientsOnManySessionsAndOnOne) {
  StartServer({"--engine_workers=4"});
  for (int i = 0; i < 8; ++i) Create(absl::StrCat("c", i));
  Create("shared");
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&, i] {
      v1::InjectResponse r;
      if (!InjectText(absl::StrCat("c", i), absl::StrCat("Client ", i, " writes its own text."), &r)
               .ok()) {
        ++failures;
      }
      if (!GenerateIds(absl::StrCat("c", i), kPrompt, 4).status.ok()) ++failures;
    });
  }
  // Four clients on one session: each sees the inject count its arrival order implies.
  std::vector<int64_t> counts(4);
  std::vector<std::thread> same;
  for (int i = 0; i < 4; ++i) {
    same.emplace_back([&, i] {
      v1::InjectResponse r;
      v1::InjectRequest req;
      req.set_session_id("shared");
      for (int t = 0; t < 12; ++t) req.mutable_token_ids()->add_ids(10 + i * 12 + t);
      grpc::ClientContext ctx;
      if (!stub_->Inject(&ctx, req, &r).ok()) ++failures;
      counts[i] = r.session().inject_count();
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(60));
  }
  for (auto& t : threads) t.join();
  for (auto& t : same) t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(counts, (std::vector<int64_t>{1, 2, 3, 4}));
}

TEST_F(MemoryServiceTest, CancelledGenerateFreesItsWorker) {
  StartServer({"--engine_workers=1", "--max_new_tokens=1900"});
  Create("long");
  Create("next");
  grpc::ClientContext ctx;
  v1::GenerateRequest req;
  req.set_session_id("long");
  for (int32_t t : kPrompt) req.mutable_token_ids()->add_ids(t);
  req.mutable_sampling()->set_max_new_tokens(1900);
  auto reader = stub_->Generate(&ctx, req);
  v1::GenerateResponse piece;
  ASSERT_TRUE(reader->Read(&piece));
  ctx.TryCancel();
  while (reader->Read(&piece)) {
  }
  reader->Finish();
  // The only worker must be free again: this completes well within its deadline.
  grpc::ClientContext next_ctx;
  next_ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
  v1::GenerateRequest next;
  next.set_session_id("next");
  for (int32_t t : kPrompt) next.mutable_token_ids()->add_ids(t);
  next.mutable_sampling()->set_max_new_tokens(2);
  auto next_reader = stub_->Generate(&next_ctx, next);
  while (next_reader->Read(&piece)) {
  }
  grpc::Status s = next_reader->Finish();
  EXPECT_TRUE(s.ok()) << s.error_message();
}

// The short_term memory gauge (resident sessions' host bytes, prefix caches included), once the
// server's 2 s refresh has passed.
double ShortTermBytes(const ServerProcess& server) {
  absl::SleepFor(absl::Milliseconds(2500));
  absl::StatusOr<std::string> body = HttpGet(server.metrics_address(), "/metrics");
  if (!body.ok()) return -1;
  const std::string key = "mplus_memory_bytes{device=\"cpu\",use=\"short_term\"} ";
  const size_t at = body->find(key);
  return at == std::string::npos ? -1 : std::stod(body->substr(at + key.size()));
}

// A Generate fills the session's prefix cache (the K/V of its memory prefix, kept between
// Generates and counted in its memory) and the next one reads it, generating the same tokens;
// with --prefix_cache=false nothing is kept.
TEST_F(MemoryServiceTest, GenerateKeepsThePrefixCacheOfItsSession) {
  for (bool cache : {true, false}) {
    SCOPED_TRACE(cache ? "prefix cache" : "no prefix cache");
    data_dir_.clear();
    StartServer({cache ? "--prefix_cache=true" : "--prefix_cache=false"});
    Create("pc");
    v1::InjectResponse r;
    ASSERT_TRUE(InjectText("pc", "The prefix of this session's memory is cached.", &r).ok());
    const double before = ShortTermBytes(*server_);
    ASSERT_GT(before, 0);
    const Generated first = GenerateIds("pc", kPrompt, 6);
    ASSERT_TRUE(first.status.ok()) << first.status.error_message();
    const double after = ShortTermBytes(*server_);
    if (cache) {
      EXPECT_GT(after, before);
    } else {
      EXPECT_EQ(after, before);
    }
    EXPECT_EQ(GenerateIds("pc", kPrompt, 6).ids, first.ids);
  }
}

// A cached prefix follows the session's injects: Generate, Inject, Generate gives the tokens a
// server without the cache gives.
TEST_F(MemoryServiceTest, PrefixCacheFollowsInjects) {
  const std::vector<std::string> texts = {
      "The first fact: the sky was green.", "The second fact: water was dry.",
      "The third fact: the moon was square and the sun was cold."};
  EXPECT_EQ(GeneratedAfterEachInject("--prefix_cache=true", texts),
            GeneratedAfterEachInject("--prefix_cache=false", texts));
}

// --merge_decoder_lora=true on the CPU, end to end: the server injects through the widened
// encoder adapter and generates through the merged weights, giving the unmerged server's tokens
// (the merge moves fp32 results by ~1e-7; lora_merge_test and golden.*.merged-lora.* check the
// arithmetic itself).
TEST_F(MemoryServiceTest, MergedDecoderLoraServesTheSameTokens) {
  const std::vector<std::string> texts = {"The first fact: the sky was green.",
                                          "The second: water was dry."};
  EXPECT_EQ(GeneratedAfterEachInject("--merge_decoder_lora=true", texts),
            GeneratedAfterEachInject("--merge_decoder_lora=false", texts));
}

TEST_F(MemoryServiceTest, RestartKeepsSessionsAndTheirMemory) {
  StartServer();
  Create("keep");
  v1::InjectResponse r;
  ASSERT_TRUE(InjectText("keep", "Durable memory survives a restart of the server.", &r).ok());
  const Generated before = GenerateIds("keep", kPrompt, 6);
  auto exit_status = server_->Terminate();
  ASSERT_TRUE(exit_status.ok());
  EXPECT_TRUE(WIFEXITED(*exit_status) && WEXITSTATUS(*exit_status) == 0);
  // Restarted with the memory-placement flags changed: they decide where keys and caches live,
  // never what is generated.
  StartServer({"--ltm_mode=offload", "--gpu_memory_budget_mb=64", "--prefix_cache=false"});
  grpc::ClientContext ctx;
  v1::GetSessionRequest get;
  get.set_session_id("keep");
  v1::Session session;
  ASSERT_TRUE(stub_->GetSession(&ctx, get, &session).ok());
  EXPECT_EQ(session.inject_count(), r.session().inject_count());
  EXPECT_EQ(GenerateIds("keep", kPrompt, 6).ids, before.ids);
}

TEST_F(MemoryServiceTest, ExportThenImportIntoAnotherServerGeneratesIdentically) {
  StartServer();
  Create("src");
  v1::InjectResponse r;
  for (int i = 0; i < 7; ++i) {  // enough injects to merge long-term memory
    ASSERT_TRUE(
        InjectText("src", absl::StrCat("Fact number ", i, ": the sky was green."), &r).ok());
  }
  const Generated original = GenerateIds("src", kPrompt, 8);
  std::vector<v1::SessionChunk> chunks;
  {
    grpc::ClientContext ctx;
    v1::ExportSessionRequest req;
    req.set_session_id("src");
    auto reader = stub_->ExportSession(&ctx, req);
    v1::SessionChunk chunk;
    while (reader->Read(&chunk)) chunks.push_back(chunk);
    grpc::Status s = reader->Finish();
    ASSERT_TRUE(s.ok()) << s.error_message();
  }
  ASSERT_FALSE(chunks.empty());
  EXPECT_TRUE(chunks.back().last());

  std::unique_ptr<ServerProcess> first = std::move(server_);
  data_dir_ = MakeTempDir("mplus-import");
  StartServer();
  grpc::ClientContext ctx;
  v1::Session imported;
  auto writer = stub_->ImportSession(&ctx, &imported);
  chunks.front().mutable_session()->set_session_id("dst");
  for (const auto& c : chunks) ASSERT_TRUE(writer->Write(c));
  writer->WritesDone();
  grpc::Status s = writer->Finish();
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(imported.session_id(), "dst");
  EXPECT_EQ(imported.inject_count(), r.session().inject_count());
  EXPECT_EQ(GenerateIds("dst", kPrompt, 8).ids, original.ids);
}

}  // namespace
}  // namespace mplus::testing
