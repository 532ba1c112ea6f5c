// A plain Llama checkpoint written by mplus-make-checkpoint is served through the same API:
// Generate works (empty memory prefix), Inject is refused.
#include <cstdlib>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "mplus/v1/memory_service.grpc.pb.h"
#include "tests/integration/server_process.h"

namespace mplus::testing {
namespace {

TEST(LlamaCheckpointTest, GeneratesThroughTheSameApiAndRefusesInject) {
  const std::string dir = MakeTempDir("mplus-llama") + "/model";
  const std::string make = absl::StrCat(
      MPLUS_MAKE_CHECKPOINT_BIN, " --kind=llama --preset=tiny --out=", dir,
      " --tokenizer=", MPLUS_FIXTURES_DIR, "/tiny-mplus/tokenizer.json --seed=3 2>/dev/null");
  ASSERT_EQ(std::system(make.c_str()), 0) << make;
  auto server = ServerProcess::Start(
      MPLUS_SERVER_BIN, {"--data_dir=" + MakeTempDir("mplus-llama-data"), "--model=" + dir});
  ASSERT_TRUE(server.ok()) << server.status();
  auto stub = v1::MemoryService::NewStub((*server)->channel());

  grpc::ClientContext create_ctx;
  v1::CreateSessionRequest create;
  create.set_session_id("plain");
  v1::Session session;
  ASSERT_TRUE(stub->CreateSession(&create_ctx, create, &session).ok());
  EXPECT_EQ(session.stm_tokens(), 0);

  grpc::ClientContext ctx;
  v1::GenerateRequest req;
  req.set_session_id("plain");
  req.set_text("hello world");
  req.mutable_sampling()->set_max_new_tokens(5);
  auto reader = stub->Generate(&ctx, req);
  v1::GenerateResponse piece;
  int tokens = 0;
  v1::Usage usage;
  while (reader->Read(&piece)) {
    tokens += piece.token_ids_size();
    if (piece.has_usage()) usage = piece.usage();
  }
  grpc::Status s = reader->Finish();
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(tokens, usage.completion_tokens());
  EXPECT_GT(usage.prompt_tokens(), 1);  // BOS + text
  EXPECT_EQ(usage.retrieved_ltm_tokens(), 0);

  grpc::ClientContext inject_ctx;
  v1::InjectRequest inject;
  inject.set_session_id("plain");
  inject.set_text("no memory to write into");
  v1::InjectResponse injected;
  s = stub->Inject(&inject_ctx, inject, &injected);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_TRUE(absl::StrContains(s.error_message(), "plain Llama")) << s.error_message();
}

}  // namespace
}  // namespace mplus::testing
