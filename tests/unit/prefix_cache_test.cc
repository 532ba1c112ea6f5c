// The session prefix cache: a prefill that reuses the cached bos / short-term keys and values
// must give bitwise the logits of one that recomputes them, across injects (after which only the
// new tokens' rows are computed), for M+ (fp32 and bf16 fixtures) and MemoryLLM; stored sessions
// count its bytes.
#include "engine/prefix_cache.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "engine/checkpoint_writer.h"
#include "engine/cpu/cpu_backend.h"
#include "engine/drop_slots.h"
#include "engine/model.h"
#include "gtest/gtest.h"
#include "memstore/in_memory_session.h"
#include "memstore/memory_store.h"

namespace mplus::engine {
namespace {

// Forwards to a session but keeps no prefix cache: the reference, uncached path.
class Uncached : public SessionMemory {
 public:
  explicit Uncached(SessionMemory& mem) : mem_(mem) {}
  ShortTermRows ShortTerm(int layer) const override { return mem_.ShortTerm(layer); }
  absl::StatusOr<std::vector<uint64_t>> SelectLongTerm(int layer,
                                                       RetrievalQueries& queries) override {
    return mem_.SelectLongTerm(layer, queries);
  }
  absl::Status ReadLongTerm(absl::Span<const uint64_t> ids, void* out) override {
    return mem_.ReadLongTerm(ids, out);
  }

 private:
  SessionMemory& mem_;
};

bool BitwiseEqual(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() &&
         (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

size_t ExpectedCacheBytes(const Model& model) {
  const ModelConfig& c = model.config();
  const int64_t rows = (model.weights().bos_embedding.data != nullptr ? 1 : 0) + c.stm_tokens();
  return static_cast<size_t>(2 * c.num_hidden_layers * rows * c.num_key_value_heads * c.head_dim) *
         DTypeSize(model.kv_dtype());
}

// Prefill + a few decode steps on both sessions; every logit vector must match bit for bit.
void ExpectSameForward(const Model& model, SessionMemory& cached, SessionMemory& uncached,
                       const std::vector<int32_t>& prompt) {
  PrefillOutput a, b;
  auto sa = model.Prefill(cached, prompt, 4, /*want_retrieved=*/true, &a);
  ASSERT_TRUE(sa.ok()) << sa.status();
  auto sb = model.Prefill(uncached, prompt, 4, /*want_retrieved=*/true, &b);
  ASSERT_TRUE(sb.ok()) << sb.status();
  EXPECT_TRUE(BitwiseEqual(a.logits, b.logits));
  ASSERT_EQ(a.retrieved.size(), b.retrieved.size());
  for (size_t l = 0; l < a.retrieved.size(); ++l) {
    EXPECT_TRUE(BitwiseEqual(a.retrieved[l], b.retrieved[l])) << "layer " << l;
  }
  for (int32_t token : {5, 17, 3, 42}) {
    auto la = model.Decode(**sa, token);
    auto lb = model.Decode(**sb, token);
    ASSERT_TRUE(la.ok() && lb.ok());
    EXPECT_TRUE(BitwiseEqual(*la, *lb)) << "decode of " << token;
  }
}

// Rounds of: two generates (the first fills or completes the cache, the second reuses it), then
// one inject applied to both sessions (the cache keeps the kept tokens' rows).
void RunRounds(const Model& model) {
  auto cached = memstore::InMemorySession::Create(model);
  auto reference = memstore::InMemorySession::Create(model);
  ASSERT_TRUE(cached.ok() && reference.ok());
  Uncached uncached(**reference);
  PrefixCache* cache = (*cached)->prefix_cache();
  ASSERT_NE(cache, nullptr);
  const ModelConfig& c = model.config();
  const std::vector<std::vector<int32_t>> prompts = {
      {11, 200, 37, 5, 90}, {3, 4}, {120, 7, 7, 250, 31, 64, 18, 99, 1}};
  for (int round = 0; round < 3; ++round) {
    SCOPED_TRACE(round);
    EXPECT_EQ(cache->empty(), round == 0);
    ExpectSameForward(model, **cached, uncached, prompts[round]);
    EXPECT_FALSE(cache->empty());
    EXPECT_EQ(cache->bytes(), ExpectedCacheBytes(model));
    ExpectSameForward(model, **cached, uncached, prompts[(round + 1) % prompts.size()]);

    const std::vector<int32_t> chunk = {40 + round, 41, 42, 43, 44, 45};
    auto drops = ChooseDropSlots(100 + round, round, static_cast<int>(c.num_hidden_layers),
                                 c.stm_tokens(), c.num_tokens);
    auto result = model.Inject(**cached, chunk, drops);
    ASSERT_TRUE(result.ok()) << result.status();
    ASSERT_TRUE((*cached)->ApplyInject(*result).ok());
    ASSERT_TRUE((*reference)->ApplyInject(*result).ok());
    EXPECT_EQ(cache->bytes(), ExpectedCacheBytes(model));
  }
  // Generate through the cache equals Generate without it.
  auto argmax = [](absl::Span<const float> logits) {
    return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  };
  auto ta = model.Generate(**cached, prompts[0], 6, argmax, nullptr);
  auto tb = model.Generate(uncached, prompts[0], 6, argmax, nullptr);
  ASSERT_TRUE(ta.ok() && tb.ok());
  EXPECT_EQ(*ta, *tb);
}

std::unique_ptr<Model> LoadOrDie(const std::string& dir, ModelOptions options = {}) {
  auto model = Model::Load(dir, options);
  EXPECT_TRUE(model.ok()) << model.status();
  return model.ok() ? std::move(*model) : nullptr;
}

TEST(PrefixCacheTest, MplusFloat32CachedPrefillIsBitwiseUncached) {
  auto model = LoadOrDie(std::string(MPLUS_FIXTURES_DIR) + "/tiny-mplus");
  ASSERT_NE(model, nullptr);
  RunRounds(*model);
}

TEST(PrefixCacheTest, MplusBfloat16CachedPrefillIsBitwiseUncached) {
  auto model = LoadOrDie(std::string(MPLUS_FIXTURES_DIR) + "/tiny-mplus-bf16");
  ASSERT_NE(model, nullptr);
  RunRounds(*model);
}

// An fp8 cache rounds the same keys the same way with and without the prefix cache (keys are
// rounded to the cache's type before RoPE, then stored in it), so it stays bitwise.
TEST(PrefixCacheTest, MplusFloat8CachedPrefillIsBitwiseUncached) {
  ModelOptions fp8;
  fp8.kv_cache_dtype = DType::kF8E4M3;
  auto model = LoadOrDie(std::string(MPLUS_FIXTURES_DIR) + "/tiny-mplus-bf16", fp8);
  ASSERT_NE(model, nullptr);
  ASSERT_EQ(model->kv_dtype(), DType::kF8E4M3);
  RunRounds(*model);
}

// The tiny bf16 M+ loaded with `chunked_options` and with the defaults, each with a fresh
// session: the two sides of a chunking-is-bitwise check.
struct ChunkedAndWhole {
  std::unique_ptr<Model> chunked, whole;
  std::unique_ptr<memstore::InMemorySession> mem_chunked, mem_whole;
};
ChunkedAndWhole LoadChunkedAndWhole(const ModelOptions& chunked_options) {
  const std::string dir = std::string(MPLUS_FIXTURES_DIR) + "/tiny-mplus-bf16";
  ChunkedAndWhole p;
  auto chunked = Model::Load(dir, chunked_options);
  EXPECT_TRUE(chunked.ok()) << chunked.status();
  if (!chunked.ok()) return p;
  p.chunked = *std::move(chunked);
  p.whole = LoadOrDie(dir);
  if (p.whole == nullptr) return p;
  auto mem_chunked = memstore::InMemorySession::Create(*p.chunked);
  auto mem_whole = memstore::InMemorySession::Create(*p.whole);
  EXPECT_TRUE(mem_chunked.ok() && mem_whole.ok());
  if (mem_chunked.ok() && mem_whole.ok()) {
    p.mem_chunked = *std::move(mem_chunked);
    p.mem_whole = *std::move(mem_whole);
  }
  return p;
}

// The prefix projected, gathered and cached in 16-row chunks (ModelOptions::prefix_chunk_rows)
// gives bitwise the logits of one whole-prefix chunk, with the cache filled, completed in place,
// and rewritten out of order after injects.
TEST(PrefixCacheTest, ChunkedPrefixIsBitwiseWholePrefix) {
  ModelOptions small;
  small.prefix_chunk_rows = kMinPrefixChunkRows;
  ChunkedAndWhole p = LoadChunkedAndWhole(small);
  ASSERT_NE(p.mem_whole, nullptr);
  const ModelConfig& c = p.whole->config();
  ASSERT_GE(c.stm_tokens(), 2 * kMinPrefixChunkRows) << "the fixture needs several chunks";
  for (int round = 0; round < 3; ++round) {
    SCOPED_TRACE(round);
    for (const std::vector<int32_t>& prompt : {std::vector<int32_t>{9, 31, 7}, {200, 4}}) {
      PrefillOutput a, b;
      auto sa = p.chunked->Prefill(*p.mem_chunked, prompt, 2, /*want_retrieved=*/false, &a);
      auto sb = p.whole->Prefill(*p.mem_whole, prompt, 2, /*want_retrieved=*/false, &b);
      ASSERT_TRUE(sa.ok() && sb.ok());
      EXPECT_TRUE(BitwiseEqual(a.logits, b.logits));
      auto la = p.chunked->Decode(**sa, 12);
      auto lb = p.whole->Decode(**sb, 12);
      ASSERT_TRUE(la.ok() && lb.ok());
      EXPECT_TRUE(BitwiseEqual(*la, *lb));
    }
    const std::vector<int32_t> chunk = {60 + round, 61, 62, 63};
    auto drops = ChooseDropSlots(7 + round, round, static_cast<int>(c.num_hidden_layers),
                                 c.stm_tokens(), c.num_tokens);
    auto ra = p.chunked->Inject(*p.mem_chunked, chunk, drops);
    auto rb = p.whole->Inject(*p.mem_whole, chunk, drops);
    ASSERT_TRUE(ra.ok() && rb.ok());
    ASSERT_TRUE(p.mem_chunked->ApplyInject(*ra).ok());
    ASSERT_TRUE(p.mem_whole->ApplyInject(*rb).ok());
  }
}

// A layer's MLP in row chunks (ModelOptions::mlp_chunk_rows) gives every row what the whole does,
// for chunks (inject) and prompts (prefill) of many rows.
TEST(PrefixCacheTest, ChunkedMlpIsBitwiseWholeMlp) {
  ModelOptions small;
  small.mlp_chunk_rows = kMinPrefixChunkRows;
  ChunkedAndWhole p = LoadChunkedAndWhole(small);
  ASSERT_NE(p.mem_whole, nullptr);
  const ModelConfig& c = p.whole->config();
  std::vector<int32_t> ids;  // several chunks of rows
  for (int32_t i = 0; i < 3 * kMinPrefixChunkRows + 5; ++i) ids.push_back(3 + i * 7 % 300);
  const auto drops =
      ChooseDropSlots(3, 0, static_cast<int>(c.num_hidden_layers), c.stm_tokens(), c.num_tokens);
  auto ra = p.chunked->Inject(*p.mem_chunked, ids, drops);
  auto rb = p.whole->Inject(*p.mem_whole, ids, drops);
  ASSERT_TRUE(ra.ok() && rb.ok());
  for (size_t l = 0; l < ra->delta.size(); ++l) {
    EXPECT_TRUE(BitwiseEqual(ra->delta[l], rb->delta[l])) << "layer " << l;
  }
  ASSERT_TRUE(p.mem_chunked->ApplyInject(*ra).ok());
  ASSERT_TRUE(p.mem_whole->ApplyInject(*rb).ok());
  PrefillOutput a, b;
  auto sa = p.chunked->Prefill(*p.mem_chunked, ids, 2, /*want_retrieved=*/false, &a);
  auto sb = p.whole->Prefill(*p.mem_whole, ids, 2, /*want_retrieved=*/false, &b);
  ASSERT_TRUE(sa.ok() && sb.ok());
  EXPECT_TRUE(BitwiseEqual(a.logits, b.logits));
}

TEST(PrefixCacheTest, ChunksBelowTheMinimumAreRefused) {
  const std::string dir = std::string(MPLUS_FIXTURES_DIR) + "/tiny-mplus-bf16";
  for (int64_t ModelOptions::*rows :
       {&ModelOptions::prefix_chunk_rows, &ModelOptions::mlp_chunk_rows}) {
    ModelOptions options;
    options.*rows = kMinPrefixChunkRows - 1;
    EXPECT_EQ(Model::Load(dir, options).status().code(), absl::StatusCode::kInvalidArgument);
  }
}

TEST(PrefixCacheTest, MemoryLlmCachedPrefillIsBitwiseUncached) {
  auto config = LoadModelConfig(std::string(MPLUS_FIXTURES_DIR) + "/tiny-mplus/config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  ModelConfig c = *config;
  c.kind = ModelKind::kMemoryLLM;
  c.num_ltm_blocks = c.selector_hidden_dim = c.num_selector_layers = c.ltm_initial_size = 0;
  c.update_ltm_frequency = 0;
  c.decay_frequency = c.initial_rf_when_moving_stm_to_ltm = 0;
  c.add_encoder_retriever = false;
  const std::string dir = ::testing::TempDir() + "/prefix_cache_memoryllm";
  CheckpointOptions options;
  options.seed = 5;
  options.init_std = 0.2;
  ASSERT_TRUE(WriteRandomCheckpoint(c, options, dir).ok());
  auto model = LoadOrDie(dir);
  ASSERT_NE(model, nullptr);
  RunRounds(*model);
}

// Counts the rows every MatMul multiplies: the work of the projections.
class RowCountingBackend : public cpu::CpuBackend {
 public:
  absl::Status MatMul(const Tensor& x, const Tensor& w, const Tensor& out, float alpha,
                      bool accumulate) override {
    rows += x.rows();
    return CpuBackend::MatMul(x, w, out, alpha, accumulate);
  }
  int64_t rows = 0;
};

// After an inject the next prefill projects only the K new tokens' rows: of the 1 + N prefix
// rows a cold prefill projects, a prefill after one inject projects K.
TEST(PrefixCacheTest, AnInjectRecomputesOnlyTheNewTokensRows) {
  auto backend = std::make_shared<RowCountingBackend>();
  ModelOptions options;
  options.backend = backend;
  auto model = Model::Load(std::string(MPLUS_FIXTURES_DIR) + "/tiny-mplus", options);
  ASSERT_TRUE(model.ok()) << model.status();
  auto session = memstore::InMemorySession::Create(**model);
  ASSERT_TRUE(session.ok());
  const std::vector<int32_t> prompt = {5, 6, 7};
  auto prefill_rows = [&]() -> int64_t {
    const int64_t before = backend->rows;
    PrefillOutput out;
    EXPECT_TRUE((*model)->Prefill(**session, prompt, 0, false, &out).ok());
    return backend->rows - before;
  };
  const int64_t cold = prefill_rows(), warm = prefill_rows();
  const ModelConfig& c = (*model)->config();
  auto drops =
      ChooseDropSlots(1, 0, static_cast<int>(c.num_hidden_layers), c.stm_tokens(), c.num_tokens);
  auto result = (*model)->Inject(**session, std::vector<int32_t>{1, 2, 3, 4, 5, 6, 7, 8, 9}, drops);
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_TRUE((*session)->ApplyInject(*result).ok());
  const int64_t after_inject = prefill_rows();
  EXPECT_LT(warm, after_inject);
  EXPECT_EQ((after_inject - warm) * (1 + c.stm_tokens()), (cold - warm) * c.num_tokens);
  EXPECT_EQ(prefill_rows(), warm);
}

TEST(PrefixCacheTest, ACacheFilledByAnotherModelIsRefilled) {
  auto fp32 = LoadOrDie(std::string(MPLUS_FIXTURES_DIR) + "/tiny-mplus");
  auto again = LoadOrDie(std::string(MPLUS_FIXTURES_DIR) + "/tiny-mplus");
  ASSERT_TRUE(fp32 && again);
  auto session = memstore::InMemorySession::Create(*fp32);
  auto reference = memstore::InMemorySession::Create(*fp32);
  ASSERT_TRUE(session.ok() && reference.ok());
  PrefillOutput out;
  ASSERT_TRUE(fp32->Prefill(**session, {9, 8, 7}, 0, false, &out).ok());
  ASSERT_FALSE((*session)->prefix_cache()->empty());
  Uncached uncached(**reference);
  ExpectSameForward(*again, **session, uncached, {1, 2, 3});
}

TEST(PrefixCacheTest, StoredSessionCountsTheCacheAndKeepsItOnCommit) {
  auto model = LoadOrDie(std::string(MPLUS_FIXTURES_DIR) + "/tiny-mplus");
  ASSERT_NE(model, nullptr);
  const std::string path = ::testing::TempDir() + "/prefix_cache_store";
  std::filesystem::remove_all(path);
  memstore::StoreOptions options;
  options.path = path;
  options.sync_writes = false;
  auto store = memstore::MemoryStore::Open(options, model->config(), model->weights());
  ASSERT_TRUE(store.ok()) << store.status();
  ASSERT_TRUE((*store)->CreateSession("s", {}, 1).ok());
  const std::vector<int32_t> prompt = {12, 34, 56};
  size_t without = 0;
  {
    auto handle = (*store)->Acquire("s");
    ASSERT_TRUE(handle.ok()) << handle.status();
    without = handle->resident().ResidentBytes();
    PrefillOutput out;
    ASSERT_TRUE(model->Prefill(handle->memory(), prompt, 0, false, &out).ok());
    EXPECT_EQ(handle->resident().ResidentBytes(), without + ExpectedCacheBytes(*model));
  }
  EXPECT_EQ((*store)->Stats().resident_bytes, without + ExpectedCacheBytes(*model));
  {
    auto handle = (*store)->Acquire("s");
    ASSERT_TRUE(handle.ok()) << handle.status();
    const ModelConfig& c = model->config();
    auto drops =
        ChooseDropSlots(3, 0, static_cast<int>(c.num_hidden_layers), c.stm_tokens(), c.num_tokens);
    auto result = model->Inject(handle->memory(), std::vector<int32_t>{7, 8, 9}, drops);
    ASSERT_TRUE(result.ok()) << result.status();
    ASSERT_TRUE(handle->Commit(*result, 3).ok());
    EXPECT_EQ(handle->memory().prefix_cache()->bytes(), ExpectedCacheBytes(*model));
  }
  store->reset();

  // A budget that holds the session but not its cache: the first generate makes it spill.
  options.resident_budget_bytes = without + ExpectedCacheBytes(*model) / 2;
  store = memstore::MemoryStore::Open(options, model->config(), model->weights());
  ASSERT_TRUE(store.ok()) << store.status();
  { ASSERT_TRUE((*store)->Acquire("s").ok()); }
  EXPECT_EQ((*store)->ResidentSessions().size(), 1u);
  {
    auto handle = (*store)->Acquire("s");
    ASSERT_TRUE(handle.ok()) << handle.status();
    PrefillOutput out;
    ASSERT_TRUE(model->Prefill(handle->memory(), prompt, 0, false, &out).ok());
  }
  EXPECT_TRUE((*store)->ResidentSessions().empty());
  EXPECT_EQ((*store)->Stats().session_spills, 1);
  store->reset();

  // With the cache switched off (--prefix_cache=false) sessions offer none and stay small.
  options.prefix_cache = false;
  store = memstore::MemoryStore::Open(options, model->config(), model->weights());
  ASSERT_TRUE(store.ok()) << store.status();
  {
    auto handle = (*store)->Acquire("s");
    ASSERT_TRUE(handle.ok()) << handle.status();
    EXPECT_EQ(handle->memory().prefix_cache(), nullptr);
    const size_t before = handle->resident().ResidentBytes();
    PrefillOutput out;
    ASSERT_TRUE(model->Prefill(handle->memory(), prompt, 0, false, &out).ok());
    EXPECT_EQ(handle->resident().ResidentBytes(), before);
  }
  EXPECT_EQ((*store)->ResidentSessions().size(), 1u);
}

}  // namespace
}  // namespace mplus::engine
