// MemoryStore on the real tiny-mplus checkpoints (fp32 and bf16): the base memory validates,
// a session starts from the checkpoint, and injects survive a reopen bit for bit.
#include "engine/model_config.h"
#include "engine/model_weights.h"
#include "engine/safetensors.h"
#include "gtest/gtest.h"
#include "memstore/memory_store.h"
#include "tests/unit/memstore_test_util.h"

namespace mplus::memstore {
namespace {

TEST(MemstoreFixtureTest, TinyMplusCheckpointsRoundTrip) {
  for (const char* name : {"tiny-mplus", "tiny-mplus-bf16"}) {
    const std::string dir = std::string(MPLUS_FIXTURES_DIR) + "/" + name;
    absl::StatusOr<engine::ModelConfig> config = engine::LoadModelConfig(dir + "/config.json");
    ASSERT_TRUE(config.ok()) << config.status();
    absl::StatusOr<std::unique_ptr<engine::WeightStore>> files =
        engine::WeightStore::OpenDirectory(dir);
    ASSERT_TRUE(files.ok()) << files.status();
    absl::StatusOr<engine::ModelWeights> weights = engine::ModelWeights::Load(**files, *config);
    ASSERT_TRUE(weights.ok()) << weights.status();

    StoreOptions o;
    o.path = testing::TempDir("fixture");
    absl::StatusOr<std::unique_ptr<BaseMemory>> base = BaseMemory::Create(*config, *weights);
    ASSERT_TRUE(base.ok()) << base.status();
    testing::ReferenceSession ref(**base);
    {
      absl::StatusOr<std::unique_ptr<MemoryStore>> store = MemoryStore::Open(o, *config, *weights);
      ASSERT_TRUE(store.ok()) << store.status();
      ASSERT_TRUE((*store)->CreateSession("s", {}, 0).ok());
      absl::StatusOr<SessionHandle> h = (*store)->Acquire("s");
      ASSERT_TRUE(h.ok()) << h.status();
      // A fresh session is exactly the checkpoint memory.
      const engine::TensorView stm = h->memory().ShortTerm(2).pool;
      EXPECT_EQ(
          std::memcmp(stm.data, static_cast<const uint8_t*>(weights->memory.data) + 2 * stm.nbytes,
                      stm.nbytes),
          0);
      EXPECT_EQ(h->info().ltm_tokens, config->ltm_initial_size * config->num_hidden_layers);
      for (int n = 0; n < 12; ++n) {
        const engine::InjectResult r = testing::MakeInject(*config, 11, n);
        ASSERT_TRUE(h->Commit(r, 16).ok());
        ref.Apply(r);
      }
    }
    absl::StatusOr<std::unique_ptr<MemoryStore>> store = MemoryStore::Open(o, *config, *weights);
    ASSERT_TRUE(store.ok()) << store.status();
    absl::StatusOr<SessionHandle> h = (*store)->Acquire("s");
    ASSERT_TRUE(h.ok()) << h.status();
    EXPECT_EQ(testing::CompareWithReference(const_cast<ResidentSession&>(h->resident()), ref), "")
        << name;
  }
}

}  // namespace
}  // namespace mplus::memstore
