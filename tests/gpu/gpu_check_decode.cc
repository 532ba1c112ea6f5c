// Decode steps recorded once and replayed (Backend::Record: a CUDA graph per generation) against
// the same steps enqueued op by op, on the tiny M+ checkpoints: bitwise equal logits, step after
// step, since both run the same kernels with the same parameters.
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "engine/cuda/attention.h"
#include "engine/model.h"
#include "engine/session_memory.h"
#include "tests/gpu/gpu_check.h"

namespace mplus::gpu_test {
namespace {

// The checkpoint's initial short-term memory; the "retrieved" long-term tokens are its first
// K_ltm slots (any fixed rows do: both runs get the same).
class InitialMemory : public engine::SessionMemory {
 public:
  explicit InitialMemory(const engine::Model& model)
      : model_(model), slot_rows_(model.weights().memory.shape[1]) {
    std::iota(slot_rows_.begin(), slot_rows_.end(), 0);
  }
  engine::ShortTermRows ShortTerm(int layer) const override {
    const engine::TensorView& all = model_.weights().memory;
    const int64_t n = all.shape[1], d = all.shape[2];
    const size_t bytes = static_cast<size_t>(n * d) * engine::DTypeSize(all.dtype);
    return {
        {"memory", all.dtype, {n, d}, static_cast<const char*>(all.data) + layer * bytes, bytes},
        slot_rows_};
  }
  // Token ids: the layer in the high 32 bits, the slot in the low.
  absl::StatusOr<std::vector<uint64_t>> SelectLongTerm(int layer,
                                                       engine::RetrievalQueries&) override {
    std::vector<uint64_t> ids(static_cast<size_t>(model_.config().ltm_retrieved_tokens()));
    for (size_t i = 0; i < ids.size(); ++i)
      ids[i] = (uint64_t{static_cast<uint32_t>(layer)} << 32) | i;
    return ids;
  }
  absl::Status ReadLongTerm(absl::Span<const uint64_t> ids, void* out) override {
    for (size_t i = 0; i < ids.size(); ++i) {
      const engine::ShortTermRows stm = ShortTerm(static_cast<int>(ids[i] >> 32));
      stm.CopySlots(static_cast<int64_t>(ids[i] & 0xffffffffu), 1,
                    static_cast<char*>(out) + i * stm.row_bytes());
    }
    return absl::OkStatus();
  }

 private:
  const engine::Model& model_;
  std::vector<int32_t> slot_rows_;  // identity: the checkpoint's slot order
};

std::string FixtureDir(const std::string& name) {
  const char* root = std::getenv("MPLUS_GPU_FIXTURES");  // run.sh: the bundle's fixtures
  return std::string(root != nullptr ? root : "tests/fixtures") + "/" + name;
}

// StoreKeysValuesAt, RopeAt and AttentionAt read the position on the GPU (the kernels) and on
// the CPU (Backend's defaults, which read it back): the same results, and no cache row past the
// position is read (they hold NaN) or written but the position's. The first case is mplus-8b's
// decode after a 1024-token prompt (an H100 splits its keys 47 ways, merged by the wide combine).
TEST_F(GpuCheck, DecodeOpsAtADevicePosition) {
  const DecodeCase cases[] = {{14849, 14848, 32, 8, 128, DType::kBF16},
                              {3000, 1234, 32, 8, 128, DType::kBF16},
                              {3000, 0, 32, 8, 128, DType::kBF16},
                              {700, 699, 8, 8, 128, DType::kF32},
                              {500, 77, 8, 2, 64, DType::kF32},
                              {3000, 1234, 32, 8, 128, DType::kF8E4M3},  // tiles, GQA 4, key splits
                              {700, 699, 8, 8, 128, DType::kF8E4M3},
                              {500, 77, 8, 2, 64, DType::kF8E4M3}};
  uint32_t seed = 900;
  for (const DecodeCase& c : cases) {
    SCOPED_TRACE(testing::Message() << c);
    const int64_t kv_cols = c.kv_heads * c.hd, q_cols = c.heads * c.hd;
    const int64_t valid = c.position * kv_cols;  // cache elements before the position's row
    auto [cache, q, k, v, inv_freq] = RandomDecodeStep(c, seed);
    for (int64_t i = valid; i < c.capacity * kv_cols; ++i) {
      cache[i] = std::numeric_limits<float>::quiet_NaN();
    }
    std::vector<std::vector<float>> caches, value_caches, queries, outs;
    for (Backend* b : {cpu_, gpu_}) {
      SCOPED_TRACE(b->name());
      ASSERT_OK_AND_ASSIGN(pos, Position(*b, c.position));
      ASSERT_OK_AND_ASSIGN(kc, UploadAs(*b, cache, c.cache, {c.capacity, kv_cols}));
      ASSERT_OK_AND_ASSIGN(vc, UploadAs(*b, cache, c.cache, {c.capacity, kv_cols}));
      ASSERT_OK_AND_ASSIGN(kt, Upload(*b, k, {1, kv_cols}));
      ASSERT_OK_AND_ASSIGN(vt, Upload(*b, v, {1, kv_cols}));
      ASSERT_OK_AND_ASSIGN(freq, Upload(*b, inv_freq, {c.hd / 2}));
      ASSERT_OK(b->StoreKeysValuesAt(kt, vt, c.hd, pos, freq, kc, vc));
      ASSERT_OK_AND_ASSIGN(qt, Upload(*b, q, {1, q_cols}));
      ASSERT_OK(b->RopeAt(qt, c.hd, pos, freq));
      ASSERT_OK_AND_ASSIGN(out, Poisoned(*b, {1, q_cols}));
      ASSERT_OK(b->AttentionAt(qt, kc, vc, pos, c.heads, c.kv_heads, c.hd, out));
      ASSERT_OK_AND_ASSIGN(kc_wide, b->Allocate(DType::kF32, {c.capacity, kv_cols}));
      ASSERT_OK(b->Copy(kc, kc_wide));
      ASSERT_OK_AND_ASSIGN(cache_host, Download(*b, kc_wide));
      ASSERT_OK(b->Copy(vc, kc_wide));
      ASSERT_OK_AND_ASSIGN(value_cache_host, Download(*b, kc_wide));
      value_caches.push_back(std::move(value_cache_host));
      ASSERT_OK_AND_ASSIGN(q_host, Download(*b, qt));
      ASSERT_OK_AND_ASSIGN(out_host, Download(*b, out));
      caches.push_back(std::move(cache_host));
      queries.push_back(std::move(q_host));
      outs.push_back(std::move(out_host));
    }
    // The rows before the position are untouched, the position's row is the rotated key, the
    // rows after it still NaN (NaN != NaN: compare bits).
    std::vector<float> gpu_row(caches[1].begin() + valid, caches[1].begin() + valid + kv_cols);
    std::vector<float> cpu_row(caches[0].begin() + valid, caches[0].begin() + valid + kv_cols);
    ExpectNear(gpu_row, cpu_row, CacheRowBound(cpu_row, c.cache), "StoreKeysValuesAt row");
    for (int64_t i = 0; i < c.capacity * kv_cols; ++i) {
      if (i >= valid && i < valid + kv_cols) continue;
      ASSERT_EQ(std::isnan(caches[1][i]), i >= valid + kv_cols) << "cache element " << i;
      if (i < valid) {
        ASSERT_EQ(caches[1][i], cache[i]) << "cache element " << i;
      }
    }
    ExpectNear(queries[1], queries[0], RelBound(queries[0], 1e-5f, 1e-5f), "RopeAt");
    for (float x : outs[1]) ASSERT_FALSE(std::isnan(x)) << "a row past the position was read";
    // The CPU's AttentionAt over the GPU's own cache and query: a stored key one cache step off
    // the CPU's (cosf/sinf may differ in the last bit) must not move this comparison.
    ASSERT_OK_AND_ASSIGN(cpu_pos, Position(*cpu_, c.position));
    ASSERT_OK_AND_ASSIGN(k_cache, UploadAs(*cpu_, caches[1], c.cache, {c.capacity, kv_cols}));
    ASSERT_OK_AND_ASSIGN(v_cache, UploadAs(*cpu_, value_caches[1], c.cache, {c.capacity, kv_cols}));
    ASSERT_OK_AND_ASSIGN(gpu_query, Upload(*cpu_, queries[1], {1, q_cols}));
    ASSERT_OK_AND_ASSIGN(want, Poisoned(*cpu_, {1, q_cols}));
    ASSERT_OK(
        cpu_->AttentionAt(gpu_query, k_cache, v_cache, cpu_pos, c.heads, c.kv_heads, c.hd, want));
    ASSERT_OK_AND_ASSIGN(want_host, Download(*cpu_, want));
    ExpectNear(outs[1], want_host, RelBound(want_host, 2e-5f, 1e-4f), "AttentionAt");
  }
}

// Decode attention's pipelined tiles (MPLUS_CUDA_DECODE_PIPELINE=1) against the unpipelined
// kernel at the same split counts (each variant's choice, and 3: many tiles a warp), launched
// directly: bit for bit, over bf16 and fp8 caches and each GQA group the tile kernel takes. The
// 14,849-row caches give a warp 3 or more tiles of a split (the pipelined loads carried from
// tile to tile; splits past the position see no key), the small ones partial tiles.
TEST_F(GpuCheck, PipelinedDecodeTilesMatchUnpipelinedBitwise) {
  int sms = 0;
  ASSERT_EQ(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0), cudaSuccess);
  cudaStream_t stream = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  const DecodeCase cases[] = {
      {14849, 14848, 32, 8, 128, DType::kBF16}, {14849, 14848, 32, 8, 128, DType::kF8E4M3},
      {14849, 14848, 64, 8, 128, DType::kBF16}, {14849, 9000, 64, 8, 128, DType::kF8E4M3},
      {14849, 14000, 16, 8, 128, DType::kBF16}, {14849, 14848, 16, 8, 128, DType::kF8E4M3},
      {14849, 14848, 8, 8, 128, DType::kBF16},  {14849, 12345, 8, 8, 128, DType::kF8E4M3},
      {3000, 1234, 64, 8, 128, DType::kBF16},   {700, 299, 16, 8, 128, DType::kBF16},
      {500, 77, 8, 8, 128, DType::kF8E4M3},     {97, 40, 8, 1, 128, DType::kBF16}};
  uint32_t seed = 1300;
  for (const DecodeCase& c : cases) {
    SCOPED_TRACE(testing::Message() << c);
    const int64_t kv_cols = c.kv_heads * c.hd, q_cols = c.heads * c.hd;
    const engine::cuda::AttentionShape shape{1, c.capacity, c.heads, c.kv_heads, c.hd};
    ASSERT_OK_AND_ASSIGN(pos, Position(*gpu_, c.position));
    ASSERT_OK_AND_ASSIGN(kc, UploadAs(*gpu_, RandomFloats(c.capacity * kv_cols, seed++, -2, 2),
                                      c.cache, {c.capacity, kv_cols}));
    ASSERT_OK_AND_ASSIGN(vc, UploadAs(*gpu_, RandomFloats(c.capacity * kv_cols, seed++), c.cache,
                                      {c.capacity, kv_cols}));
    ASSERT_OK_AND_ASSIGN(qt, Upload(*gpu_, RandomFloats(q_cols, seed++, -1, 1), {1, q_cols}));
    for (const int splits : {engine::cuda::AttentionSplits(shape, sms, c.cache, true),
                             engine::cuda::AttentionSplits(shape, sms, c.cache, false), 3}) {
      SCOPED_TRACE(testing::Message() << splits << " splits");
      ASSERT_OK_AND_ASSIGN(
          ws, gpu_->Allocate(
                  DType::kF32,
                  {static_cast<int64_t>(engine::cuda::AttentionWorkspaceBytes(shape, splits) / 4) +
                   1}));
      std::vector<std::vector<float>> outs;  // pipelined, unpipelined
      for (const bool pipelined : {true, false}) {
        ASSERT_OK_AND_ASSIGN(out, Poisoned(*gpu_, {1, q_cols}));
        ASSERT_OK(gpu_->Synchronize());  // the uploads, on the backend's stream
        ASSERT_EQ(engine::cuda::LaunchAttention(
                      qt.data_as<const float>(), kc.data(), vc.data(), c.cache,
                      out.data_as<float>(), shape, splits, ws.data(), stream,
                      /*dependent=*/false, pos.data_as<const int64_t>(), pipelined),
                  cudaSuccess);
        ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
        ASSERT_OK_AND_ASSIGN(host, Download(*gpu_, out));
        outs.push_back(std::move(host));
      }
      for (float x : outs[0]) ASSERT_FALSE(std::isnan(x));
      EXPECT_TRUE(SameBits(outs[0], outs[1]))
          << "pipelined and unpipelined decode attention differ";
    }
  }
  cudaStreamDestroy(stream);
}

// Two generations per model, with different capacities: the second records afresh while the
// first one's recording (and its arena) is freed.
TEST_F(GpuCheck, RecordedDecodeStepsMatchStepByStepBitwise) {
  constexpr int kSteps = 12, kGenerations = 2;
  for (const char* fixture : {"tiny-mplus", "tiny-mplus-bf16"}) {
    SCOPED_TRACE(fixture);
    std::vector<std::vector<float>> logits[2];  // [replayed?][generation * kSteps + step]
    for (const bool replay : {false, true}) {
      engine::ModelOptions options;
      options.backend = std::shared_ptr<Backend>(gpu_, [](Backend*) {});
      options.replay_decode = replay;
      ASSERT_OK_AND_ASSIGN(model, engine::Model::Load(FixtureDir(fixture), options));
      InitialMemory memory(*model);
      for (int generation = 0; generation < kGenerations; ++generation) {
        engine::PrefillOutput out;
        const std::vector<int32_t> prompt = {1, 17, 33, 5, 80};
        ASSERT_OK_AND_ASSIGN(state,
                             model->Prefill(memory, prompt, kSteps + 7 * generation, false, &out));
        int32_t token = 3 + generation;
        for (int step = 0; step < kSteps; ++step) {
          ASSERT_OK_AND_ASSIGN(step_logits, model->Decode(*state, token));
          token = static_cast<int32_t>((token * 31 + step) % model->config().vocab_size);
          logits[replay].push_back(std::move(step_logits));
        }
        // Recording needs 4 steps of room, which the first step has.
        EXPECT_EQ(state->replaying(), replay) << state->recording_status();
      }
    }
    for (int i = 0; i < kGenerations * kSteps; ++i) {
      EXPECT_EQ(logits[1][i], logits[0][i])
          << "generation " << i / kSteps << " step " << i % kSteps;
    }
  }
}

}  // namespace
}  // namespace mplus::gpu_test
