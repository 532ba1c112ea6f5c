// Session export/import: round trip (same and another database), isolation of the copy, and
// clear rejection of corrupted, reordered, truncated, foreign or future-version snapshots.
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "memstore/byte_codec.h"
#include "memstore/snapshot.h"
#include "tests/unit/memstore_test_util.h"

namespace mplus::memstore {
namespace {

using testing::CompareWithReference;
using ::testing::HasSubstr;
using testing::MakeInject;
using testing::MakeTinyModel;
using testing::ReferenceSession;
using testing::TempDir;

std::unique_ptr<MemoryStore> OpenStore(const testing::TinyModel& m, const std::string& path) {
  StoreOptions o;
  o.path = path;
  absl::StatusOr<std::unique_ptr<MemoryStore>> s = MemoryStore::Open(o, m.config, m.weights);
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? *std::move(s) : nullptr;
}

class SnapshotTest : public ::testing::Test {
 protected:
  void SetUp() override {
    model_ = MakeTinyModel(engine::DType::kBF16);
    store_ = OpenStore(*model_, TempDir("snap"));
    ASSERT_TRUE(store_->CreateSession("src", {{"owner", "me"}}, 99).ok());
    ref_ = std::make_unique<ReferenceSession>(store_->base());
    for (int n = 0; n < 20; ++n) {
      absl::StatusOr<SessionHandle> h = store_->Acquire("src");
      const engine::InjectResult r = MakeInject(model_->config, 5, n);
      ASSERT_TRUE(h->Commit(r, 3, "req-" + std::to_string(n)).ok());
      ref_->Apply(r);
    }
    ASSERT_TRUE(store_
                    ->ExportSession("src",
                                    [&](std::string_view c) {
                                      chunks_.emplace_back(c);
                                      return absl::OkStatus();
                                    })
                    .ok());
  }

  void ExpectMatchesSource(MemoryStore& store, const std::string& id) {
    absl::StatusOr<SessionHandle> h = store.Acquire(id);
    ASSERT_TRUE(h.ok()) << h.status();
    EXPECT_EQ(CompareWithReference(const_cast<ResidentSession&>(h->resident()), *ref_), "");
    EXPECT_EQ(h->info().labels.at("owner"), "me");
    EXPECT_EQ(h->info().seed, 99u);
    EXPECT_EQ(h->info().injected_tokens, 60);
    EXPECT_TRUE(h->FindRequest("req-19")->has_value());
  }

  std::unique_ptr<testing::TinyModel> model_;
  std::unique_ptr<MemoryStore> store_;
  std::unique_ptr<ReferenceSession> ref_;
  std::vector<std::string> chunks_;
};

TEST_F(SnapshotTest, RoundTripIntoSameAndOtherDatabase) {
  ASSERT_GE(chunks_.size(), 3u);
  for (const std::string& c : chunks_) EXPECT_LE(c.size(), kSnapshotChunkBytes + 64 * 1024);
  absl::StatusOr<SessionInfo> copy = store_->ImportSession("copy", chunks_);
  ASSERT_TRUE(copy.ok()) << copy.status();
  EXPECT_EQ(copy->inject_count, 20);
  ExpectMatchesSource(*store_, "copy");

  // The copy is independent: injecting into it leaves the source alone.
  {
    absl::StatusOr<SessionHandle> h = store_->Acquire("copy");
    ASSERT_TRUE(h->Commit(MakeInject(model_->config, 8, 0), 1).ok());
  }
  ExpectMatchesSource(*store_, "src");
  ASSERT_TRUE(store_->DeleteSession("src").ok());
  EXPECT_EQ(store_->GetSession("copy")->inject_count, 21);

  auto other = OpenStore(*model_, TempDir("snap-other"));
  ASSERT_TRUE(other->ImportSession("moved", chunks_).ok());
  ExpectMatchesSource(*other, "moved");
  EXPECT_TRUE(absl::IsAlreadyExists(other->ImportSession("moved", chunks_).status()));
}

TEST_F(SnapshotTest, RejectsCorruptedChunk) {
  std::vector<std::string> bad = chunks_;
  bad[1][bad[1].size() / 2] ^= 1;
  const absl::Status s = store_->ImportSession("x", bad).status();
  EXPECT_TRUE(absl::IsDataLoss(s)) << s;
  EXPECT_THAT(s.message(), HasSubstr("checksum"));
  EXPECT_TRUE(absl::IsNotFound(store_->GetSession("x").status()));
}

// Rewrites one header field of chunk `i` and fixes its checksum, as a different writer would.
std::string Rewrite(std::string chunk, size_t offset, const std::string& bytes) {
  chunk.replace(offset, bytes.size(), bytes);
  std::string crc;
  ByteWriter(&crc).U32(Crc32c(chunk.data(), chunk.size() - 4));
  chunk.replace(chunk.size() - 4, 4, crc);
  return chunk;
}

TEST_F(SnapshotTest, RejectsOtherVersionAndOtherModel) {
  std::vector<std::string> bad = chunks_;
  std::string v3;
  ByteWriter(&v3).U32(3);
  bad[0] = Rewrite(bad[0], 4, v3);
  absl::Status s = store_->ImportSession("x", bad).status();
  EXPECT_TRUE(absl::IsFailedPrecondition(s)) << s;
  EXPECT_THAT(s.message(), HasSubstr("version 3"));
  // Version 1 (float32 keys in long-term records, which the store still reads) is imported.
  std::vector<std::string> v1_chunks;
  std::string v1;
  ByteWriter(&v1).U32(1);
  for (const std::string& c : chunks_) v1_chunks.push_back(Rewrite(c, 4, v1));
  EXPECT_TRUE(store_->ImportSession("from-v1", v1_chunks).ok());

  bad = chunks_;
  bad[0] = Rewrite(bad[0], 17, std::string(8, '\x42'));  // the model digest
  s = store_->ImportSession("x", bad).status();
  EXPECT_TRUE(absl::IsFailedPrecondition(s)) << s;
  EXPECT_THAT(s.message(), HasSubstr("different model"));
}

TEST_F(SnapshotTest, RejectsMissingReorderedAndTruncatedChunks) {
  std::vector<std::string> bad = chunks_;
  bad.erase(bad.begin() + 1);
  EXPECT_TRUE(absl::IsInvalidArgument(store_->ImportSession("x", bad).status()));
  bad = chunks_;
  bad.pop_back();
  const absl::Status s = store_->ImportSession("x", bad).status();
  EXPECT_THAT(s.message(), HasSubstr("trailer"));
  bad = chunks_;
  bad[1].resize(bad[1].size() - 10);
  EXPECT_TRUE(absl::IsDataLoss(store_->ImportSession("x", bad).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(store_->ImportSession("x", {"garbage"}).status()));
  EXPECT_TRUE(absl::IsNotFound(store_->GetSession("x").status()));
  EXPECT_EQ(store_->Stats().total_sessions, 1);
}

}  // namespace
}  // namespace mplus::memstore
