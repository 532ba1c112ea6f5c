// One test per row of the error tables in docs/API.md: the real server, real gRPC.
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "mplus/v1/memory_service.grpc.pb.h"
#include "tests/integration/server_process.h"

namespace mplus::testing {
namespace {

using grpc::StatusCode;

class ApiErrorsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto server = ServerProcess::Start(
        MPLUS_SERVER_BIN,
        {"--data_dir=" + MakeTempDir("mplus-api-errors"),
         std::string("--model=") + MPLUS_FIXTURES_DIR + "/tiny-mplus", "--sync_writes=false",
         "--max_sessions=3", "--max_request_bytes=4096", "--max_prompt_tokens=64",
         "--max_new_tokens=32", "--default_max_new_tokens=8", "--inject_chunk_tokens=64"});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = server->release();
    stub_ = v1::MemoryService::NewStub(server_->channel()).release();
    grpc::ClientContext ctx;
    v1::CreateSessionRequest req;
    req.set_session_id("exists");
    v1::Session session;
    ASSERT_TRUE(stub_->CreateSession(&ctx, req, &session).ok());
  }
  static void TearDownTestSuite() {
    delete stub_;
    delete server_;
  }

  static grpc::Status Create(const std::string& id, const std::string& label_value = "") {
    grpc::ClientContext ctx;
    v1::CreateSessionRequest req;
    req.set_session_id(id);
    if (!label_value.empty()) (*req.mutable_labels())["k"] = label_value;
    v1::Session session;
    return stub_->CreateSession(&ctx, req, &session);
  }
  static grpc::Status Inject(const v1::InjectRequest& req) {
    grpc::ClientContext ctx;
    v1::InjectResponse response;
    return stub_->Inject(&ctx, req, &response);
  }
  static grpc::Status Generate(const v1::GenerateRequest& req) {
    grpc::ClientContext ctx;
    auto reader = stub_->Generate(&ctx, req);
    v1::GenerateResponse piece;
    while (reader->Read(&piece)) {
    }
    return reader->Finish();
  }
  static grpc::Status Import(const std::vector<v1::SessionChunk>& chunks) {
    grpc::ClientContext ctx;
    v1::Session session;
    auto writer = stub_->ImportSession(&ctx, &session);
    for (const auto& c : chunks) writer->Write(c);
    writer->WritesDone();
    return writer->Finish();
  }
  static std::vector<v1::SessionChunk> Export(const std::string& id) {
    grpc::ClientContext ctx;
    v1::ExportSessionRequest req;
    req.set_session_id(id);
    auto reader = stub_->ExportSession(&ctx, req);
    std::vector<v1::SessionChunk> chunks;
    v1::SessionChunk chunk;
    while (reader->Read(&chunk)) chunks.push_back(chunk);
    EXPECT_TRUE(reader->Finish().ok());
    return chunks;
  }
  static v1::InjectRequest InjectIds(const std::string& id, std::vector<int32_t> ids) {
    v1::InjectRequest req;
    req.set_session_id(id);
    for (int32_t t : ids) req.mutable_token_ids()->add_ids(t);
    return req;
  }
  static v1::GenerateRequest GenerateIds(const std::string& id, std::vector<int32_t> ids) {
    v1::GenerateRequest req;
    req.set_session_id(id);
    for (int32_t t : ids) req.mutable_token_ids()->add_ids(t);
    req.mutable_sampling()->set_max_new_tokens(2);
    return req;
  }

  static ServerProcess* server_;
  static v1::MemoryService::Stub* stub_;
};
ServerProcess* ApiErrorsTest::server_ = nullptr;
v1::MemoryService::Stub* ApiErrorsTest::stub_ = nullptr;

#define EXPECT_STATUS(call, code, text)                                             \
  do {                                                                              \
    grpc::Status s_ = (call);                                                       \
    EXPECT_EQ(s_.error_code(), code) << s_.error_message();                         \
    EXPECT_TRUE(absl::StrContains(s_.error_message(), text)) << s_.error_message(); \
  } while (0)

TEST_F(ApiErrorsTest, CreateSessionInvalidId) {
  EXPECT_STATUS(Create("bad id!"), StatusCode::INVALID_ARGUMENT, "session id");
  EXPECT_STATUS(Create(std::string(129, 'x')), StatusCode::INVALID_ARGUMENT, "session id");
}
TEST_F(ApiErrorsTest, CreateSessionAlreadyExists) {
  EXPECT_STATUS(Create("exists"), StatusCode::ALREADY_EXISTS, "exists");
}
TEST_F(ApiErrorsTest, CreateSessionRequestTooLarge) {
  EXPECT_STATUS(Create("big", std::string(5000, 'x')), StatusCode::RESOURCE_EXHAUSTED,
                "--max_request_bytes");
}
TEST_F(ApiErrorsTest, GetAndDeleteAndExportUnknownSession) {
  grpc::ClientContext ctx;
  v1::GetSessionRequest get;
  get.set_session_id("nope");
  v1::Session session;
  EXPECT_STATUS(stub_->GetSession(&ctx, get, &session), StatusCode::NOT_FOUND, "nope");
  grpc::ClientContext del_ctx;
  v1::DeleteSessionRequest del;
  del.set_session_id("nope");
  v1::DeleteSessionResponse deleted;
  EXPECT_STATUS(stub_->DeleteSession(&del_ctx, del, &deleted), StatusCode::NOT_FOUND, "nope");
  grpc::ClientContext exp_ctx;
  v1::ExportSessionRequest exp;
  exp.set_session_id("nope");
  auto reader = stub_->ExportSession(&exp_ctx, exp);
  v1::SessionChunk chunk;
  while (reader->Read(&chunk)) {
  }
  EXPECT_STATUS(reader->Finish(), StatusCode::NOT_FOUND, "nope");
}
TEST_F(ApiErrorsTest, ListSessionsBadPageSize) {
  grpc::ClientContext ctx;
  v1::ListSessionsRequest req;
  req.set_page_size(5000);
  v1::ListSessionsResponse response;
  EXPECT_STATUS(stub_->ListSessions(&ctx, req, &response), StatusCode::INVALID_ARGUMENT,
                "page_size");
}
TEST_F(ApiErrorsTest, InjectErrors) {
  v1::InjectRequest no_content;
  no_content.set_session_id("exists");
  EXPECT_STATUS(Inject(no_content), StatusCode::INVALID_ARGUMENT, "needs content");
  v1::InjectRequest empty_text;
  empty_text.set_session_id("exists");
  empty_text.set_text("");
  EXPECT_STATUS(Inject(empty_text), StatusCode::INVALID_ARGUMENT, "no tokens");
  EXPECT_STATUS(Inject(InjectIds("exists", {1, 2, 384})), StatusCode::INVALID_ARGUMENT,
                "outside the vocabulary");
  v1::InjectRequest chunk = InjectIds("exists", {1, 2, 3});
  chunk.set_chunk_tokens(65);
  EXPECT_STATUS(Inject(chunk), StatusCode::INVALID_ARGUMENT, "--inject_chunk_tokens");
  v1::InjectRequest long_id = InjectIds("exists", {1, 2, 3});
  long_id.set_request_id(std::string(129, 'r'));
  EXPECT_STATUS(Inject(long_id), StatusCode::INVALID_ARGUMENT, "request_id");
  EXPECT_STATUS(Inject(InjectIds("nope", {1, 2, 3})), StatusCode::NOT_FOUND, "nope");
  v1::InjectRequest big;
  big.set_session_id("exists");
  big.set_text(std::string(5000, 'a'));
  EXPECT_STATUS(Inject(big), StatusCode::RESOURCE_EXHAUSTED, "--max_request_bytes");
}
TEST_F(ApiErrorsTest, GenerateErrors) {
  v1::GenerateRequest no_prompt;
  no_prompt.set_session_id("exists");
  EXPECT_STATUS(Generate(no_prompt), StatusCode::INVALID_ARGUMENT, "needs a prompt");
  EXPECT_STATUS(Generate(GenerateIds("exists", {400})), StatusCode::INVALID_ARGUMENT,
                "outside the vocabulary");
  EXPECT_STATUS(Generate(GenerateIds("exists", std::vector<int32_t>(65, 5))),
                StatusCode::INVALID_ARGUMENT, "--max_prompt_tokens");
  v1::GenerateRequest too_many = GenerateIds("exists", {5, 6});
  too_many.mutable_sampling()->set_max_new_tokens(33);
  EXPECT_STATUS(Generate(too_many), StatusCode::INVALID_ARGUMENT, "--max_new_tokens");
  v1::GenerateRequest bad_temperature = GenerateIds("exists", {5, 6});
  bad_temperature.mutable_sampling()->set_temperature(-1);
  EXPECT_STATUS(Generate(bad_temperature), StatusCode::INVALID_ARGUMENT, "temperature");
  v1::GenerateRequest bad_top_p = GenerateIds("exists", {5, 6});
  bad_top_p.mutable_sampling()->set_top_p(1.5);
  EXPECT_STATUS(Generate(bad_top_p), StatusCode::INVALID_ARGUMENT, "top_p");
  v1::GenerateRequest bad_role;
  bad_role.set_session_id("exists");
  auto* m = bad_role.mutable_messages()->add_messages();
  m->set_role("wizard");
  m->set_content("hi");
  EXPECT_STATUS(Generate(bad_role), StatusCode::INVALID_ARGUMENT, "role");
  EXPECT_STATUS(Generate(GenerateIds("nope", {5, 6})), StatusCode::NOT_FOUND, "nope");
}
TEST_F(ApiErrorsTest, ImportErrors) {
  EXPECT_STATUS(Import({}), StatusCode::INVALID_ARGUMENT, "no chunks");
  std::vector<v1::SessionChunk> good = Export("exists");
  ASSERT_FALSE(good.empty());

  auto renamed = [&](const std::string& id) {
    std::vector<v1::SessionChunk> c = good;
    c.front().mutable_session()->set_session_id(id);
    return c;
  };
  std::vector<v1::SessionChunk> version = renamed("imp-version");
  version.front().set_format_version(99);
  EXPECT_STATUS(Import(version), StatusCode::INVALID_ARGUMENT, "format_version");
  std::vector<v1::SessionChunk> digest = renamed("imp-digest");
  digest.front().set_model_digest("0000000000000000");
  EXPECT_STATUS(Import(digest), StatusCode::FAILED_PRECONDITION, "another model");
  std::vector<v1::SessionChunk> crc = renamed("imp-crc");
  crc.front().set_crc32c(crc.front().crc32c() ^ 1);
  EXPECT_STATUS(Import(crc), StatusCode::DATA_LOSS, "CRC32C");
  std::vector<v1::SessionChunk> order = renamed("imp-order");
  order.front().set_sequence(5);
  EXPECT_STATUS(Import(order), StatusCode::INVALID_ARGUMENT, "was expected");
  std::vector<v1::SessionChunk> truncated = renamed("imp-trunc");
  truncated.back().set_last(false);
  EXPECT_STATUS(Import(truncated), StatusCode::INVALID_ARGUMENT, "before its last chunk");
  EXPECT_STATUS(Import(renamed("exists")), StatusCode::ALREADY_EXISTS, "exists");
}

// Last: it fills the server up to --max_sessions.
TEST_F(ApiErrorsTest, CreateSessionOverMaxSessions) {
  ASSERT_TRUE(Create("fill-1").ok());
  ASSERT_TRUE(Create("fill-2").ok());
  EXPECT_STATUS(Create("fill-3"), StatusCode::RESOURCE_EXHAUSTED, "--max_sessions");
  std::vector<v1::SessionChunk> chunks = Export("exists");
  chunks.front().mutable_session()->set_session_id("fill-3");
  EXPECT_STATUS(Import(chunks), StatusCode::RESOURCE_EXHAUSTED, "--max_sessions");
}
}  // namespace
}  // namespace mplus::testing
