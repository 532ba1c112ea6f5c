// Model: a plain Llama checkpoint made in the test (KV cache consistency, generation loop,
// input validation) and the tiny-mplus fixture (generation and inject through the session).
#include "engine/model.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "engine/safetensors.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "memstore/in_memory_session.h"

namespace mplus::engine {
namespace {

using ::testing::HasSubstr;

constexpr int64_t kVocab = 50, kHidden = 16, kInter = 24, kLayers = 2;

TensorToWrite Random(const std::string& name, std::vector<int64_t> shape, double seed,
                     float scale) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[i] = scale * static_cast<float>(std::sin(seed * (i + 1)));
  TensorToWrite t{name, DType::kF32, std::move(shape), {}};
  t.bytes.resize(v.size() * sizeof(float));
  std::memcpy(t.bytes.data(), v.data(), t.bytes.size());
  return t;
}

// A 2-layer Llama with GQA (4 query heads, 2 KV heads) and random weights.
std::string MakeLlamaCheckpoint() {
  const std::string dir = ::testing::TempDir() + "/model_test_llama";
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/config.json") << R"({
    "architectures": ["LlamaForCausalLM"], "torch_dtype": "float32", "vocab_size": 50,
    "hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0, "max_position_embeddings": 64, "bos_token_id": 1,
    "eos_token_id": 2, "hidden_act": "silu", "tie_word_embeddings": false})";
  std::vector<TensorToWrite> t;
  double seed = 1.1;
  auto add = [&](const std::string& name, std::vector<int64_t> shape, float scale) {
    t.push_back(Random(name, std::move(shape), seed += 0.37, scale));
  };
  add("model.embed_tokens.weight", {kVocab, kHidden}, 1.0f);
  add("model.norm.weight", {kHidden}, 1.0f);
  add("lm_head.weight", {kVocab, kHidden}, 0.5f);
  for (int l = 0; l < kLayers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    add(p + "input_layernorm.weight", {kHidden}, 1.0f);
    add(p + "post_attention_layernorm.weight", {kHidden}, 1.0f);
    add(p + "self_attn.q_proj.weight", {kHidden, kHidden}, 0.3f);
    add(p + "self_attn.k_proj.weight", {kHidden / 2, kHidden}, 0.3f);
    add(p + "self_attn.v_proj.weight", {kHidden / 2, kHidden}, 0.3f);
    add(p + "self_attn.o_proj.weight", {kHidden, kHidden}, 0.3f);
    add(p + "mlp.gate_proj.weight", {kInter, kHidden}, 0.3f);
    add(p + "mlp.up_proj.weight", {kInter, kHidden}, 0.3f);
    add(p + "mlp.down_proj.weight", {kHidden, kInter}, 0.3f);
  }
  EXPECT_TRUE(WriteSafetensors(dir + "/model.safetensors", t).ok());
  return dir;
}

// Plain Llama has no memory; the model must not ask for any.
class NoMemory : public SessionMemory {
 public:
  ShortTermRows ShortTerm(int) const override { return {}; }
  absl::StatusOr<std::vector<uint64_t>> SelectLongTerm(int, RetrievalQueries&) override {
    return absl::InternalError("unexpected retrieval");
  }
  absl::Status ReadLongTerm(absl::Span<const uint64_t>, void*) override {
    return absl::InternalError("unexpected retrieval");
  }
};

int32_t Argmax(absl::Span<const float> logits) {
  size_t best = 0;
  for (size_t i = 1; i < logits.size(); ++i) {
    if (logits[i] > logits[best]) best = i;
  }
  return static_cast<int32_t>(best);
}

class LlamaModelTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { dir_ = new std::string(MakeLlamaCheckpoint()); }
  static void TearDownTestSuite() { delete dir_; }
  std::unique_ptr<Model> Load(int64_t max_context = 0) {
    ModelOptions options;
    options.num_threads = 2;
    options.max_context = max_context;
    auto model = Model::Load(*dir_, options);
    EXPECT_TRUE(model.ok()) << model.status();
    return model.ok() ? std::move(*model) : nullptr;
  }
  static std::string* dir_;
  NoMemory mem_;
};
std::string* LlamaModelTest::dir_ = nullptr;

TEST_F(LlamaModelTest, DecodeWithCacheMatchesPrefillOfTheLongerPrompt) {
  std::unique_ptr<Model> model = Load();
  ASSERT_NE(model, nullptr);
  EXPECT_EQ(model->prefix_length(), 0);
  const std::vector<int32_t> prompt = {3, 17, 42, 8, 0};
  PrefillOutput first;
  auto state = model->Prefill(mem_, prompt, 2, false, &first);
  ASSERT_TRUE(state.ok()) << state.status();
  ASSERT_EQ(first.logits.size(), static_cast<size_t>(kVocab));
  EXPECT_EQ((*state)->length(), 5);
  auto decoded = model->Decode(**state, 21);
  ASSERT_TRUE(decoded.ok()) << decoded.status();

  std::vector<int32_t> longer = prompt;
  longer.push_back(21);
  PrefillOutput full;
  ASSERT_TRUE(model->Prefill(mem_, longer, 0, false, &full).ok());
  for (int64_t i = 0; i < kVocab; ++i) EXPECT_NEAR((*decoded)[i], full.logits[i], 1e-4) << i;
}

TEST_F(LlamaModelTest, GenerateIsGreedyAndStopsWhenTheCallbackSaysSo) {
  std::unique_ptr<Model> model = Load();
  ASSERT_NE(model, nullptr);
  const std::vector<int32_t> prompt = {5, 6, 7};
  auto tokens = model->Generate(mem_, prompt, 4, Argmax, nullptr);
  ASSERT_TRUE(tokens.ok()) << tokens.status();
  ASSERT_EQ(tokens->size(), 4u);
  // The same tokens one by one through Prefill/Decode.
  PrefillOutput first;
  auto state = model->Prefill(mem_, prompt, 4, false, &first);
  ASSERT_TRUE(state.ok());
  int32_t token = Argmax(first.logits);
  EXPECT_EQ(token, (*tokens)[0]);
  for (int i = 1; i < 4; ++i) {
    token = Argmax(*model->Decode(**state, token));
    EXPECT_EQ(token, (*tokens)[i]);
  }
  int seen = 0;
  auto stopped = model->Generate(mem_, prompt, 4, Argmax, [&](int32_t) { return ++seen < 2; });
  ASSERT_TRUE(stopped.ok());
  EXPECT_EQ(stopped->size(), 2u);
}

TEST_F(LlamaModelTest, RejectsBadInputs) {
  std::unique_ptr<Model> model = Load(/*max_context=*/8);
  ASSERT_NE(model, nullptr);
  PrefillOutput out;
  absl::StatusOr<std::unique_ptr<DecodeState>> s =
      model->Prefill(mem_, std::vector<int32_t>{1, 50}, 1, false, &out);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.status().message(), HasSubstr("token id 50"));
  EXPECT_THAT(s.status().message(), HasSubstr("vocabulary size 50"));
  s = model->Prefill(mem_, std::vector<int32_t>{}, 1, false, &out);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  s = model->Prefill(mem_, std::vector<int32_t>{1, 2, 3, 4, 5, 6}, 3, false, &out);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  s = model->Prefill(mem_, std::vector<int32_t>{1, 2, 3, 4, 5, 6}, 1, false, &out);
  ASSERT_TRUE(s.ok());
  EXPECT_TRUE(model->Decode(**s, 3).ok());
  EXPECT_EQ(model->Decode(**s, 3).status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(model->Inject(mem_, std::vector<int32_t>{1}, {}).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

class TinyMplusTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto model = Model::Load(std::string(MPLUS_FIXTURES_DIR) + "/tiny-mplus", ModelOptions());
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = std::move(*model);
    auto session = memstore::InMemorySession::Create(*model_);
    ASSERT_TRUE(session.ok()) << session.status();
    session_ = std::move(*session);
  }
  std::unique_ptr<Model> model_;
  std::unique_ptr<memstore::InMemorySession> session_;
};

TEST_F(TinyMplusTest, GenerateReproducesTheGoldenTokensOfScenarioOne) {
  auto golden =
      SafetensorsFile::Open(std::string(MPLUS_FIXTURES_DIR) + "/tiny-mplus/golden-1.safetensors");
  ASSERT_TRUE(golden.ok()) << golden.status();
  const TensorView& want = (*golden)->tensors().at("s0.tokens");
  auto tokens = model_->Generate(*session_, std::vector<int32_t>{182, 288, 338, 336, 84, 19}, 8,
                                 Argmax, nullptr);
  ASSERT_TRUE(tokens.ok()) << tokens.status();
  ASSERT_EQ(tokens->size(), 8u);
  for (int i = 0; i < 8; ++i) EXPECT_EQ((*tokens)[i], static_cast<const int64_t*>(want.data)[i]);
}

// The same tokens with each decode step's argmax taken by the backend (Backend::Argmax).
TEST_F(TinyMplusTest, DecodeGreedyReproducesTheGoldenTokensOfScenarioOne) {
  auto golden =
      SafetensorsFile::Open(std::string(MPLUS_FIXTURES_DIR) + "/tiny-mplus/golden-1.safetensors");
  ASSERT_TRUE(golden.ok()) << golden.status();
  const auto* want = static_cast<const int64_t*>((*golden)->tensors().at("s0.tokens").data);
  PrefillOutput first;
  auto state = model_->Prefill(*session_, std::vector<int32_t>{182, 288, 338, 336, 84, 19}, 8,
                               false, &first);
  ASSERT_TRUE(state.ok()) << state.status();
  int32_t token = Argmax(first.logits);
  EXPECT_EQ(token, want[0]);
  for (int i = 1; i < 8; ++i) {
    absl::StatusOr<int32_t> next = model_->DecodeGreedy(**state, token);
    ASSERT_TRUE(next.ok()) << next.status();
    token = *next;
    EXPECT_EQ(token, want[i]) << "token " << i;
  }
}

TEST_F(TinyMplusTest, InjectValidatesDropsAndTheSessionKeepsAges) {
  const int layers = 3;
  const int64_t n = model_->config().stm_tokens(), k = model_->config().num_tokens;
  const std::vector<int32_t> ids = {10, 20, 30};
  std::vector<std::vector<int32_t>> drops(layers, {0, 1, 2, 3, 4, 5, 6, 6});
  EXPECT_EQ(model_->Inject(*session_, ids, drops).status().code(),
            absl::StatusCode::kInvalidArgument);
  drops.assign(layers, {0, 1, 2, 3, 4, 5, 6, 32});
  EXPECT_EQ(model_->Inject(*session_, ids, drops).status().code(),
            absl::StatusCode::kInvalidArgument);
  drops.assign(layers - 1, {0, 1, 2, 3, 4, 5, 6, 7});
  EXPECT_EQ(model_->Inject(*session_, ids, drops).status().code(),
            absl::StatusCode::kInvalidArgument);

  drops = ChooseDropSlots(7, 0, layers, n, k);
  auto result = model_->Inject(*session_, ids, drops);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->dropped, drops);
  ASSERT_EQ(result->dropped_keys.size(), static_cast<size_t>(layers));
  EXPECT_EQ(result->dropped_keys[0].size(),
            static_cast<size_t>(k * model_->config().selector_hidden_dim));
  const int64_t before = session_->ltm_count(0);
  ASSERT_TRUE(session_->ApplyInject(*result).ok());
  EXPECT_EQ(session_->ltm_count(0), before + k);
  for (int64_t slot = 0; slot < n - k; ++slot) EXPECT_EQ(session_->stm_age(0, slot), 0);
  for (int64_t i = 0; i < k; ++i) EXPECT_EQ(session_->stm_age(0, n - k + i), k - 1 - i);
  // The new memory tokens are the last K STM rows.
  const ShortTermRows stm = session_->ShortTerm(1);
  const int64_t d = model_->config().hidden_size;
  for (int64_t i = 0; i < k * d; ++i) {
    EXPECT_EQ(stm.GetFloat(n - k + i / d, i % d), result->delta[1][i]);
  }
}

// --kv_cache_dtype: parsed strictly; fp8 changes a generation's logits by float8 rounding only
// (well inside bf16's golden tolerance here) and never an inject (it runs at the checkpoint's
// precision: its outputs become memory).
TEST(KvCacheDTypeTest, Fp8CachesChangeGenerationsSlightlyAndInjectsNot) {
  EXPECT_EQ(*ParseKvCacheDType("auto"), std::nullopt);
  EXPECT_EQ(*ParseKvCacheDType("fp8"), DType::kF8E4M3);
  EXPECT_EQ(ParseKvCacheDType("int8").status().code(), absl::StatusCode::kInvalidArgument);
  const std::string dir = std::string(MPLUS_FIXTURES_DIR) + "/tiny-mplus-bf16";
  ModelOptions options;
  options.kv_cache_dtype = DType::kI64;
  EXPECT_EQ(Model::Load(dir, options).status().code(), absl::StatusCode::kInvalidArgument);

  std::vector<float> logits[2];
  std::vector<float> delta[2];
  for (int fp8 = 0; fp8 < 2; ++fp8) {
    options.kv_cache_dtype = fp8 ? std::optional(DType::kF8E4M3) : std::nullopt;
    auto model = Model::Load(dir, options);
    ASSERT_TRUE(model.ok()) << model.status();
    EXPECT_EQ((*model)->kv_dtype(), fp8 ? DType::kF8E4M3 : DType::kBF16);
    auto session = memstore::InMemorySession::Create(**model);
    ASSERT_TRUE(session.ok());
    PrefillOutput out;
    auto state = (*model)->Prefill(**session, std::vector<int32_t>{5, 90, 17, 200}, 1, false, &out);
    ASSERT_TRUE(state.ok()) << state.status();
    logits[fp8] = out.logits;
    const ModelConfig& c = (*model)->config();
    auto inject = (*model)->Inject(
        **session, std::vector<int32_t>{40, 41, 42},
        ChooseDropSlots(7, 0, static_cast<int>(c.num_hidden_layers), c.stm_tokens(), c.num_tokens));
    ASSERT_TRUE(inject.ok()) << inject.status();
    delta[fp8] = inject->delta[0];
  }
  EXPECT_EQ(delta[1], delta[0]);
  double err = 0, norm = 0;
  for (size_t i = 0; i < logits[0].size(); ++i) {
    err += (logits[1][i] - logits[0][i]) * (logits[1][i] - logits[0][i]);
    norm += logits[0][i] * logits[0][i];
  }
  EXPECT_GT(err, 0.0) << "the fp8 cache was not used";
  EXPECT_LT(std::sqrt(err / norm), 2e-2);
}

// --merge_decoder_lora: parsed strictly; auto keeps the CPU unmerged (no second host copy);
// merged, a generation's logits and an inject's memory move by one rounding of each merged
// float32 weight only, and the merged weights outlive the load (the CPU reads them in place).
TEST(MergeDecoderLoraTest, MergedModelMatchesTheUnmergedOneUpToRounding) {
  EXPECT_EQ(*ParseMergeDecoderLora("auto"), std::nullopt);
  EXPECT_EQ(*ParseMergeDecoderLora("true"), true);
  EXPECT_EQ(ParseMergeDecoderLora("1").status().code(), absl::StatusCode::kInvalidArgument);
  const std::string dir = std::string(MPLUS_FIXTURES_DIR) + "/tiny-mplus";
  ModelOptions options;
  std::vector<float> logits[2], delta[2];
  for (int merge = 0; merge < 2; ++merge) {
    if (merge) options.merge_decoder_lora = true;
    auto model = Model::Load(dir, options);
    ASSERT_TRUE(model.ok()) << model.status();
    EXPECT_EQ((*model)->decoder_lora_merged(), merge == 1);
    auto session = memstore::InMemorySession::Create(**model);
    ASSERT_TRUE(session.ok());
    PrefillOutput out;
    auto state = (*model)->Prefill(**session, std::vector<int32_t>{5, 90, 17, 200}, 2, false, &out);
    ASSERT_TRUE(state.ok()) << state.status();
    auto next = (*model)->Decode(**state, 7);
    ASSERT_TRUE(next.ok()) << next.status();
    logits[merge] = *next;
    const ModelConfig& c = (*model)->config();
    auto inject = (*model)->Inject(
        **session, std::vector<int32_t>{40, 41, 42},
        ChooseDropSlots(7, 0, static_cast<int>(c.num_hidden_layers), c.stm_tokens(), c.num_tokens));
    ASSERT_TRUE(inject.ok()) << inject.status();
    delta[merge] = inject->delta[0];
  }
  for (const auto* pair : {&logits, &delta}) {
    const std::vector<float>&a = (*pair)[0], &b = (*pair)[1];
    ASSERT_EQ(a.size(), b.size());
    double err = 0, norm = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      err += (b[i] - a[i]) * (b[i] - a[i]);
      norm += a[i] * a[i];
    }
    EXPECT_GT(err, 0.0) << "the merged weights were not used";
    EXPECT_LT(std::sqrt(err / norm), 1e-5);
  }
}

// A checkpoint without a decoder adapter has nothing to merge.
TEST(MergeDecoderLoraTest, PlainLlamaHasNothingToMerge) {
  ModelOptions options;
  options.merge_decoder_lora = true;
  auto model = Model::Load(MakeLlamaCheckpoint(), options);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_FALSE((*model)->decoder_lora_merged());
}

}  // namespace
}  // namespace mplus::engine
