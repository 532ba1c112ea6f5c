#include "engine/model_weights.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <string>
#include <vector>

#include "engine/checkpoint_writer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace mplus::engine {
namespace {

namespace fs = std::filesystem;
using Shape = std::vector<int64_t>;

const std::string kFixtures = MPLUS_FIXTURES_DIR;

fs::path FreshDir(const std::string& name) {
  const fs::path dir = fs::path(::testing::TempDir()) / ("model_weights_test_" + name);
  fs::remove_all(dir);
  return dir;
}

ModelConfig FixtureConfig() {
  auto c = LoadModelConfig(kFixtures + "/tiny-mplus/config.json");
  EXPECT_TRUE(c.ok()) << c.status();
  return *c;
}

std::string ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

TEST(ModelWeightsTest, LoadsFixtures) {
  for (const char* name : {"tiny-mplus", "tiny-mplus-bf16"}) {
    const std::string dir = kFixtures + "/" + name;
    auto config = LoadModelConfig(dir + "/config.json");
    ASSERT_TRUE(config.ok()) << config.status();
    auto store = WeightStore::OpenDirectory(dir);
    ASSERT_TRUE(store.ok()) << store.status();
    auto w = ModelWeights::Load(**store, *config);
    ASSERT_TRUE(w.ok()) << w.status();
    const DType dtype = config->dtype;
    EXPECT_EQ(w->embed_tokens.shape, (Shape{384, 64}));
    EXPECT_EQ(w->embed_tokens.dtype, dtype);
    EXPECT_EQ(w->lm_head.name, "lm_head.weight");
    EXPECT_EQ(w->final_norm.shape, (Shape{64}));
    ASSERT_EQ(w->layers.size(), 3u);
    const LayerWeights& l2 = w->layers[2];
    EXPECT_EQ(l2.q_proj.weight.name, "model.layers.2.self_attn.q_proj.base_layer.weight");
    EXPECT_EQ(l2.q_proj.weight.shape, (Shape{64, 64}));
    EXPECT_EQ(l2.k_proj.weight.shape, (Shape{32, 64}));
    EXPECT_EQ(l2.down_proj.weight.shape, (Shape{64, 160}));
    EXPECT_EQ(l2.down_proj.lora_a[0].shape, (Shape{4, 160}));
    EXPECT_EQ(l2.down_proj.lora_b[1].shape, (Shape{64, 4}));
    EXPECT_EQ(l2.down_proj.lora_b[1].name,
              "model.layers.2.mlp.down_proj.lora_B.decoder_adapter.weight");
    EXPECT_TRUE(l2.v_proj.has_lora(Adapter::kEncoder));
    EXPECT_TRUE(l2.v_proj.has_lora(Adapter::kDecoder));
    EXPECT_FALSE(l2.o_proj.has_lora(Adapter::kEncoder));  // o_proj is not a LoRA target
    EXPECT_EQ(l2.o_proj.weight.name, "model.layers.2.self_attn.o_proj.weight");
    ASSERT_EQ(l2.query_proj.linears.size(), 2u);
    EXPECT_EQ(l2.query_proj.linears[0].shape, (Shape{24, 64}));
    EXPECT_EQ(l2.key_proj.linears[1].shape, (Shape{12, 24}));
    EXPECT_EQ(w->memory.shape, (Shape{3, 32, 64}));
    EXPECT_EQ(w->bos_embedding.shape, (Shape{3, 1, 64}));
    EXPECT_EQ(w->new_memory_positional_emb.shape, (Shape{1, 1, 64}));
    ASSERT_EQ(w->ltm.size(), 3u);
    EXPECT_EQ(w->ltm[1].shape, (Shape{40, 64}));
    EXPECT_EQ(w->ltm_keys[1].shape, (Shape{40, 12}));
    EXPECT_EQ(w->ltm_ages[0].shape, (Shape{40}));
    EXPECT_EQ(w->ltm_ages[0].GetFloat(0), 209.0f);  // first stored age, see the fixture
    EXPECT_EQ(w->ltm_recall_frequencies[0].GetFloat(1), 1.5f);
  }
}

TEST(ModelWeightsTest, GeneratedTinyCheckpointMatchesFixtureLayout) {
  const fs::path dir = FreshDir("tiny");
  ASSERT_TRUE(WriteRandomCheckpoint(FixtureConfig(), {}, dir).ok());
  auto fixture = WeightStore::OpenDirectory(kFixtures + "/tiny-mplus");
  auto generated = WeightStore::OpenDirectory(dir);
  ASSERT_TRUE(fixture.ok() && generated.ok());
  EXPECT_EQ((*generated)->Names(), (*fixture)->Names());
  for (const std::string& name : (*fixture)->Names()) {
    EXPECT_EQ((*generated)->Get(name)->shape, (*fixture)->Get(name)->shape) << name;
  }
  auto config = LoadModelConfig((dir / "config.json").string());
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(ModelConfigToJson(*config), ModelConfigToJson(FixtureConfig()));
  EXPECT_TRUE(fs::exists(dir / "tokenizer.json"));
  EXPECT_TRUE(fs::exists(dir / "tokenizer_config.json"));
  // Values: norms near 1, ages integral, weights small.
  auto w = ModelWeights::Load(**generated, *config);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_NEAR(w->final_norm.GetFloat(0), 1.0f, 0.2f);
  const float age = w->ltm_ages[0].GetFloat(3);
  EXPECT_EQ(age, std::floor(age));
  EXPECT_LT(std::fabs(w->layers[0].q_proj.weight.GetFloat(0)), 0.2f);
}

TEST(ModelWeightsTest, LoadsEveryGeneratedVariant) {
  struct Variant {
    const char* name;
    std::function<void(ModelConfig&)> change;
  };
  const std::vector<Variant> variants = {
      {"mplus_bf16", [](ModelConfig& c) { c.dtype = DType::kBF16; }},
      {"mplus_f16_1layer_selector",
       [](ModelConfig& c) {
         c.dtype = DType::kF16;
         c.num_selector_layers = 1;
       }},
      {"mplus_no_decoder_lora_o_proj",
       [](ModelConfig& c) {
         c.add_decoder_lora = false;
         c.lora.target_modules = {"o_proj", "q_proj"};
       }},
      {"mplus_no_lora_tied",
       [](ModelConfig& c) {
         c.lora = {};
         c.add_decoder_lora = false;
         c.tie_word_embeddings = true;
       }},
      {"memoryllm",
       [](ModelConfig& c) {
         c.kind = ModelKind::kMemoryLLM;
         c.num_ltm_blocks = c.selector_hidden_dim = c.num_selector_layers = 0;
         c.ltm_initial_size = 0;
         c.add_encoder_retriever = false;
       }},
      {"llama",
       [](ModelConfig& c) {
         c.kind = ModelKind::kLlama;
         c.num_tokens = c.num_blocks = c.num_ltm_blocks = 0;
         c.lora = {};
         c.add_decoder_lora = false;
         c.head_dim = 32;  // head_dim != hidden / heads
       }},
  };
  for (const Variant& v : variants) {
    SCOPED_TRACE(v.name);
    ModelConfig c = FixtureConfig();
    v.change(c);
    const fs::path dir = FreshDir(v.name);
    ASSERT_TRUE(WriteRandomCheckpoint(c, {}, dir).ok());
    auto config = LoadModelConfig((dir / "config.json").string());
    ASSERT_TRUE(config.ok()) << config.status();
    auto store = WeightStore::OpenDirectory(dir);
    ASSERT_TRUE(store.ok()) << store.status();
    auto w = ModelWeights::Load(**store, *config);
    ASSERT_TRUE(w.ok()) << w.status();
    EXPECT_EQ(w->embed_tokens.dtype, c.dtype);
    EXPECT_EQ(w->layers[0].q_proj.weight.shape, (Shape{c.num_attention_heads * c.head_dim, 64}));
    EXPECT_EQ(w->layers[0].o_proj.has_lora(Adapter::kEncoder), c.lora.Targets("o_proj"));
    EXPECT_EQ(w->layers[0].q_proj.has_lora(Adapter::kDecoder), c.add_decoder_lora);
    if (c.tie_word_embeddings) {
      EXPECT_EQ(w->lm_head.data, w->embed_tokens.data);
    }
    EXPECT_EQ(w->memory.data != nullptr, c.has_memory());
    EXPECT_EQ(w->ltm.size(), c.has_long_term() ? 3u : 0u);
    if (c.has_long_term()) {
      EXPECT_EQ(w->layers[1].key_proj.linears.size(), static_cast<size_t>(c.num_selector_layers));
    }
    if (c.kind == ModelKind::kMemoryLLM) {
      EXPECT_EQ(w->memory.shape, (Shape{3, 48, 64}));
    }
  }
}

TEST(ModelWeightsTest, ShardedCheckpointIsDeterministic) {
  const ModelConfig c = FixtureConfig();
  CheckpointOptions sharded;
  sharded.seed = 11;
  sharded.shard_bytes = 200 << 10;  // ~1 MB checkpoint -> several shards
  sharded.threads = 3;
  const fs::path a = FreshDir("sharded");
  ASSERT_TRUE(WriteRandomCheckpoint(c, sharded, a).ok());
  EXPECT_TRUE(fs::exists(a / "model.safetensors.index.json"));
  EXPECT_FALSE(fs::exists(a / "model.safetensors"));
  auto store = WeightStore::OpenDirectory(a);
  ASSERT_TRUE(store.ok()) << store.status();
  auto w = ModelWeights::Load(**store, c);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_NE((*store)->FileOf("model.embed_tokens.weight"), (*store)->FileOf("ltm.2"));

  // Same seed, one thread, one file: identical tensor bytes.
  CheckpointOptions single = sharded;
  single.shard_bytes = 1ull << 30;
  single.threads = 1;
  const fs::path b = FreshDir("single");
  ASSERT_TRUE(WriteRandomCheckpoint(c, single, b).ok());
  auto store_b = WeightStore::OpenDirectory(b);
  ASSERT_TRUE(store_b.ok());
  for (const std::string& name : (*store)->Names()) {
    const TensorView x = *(*store)->Get(name), y = *(*store_b)->Get(name);
    ASSERT_EQ(x.nbytes, y.nbytes) << name;
    EXPECT_EQ(std::memcmp(x.data, y.data, x.nbytes), 0) << name;
  }
  // A different seed gives different weights.
  single.seed = 12;
  const fs::path d = FreshDir("seed12");
  ASSERT_TRUE(WriteRandomCheckpoint(c, single, d).ok());
  EXPECT_NE(ReadFile(d / "model.safetensors"), ReadFile(b / "model.safetensors"));
}

// The fixture's config with `vocab` ids, BOS `bos` and EOS `eos`.
ModelConfig TokenizerConfig(int64_t vocab, int64_t bos, std::vector<int64_t> eos) {
  ModelConfig c = FixtureConfig();
  c.vocab_size = vocab;
  c.bos_token_id = bos;
  c.eos_token_ids = std::move(eos);
  return c;
}

// WriteByteLevelTokenizer's tokenizer.json for `c`, parsed (in a fresh directory `name`).
nlohmann::json WrittenTokenizer(const ModelConfig& c, const std::string& name) {
  const fs::path dir = FreshDir(name);
  fs::create_directories(dir);
  EXPECT_TRUE(WriteByteLevelTokenizer(c, dir).ok());
  return nlohmann::json::parse(ReadFile(dir / "tokenizer.json"));
}

TEST(ModelWeightsTest, ByteLevelTokenizerPlacesSpecialsAtConfigIds) {
  const nlohmann::json tok = WrittenTokenizer(TokenizerConfig(300, 298, {299, 0}), "tokenizer");
  const auto& vocab = tok["model"]["vocab"];
  EXPECT_EQ(vocab.size(), 300u);
  EXPECT_EQ(vocab["<|begin_of_text|>"], 298);
  EXPECT_EQ(vocab["<|end_of_text|>"], 299);
  EXPECT_EQ(vocab["<|eos_1|>"], 0);
  EXPECT_EQ(vocab["Ā"], 1);  // byte 0 takes the first free id
  EXPECT_EQ(vocab["!"], 1 + '!');
  EXPECT_EQ(tok["added_tokens"].size(), 3u);

  EXPECT_FALSE(WriteByteLevelTokenizer(TokenizerConfig(200, 1, {2}), FreshDir("tokenizer")).ok());
}

// Llama 3's vocabulary (the GPU model bench's): every id once, fillers after the bytes.
TEST(ModelWeightsTest, ByteLevelTokenizerOfLlama3Size) {
  const nlohmann::json tok =
      WrittenTokenizer(TokenizerConfig(128256, 128000, {128001, 128009}), "tokenizer-llama3");
  const auto& vocab = tok["model"]["vocab"];
  ASSERT_EQ(vocab.size(), 128256u);
  std::vector<bool> seen(128256, false);
  for (const auto& [text, id] : vocab.items()) {
    const int64_t i = id.get<int64_t>();
    ASSERT_TRUE(i >= 0 && i < 128256 && !seen[i]) << text << " " << i;
    seen[i] = true;
  }
  EXPECT_EQ(vocab["<|unused_0|>"], 256);
  EXPECT_EQ(vocab["<|begin_of_text|>"], 128000);
  EXPECT_EQ(vocab["<|eos_1|>"], 128009);
}

}  // namespace
}  // namespace mplus::engine
