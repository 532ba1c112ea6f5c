// Every CUDA backend op against the CPU reference backend, plus GPU retrieval against a CPU
// reference. Outputs start as NaN so that an element an op forgets to write fails the check.
//
// Tolerances (|gpu - cpu| <= bound):
//  - MatMul, float32 weights (and float16 / float8 e4m3, widened to float32 on the GPU):
//    1e-5 + 1e-5 * sum_i |x_i w_i| (summation order only).
//  - MatMul, bfloat16 weights: the GPU rounds activations to bf16 (relative error <= 2^-9 per
//    term), so 1e-5 + 2^-8 * sum_i |x_i w_i|.
//  - Attention: 2e-5 + 1e-4 * |ref| (online softmax vs. two-pass softmax, exp2f vs. exp).
//  - RMSNorm, RoPE, SiLU: 1e-5 + 1e-5 * |ref| (float32, libm vs. CUDA math, FMA contraction).
//  - Add, AddRow, Embedding, copies: exact.
//  - Attention over bfloat16 / float8 e4m3 K/V (gpu_check_kv_cache.cc): bitwise equal to the
//    GPU's own float32 attention over the widened K/V (then as Attention vs. a double reference
//    and the CPU), except prefill with head_dim 128 (tensor cores, q and probabilities in bf16):
//    1e-2 + 1e-2 * |ref|.
//  - Keys stored in a bf16 / fp8 cache after RoPE: one step of the cache dtype (CacheRowBound).
//  - Retrieval scores: 1e-6 absolute (double sigmoid sums; GEMM summation order only).
#include "tests/gpu/gpu_check.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <numeric>
#include <random>
#include <utility>
#include <vector>

#include "engine/cpu/cpu_backend.h"
#include "engine/cuda/cuda_backend.h"
#include "engine/cuda/retrieval.h"
#include "engine/float_range.h"
#include "gtest/gtest.h"
#include "tests/gpu/gpu_test_util.h"

namespace mplus::gpu_test {

Backend* GpuCheck::cpu_ = nullptr;
Backend* GpuCheck::gpu_ = nullptr;

namespace {

TEST_F(GpuCheck, MatMul) {
  struct Case {
    int64_t n, m, k;
    DType dtype;
    float alpha;
    bool accumulate;
  };
  const Case cases[] = {
      {1, 64, 48, DType::kF32, 1.0f, false},
      {7, 130, 33, DType::kF32, 0.5f, true},
      {64, 512, 256, DType::kF32, 1.0f, false},
      {1, 4096, 1024, DType::kBF16, 1.0f, false},
      {33, 200, 128, DType::kBF16, 2.0f, true},
      {128, 384, 512, DType::kBF16, 1.0f, false},
      {5, 96, 64, DType::kF16, 1.0f, false},
      {6, 80, 72, DType::kF8E4M3, 0.5f, true},
      // The decode GEMV (bf16 weights, 1-4 rows, k a multiple of 8): LoRA A and B shapes, a
      // block per row (few rows), a warp per row, partial unrolls, accumulate.
      {1, 16, 4096, DType::kBF16, 1.0f, false},
      {1, 4096, 16, DType::kBF16, 0.5f, true},
      {2, 1000, 136, DType::kBF16, 2.0f, true},
      {3, 14336, 4096, DType::kBF16, 1.0f, false},
      {4, 1024, 14336, DType::kBF16, 1.0f, true},
      {1, 7, 24, DType::kBF16, 1.0f, false}};
  uint32_t seed = 1;
  for (const Case& c : cases) {
    SCOPED_TRACE(testing::Message() << "n=" << c.n << " m=" << c.m << " k=" << c.k
                                    << " dtype=" << engine::DTypeName(c.dtype));
    const std::vector<float> x = RandomFloats(c.n * c.k, seed++);
    const std::vector<float> w = Rounded(RandomFloats(c.m * c.k, seed++), c.dtype);
    const std::vector<float> init = RandomFloats(c.n * c.m, seed++);
    auto hw = MakeWeight(w, c.dtype, {c.m, c.k});
    std::vector<std::vector<float>> results;
    for (Backend* b : {cpu_, gpu_}) {
      ASSERT_OK_AND_ASSIGN(xt, Upload(*b, x, {c.n, c.k}));
      ASSERT_OK_AND_ASSIGN(wt, b->UploadWeight(hw->view));
      ASSERT_OK_AND_ASSIGN(out,
                           c.accumulate ? Upload(*b, init, {c.n, c.m}) : Poisoned(*b, {c.n, c.m}));
      ASSERT_OK(b->MatMul(xt, wt, out, c.alpha, c.accumulate));
      ASSERT_OK_AND_ASSIGN(host, Download(*b, out));
      results.push_back(std::move(host));
    }
    const float rel = c.dtype == DType::kBF16 ? 1.0f / 256 : 1e-5f;
    std::vector<float> bound(static_cast<size_t>(c.n * c.m));
    for (int64_t i = 0; i < c.n; ++i) {
      for (int64_t j = 0; j < c.m; ++j) {
        double mag = 0;
        for (int64_t t = 0; t < c.k; ++t) mag += std::fabs(x[i * c.k + t] * w[j * c.k + t]);
        bound[i * c.m + j] = 1e-5f + rel * std::fabs(c.alpha) * static_cast<float>(mag);
      }
    }
    ExpectNear(results[1], results[0], bound, "MatMul");
  }
}

TEST_F(GpuCheck, RmsNormAliasedAndNarrowWeight) {
  for (DType wd : {DType::kF32, DType::kBF16, DType::kF8E4M3}) {
    const int64_t n = 9, d = 1000;
    const std::vector<float> x = RandomFloats(n * d, 11, -3, 3);
    auto hw = MakeWeight(Rounded(RandomFloats(d, 12), wd), wd, {d});
    std::vector<std::vector<float>> res;
    for (Backend* b : {cpu_, gpu_}) {
      ASSERT_OK_AND_ASSIGN(xt, Upload(*b, x, {n, d}));
      ASSERT_OK_AND_ASSIGN(wt, b->UploadWeight(hw->view));
      ASSERT_OK(b->RmsNorm(xt, wt, 1e-5f, xt));  // out aliases x
      ASSERT_OK_AND_ASSIGN(host, Download(*b, xt));
      res.push_back(std::move(host));
    }
    ExpectNear(res[1], res[0], RelBound(res[0], 1e-5f, 1e-5f), "RmsNorm");
  }
}

TEST_F(GpuCheck, Rope) {
  // Scattered positions are uploaded; consecutive ones (every forward pass) are not. 36 heads
  // spread a row over several blocks, the last one partial at head_dim 64.
  for (const bool consecutive : {false, true}) {
    for (const auto& [hd, heads] :
         {std::pair<int64_t, int64_t>{64, 4}, {128, 4}, {64, 36}, {128, 36}}) {
      const int64_t n = 17;
      const std::vector<float> x = RandomFloats(n * heads * hd, 21);
      std::vector<float> inv_freq(static_cast<size_t>(hd / 2));
      for (int64_t j = 0; j < hd / 2; ++j) {
        inv_freq[j] = 1.0f / std::pow(500000.0f, 2.0f * j / static_cast<float>(hd));
      }
      std::vector<int64_t> pos(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) pos[i] = consecutive ? 70000 + i : i * 1237 % 20000;
      std::vector<std::vector<float>> res;
      for (Backend* b : {cpu_, gpu_}) {
        ASSERT_OK_AND_ASSIGN(xt, Upload(*b, x, {n, heads * hd}));
        ASSERT_OK_AND_ASSIGN(ft, Upload(*b, inv_freq, {hd / 2}));
        ASSERT_OK(b->Rope(xt, hd, pos, ft));
        ASSERT_OK_AND_ASSIGN(host, Download(*b, xt));
        res.push_back(std::move(host));
      }
      ExpectNear(res[1], res[0], RelBound(res[0], 1e-5f, 1e-5f), "Rope");
    }
  }
}

TEST_F(GpuCheck, Attention) {
  struct Case {
    int64_t nq, nk, heads, kv_heads, hd;
  };
  const Case cases[] = {{5, 5, 4, 4, 64},       {37, 100, 8, 2, 128},   {20, 300, 6, 3, 80},
                        {1, 12800, 32, 8, 128}, {1, 13001, 8, 8, 64},   {3, 4000, 8, 1, 96},
                        {64, 64, 4, 2, 32},     {200, 1500, 4, 4, 128}, {1, 1, 2, 1, 16},
                        {1, 31, 8, 8, 128},     {1, 777, 8, 4, 128},    {1, 2000, 16, 2, 128}};
  uint32_t seed = 100;
  for (const Case& c : cases) {
    SCOPED_TRACE(testing::Message() << "nq=" << c.nq << " nk=" << c.nk << " H=" << c.heads
                                    << " Hkv=" << c.kv_heads << " hd=" << c.hd);
    const std::vector<float> q = RandomFloats(c.nq * c.heads * c.hd, seed++, -2, 2);
    const std::vector<float> k = RandomFloats(c.nk * c.kv_heads * c.hd, seed++, -2, 2);
    const std::vector<float> v = RandomFloats(c.nk * c.kv_heads * c.hd, seed++);
    std::vector<std::vector<float>> res;
    for (Backend* b : {cpu_, gpu_}) {
      ASSERT_OK_AND_ASSIGN(qt, Upload(*b, q, {c.nq, c.heads * c.hd}));
      ASSERT_OK_AND_ASSIGN(kt, Upload(*b, k, {c.nk, c.kv_heads * c.hd}));
      ASSERT_OK_AND_ASSIGN(vt, Upload(*b, v, {c.nk, c.kv_heads * c.hd}));
      ASSERT_OK_AND_ASSIGN(out, Poisoned(*b, {c.nq, c.heads * c.hd}));
      ASSERT_OK(b->Attention(qt, kt, vt, c.heads, c.kv_heads, c.hd, out));
      ASSERT_OK_AND_ASSIGN(host, Download(*b, out));
      res.push_back(std::move(host));
    }
    ExpectNear(res[1], res[0], RelBound(res[0], 2e-5f, 1e-4f), "Attention");
  }
}

TEST_F(GpuCheck, ElementwiseOps) {
  const int64_t n = 37, d = 301;
  const std::vector<float> a = RandomFloats(n * d, 31, -6, 6), b = RandomFloats(n * d, 32);
  auto row = MakeWeight(Rounded(RandomFloats(d, 33), DType::kBF16), DType::kBF16, {d});
  std::vector<std::vector<float>> silu_mul, silu, add, add_row;
  for (Backend* be : {cpu_, gpu_}) {
    ASSERT_OK_AND_ASSIGN(at, Upload(*be, a, {n, d}));
    ASSERT_OK_AND_ASSIGN(bt, Upload(*be, b, {n, d}));
    ASSERT_OK_AND_ASSIGN(out, Poisoned(*be, {n, d}));
    ASSERT_OK(be->SiluMul(at, bt, out));
    ASSERT_OK_AND_ASSIGN(h1, Download(*be, out));
    silu_mul.push_back(std::move(h1));
    ASSERT_OK(be->Add(at, bt, bt));  // out aliases b
    ASSERT_OK_AND_ASSIGN(h2, Download(*be, bt));
    add.push_back(std::move(h2));
    ASSERT_OK(be->Silu(at));
    ASSERT_OK_AND_ASSIGN(h3, Download(*be, at));
    silu.push_back(std::move(h3));
    ASSERT_OK_AND_ASSIGN(rt, be->UploadWeight(row->view));
    ASSERT_OK(be->AddRow(at, rt));
    ASSERT_OK_AND_ASSIGN(h4, Download(*be, at));
    add_row.push_back(std::move(h4));
  }
  ExpectNear(silu_mul[1], silu_mul[0], RelBound(silu_mul[0], 1e-5f, 1e-5f), "SiluMul");
  ExpectNear(silu[1], silu[0], RelBound(silu[0], 1e-5f, 1e-5f), "Silu");
  ExpectNear(add[1], add[0], RelBound(add[0], 0, 0), "Add");
  ExpectNear(add_row[1], add_row[0], RelBound(add_row[0], 1e-5f, 1e-5f), "AddRow");
}

// Backend::Argmax on the GPU (one block's reduction) against the host's ArgmaxIgnoringNaN, which
// the CPU backend uses: vocabulary-sized rows with ties, NaN, infinities, sizes around the
// block's 1024 threads, all-NaN and all -inf rows.
TEST_F(GpuCheck, ArgmaxMatchesTheHost) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<std::vector<float>> rows;
  for (int64_t n : {1, 2, 31, 1023, 1024, 1025, 4097, 128256}) {
    std::vector<float> v = RandomFloats(n, 40 + n, -8, 8);
    rows.push_back(v);
    for (float& x : v) x = std::round(x);  // many ties, the best among them
    rows.push_back(v);
    for (int64_t i = 0; i < n; i += 3) v[i] = nan;
    rows.push_back(v);
  }
  std::vector<float> row(128256, -inf);
  rows.push_back(row);                 // all -inf: the first
  row[77777] = inf, row[99999] = inf;  // +inf twice: the first
  rows.push_back(row);
  rows.push_back(std::vector<float>(5000, nan));  // all NaN: 0
  for (size_t r = 0; r < rows.size(); ++r) {
    SCOPED_TRACE(testing::Message() << "row " << r << " of " << rows[r].size());
    ASSERT_OK_AND_ASSIGN(t, Upload(*gpu_, rows[r], {1, static_cast<int64_t>(rows[r].size())}));
    ASSERT_OK_AND_ASSIGN(got, gpu_->Argmax(t));
    EXPECT_EQ(got, engine::ArgmaxIgnoringNaN(rows[r].data(), static_cast<int64_t>(rows[r].size())));
  }
}

TEST_F(GpuCheck, EmbeddingAndCopies) {
  const int64_t vocab = 1000, d = 257;
  for (DType dt : {DType::kF32, DType::kBF16, DType::kF16, DType::kF8E4M3}) {
    SCOPED_TRACE(engine::DTypeName(dt));
    auto table = MakeWeight(Rounded(RandomFloats(vocab * d, 41), dt), dt, {vocab, d});
    const std::vector<int32_t> ids = {0, 999, 5, 5, 123};
    std::vector<std::vector<float>> res;
    for (Backend* b : {cpu_, gpu_}) {
      ASSERT_OK_AND_ASSIGN(tt, b->UploadWeight(table->view));
      ASSERT_OK_AND_ASSIGN(out, Poisoned(*b, {5, d}));
      ASSERT_OK(b->Embedding(tt, ids, out));
      const std::vector<int32_t> bad = {3, 1000};
      EXPECT_EQ(b->Embedding(tt, bad, out.Rows(0, 2)).code(), absl::StatusCode::kInvalidArgument);
      ASSERT_OK_AND_ASSIGN(host, Download(*b, out));
      res.push_back(std::move(host));
    }
    ExpectNear(res[1], res[0], RelBound(res[0], 0, 0), "Embedding");
  }
  // CopyFromHost widening bf16 / fp8 -> f32, device copy (overlapping too), row views.
  for (DType dt : {DType::kBF16, DType::kF8E4M3}) {
    SCOPED_TRACE(engine::DTypeName(dt));
    const std::vector<float> vals = Rounded(RandomFloats(4 * 64, 42), dt);
    const std::vector<uint8_t> raw = Encode(vals, dt);
    std::vector<std::vector<float>> res;
    for (Backend* b : {cpu_, gpu_}) {
      ASSERT_OK_AND_ASSIGN(t, Poisoned(*b, {4, 64}));
      ASSERT_OK(b->CopyFromHost(raw.data(), dt, t));
      ASSERT_OK(b->Copy(t.Rows(0, 3), t.Rows(1, 4)));  // overlapping, memmove semantics
      ASSERT_OK_AND_ASSIGN(host, Download(*b, t));
      res.push_back(std::move(host));
    }
    ExpectNear(res[1], res[0], RelBound(res[0], 0, 0), "CopyFromHost/Copy");
  }
}

TEST_F(GpuCheck, MemoryStatsTrackWeights) {
  ASSERT_OK_AND_ASSIGN(before, engine::cuda::GetCudaMemoryStats(*gpu_));
  auto w = MakeWeight(RandomFloats(1024 * 1024, 51), DType::kBF16, {1024, 1024});
  {
    ASSERT_OK_AND_ASSIGN(t, gpu_->UploadWeight(w->view));
    ASSERT_OK_AND_ASSIGN(during, engine::cuda::GetCudaMemoryStats(*gpu_));
    EXPECT_EQ(during.weights_bytes - before.weights_bytes, 2 * 1024 * 1024);
    EXPECT_GE(during.peak_total_bytes, during.total());
  }
  ASSERT_OK_AND_ASSIGN(after, engine::cuda::GetCudaMemoryStats(*gpu_));
  EXPECT_EQ(after.weights_bytes, before.weights_bytes);
  EXPECT_EQ(engine::cuda::GetCudaMemoryStats(*cpu_).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// Small activations go back to a free list, not to the pool: the next one of its size class is
// the same block (a decode step allocates ~20 per layer).
TEST_F(GpuCheck, SmallActivationsAreReused) {
  void* first = nullptr;
  {
    ASSERT_OK_AND_ASSIGN(t, gpu_->Allocate(DType::kF32, {1000}));
    first = t.data();
  }
  ASSERT_OK_AND_ASSIGN(again, gpu_->Allocate(DType::kF32, {900}));  // the same 4 KiB class
  EXPECT_EQ(again.data(), first);
  ASSERT_OK(gpu_->CopyFromHost(RandomFloats(900, 52).data(), DType::kF32, again));
  ASSERT_OK(gpu_->Synchronize());
}

// CPU reference: as memstore's scorer (float32 dots, double sigmoid mean, lower index on ties).
std::vector<float> RefScores(const std::vector<float>& q, int64_t nq, const std::vector<float>& k,
                             int64_t n, int64_t p) {
  std::vector<float> s(static_cast<size_t>(n));
  for (int64_t j = 0; j < n; ++j) {
    double sum = 0;
    for (int64_t t = 0; t < nq; ++t) {
      float dot = 0;
      for (int64_t i = 0; i < p; ++i) dot += q[t * p + i] * k[j * p + i];
      sum += 1.0 / (1.0 + std::exp(-static_cast<double>(dot)));
    }
    s[j] = static_cast<float>(sum / nq);
  }
  return s;
}

TEST_F(GpuCheck, RetrievalScoresAndTopK) {
  ASSERT_OK_AND_ASSIGN(scorer, engine::cuda::GpuRetrievalScorer::Create(0));
  const int64_t n = 20000, p = 256, nq = 64, k = 2560;
  const std::vector<float> keys = RandomFloats(n * p, 61, -0.2f, 0.2f);
  const std::vector<float> q = RandomFloats(nq * p, 62, -0.2f, 0.2f);
  for (DType dt : {DType::kF32, DType::kBF16}) {
    SCOPED_TRACE(engine::DTypeName(dt));
    ASSERT_OK_AND_ASSIGN(set, scorer->NewKeys(p, dt));
    // Two appends exercise growth.
    const std::vector<uint8_t> stored = Stored(keys, dt);
    ASSERT_OK(scorer->Append(*set, stored.data(), n / 2));
    ASSERT_OK(scorer->Append(*set, stored.data() + (n / 2) * set->row_bytes(), n - n / 2));
    ASSERT_EQ(set->size(), n);
    const std::vector<float> want = RefScores(Rounded(q, dt), nq, Rounded(keys, dt), n, p);
    std::vector<float> got(static_cast<size_t>(n), std::numeric_limits<float>::quiet_NaN());
    ASSERT_OK(scorer->Scores(*set, q.data(), nq, got.data()));
    ExpectNear(got, want, RelBound(want, 1e-6f, 0), "Scores");

    ASSERT_OK_AND_ASSIGN(top, scorer->TopK(*set, q.data(), nq, k));
    ASSERT_EQ(static_cast<int64_t>(top.size()), k);
    EXPECT_TRUE(std::is_sorted(top.begin(), top.end()));
    // Equal sets up to near-ties at the boundary: every chosen score >= the CPU's k-th - eps.
    std::vector<float> sorted = want;
    std::nth_element(sorted.begin(), sorted.begin() + (k - 1), sorted.end(), std::greater<>());
    const float kth = sorted[k - 1];
    for (int64_t idx : top) EXPECT_GE(want[idx], kth - 2e-6f) << "index " << idx;
  }
}

TEST_F(GpuCheck, RetrievalTiesAndNaN) {
  // Zero keys score exactly sigmoid(0) = 0.5: the boundary falls among them, so the lower
  // indices must win. A NaN key ranks below everything.
  ASSERT_OK_AND_ASSIGN(scorer, engine::cuda::GpuRetrievalScorer::Create(0));
  const int64_t n = 1000, p = 64, nq = 3;
  std::vector<float> keys(static_cast<size_t>(n * p), 0.0f);
  const std::vector<float> q = RandomFloats(nq * p, 71, 0.5f, 1.0f);  // all positive
  for (int64_t j = 0; j < 100; ++j) {
    for (int64_t i = 0; i < p; ++i) keys[(j * 7 + 3) * p + i] = 1.0f;  // 100 clear winners
  }
  keys[501 * p] = std::numeric_limits<float>::quiet_NaN();  // 501 is not a winner
  for (DType dt : {DType::kF32, DType::kBF16}) {
    ASSERT_OK_AND_ASSIGN(set, scorer->NewKeys(p, dt));
    ASSERT_OK(scorer->Append(*set, Stored(keys, dt).data(), n));
    ASSERT_OK_AND_ASSIGN(top, scorer->TopK(*set, q.data(), nq, 150));
    std::vector<int64_t> want;
    for (int64_t j = 0; j < 100; ++j) want.push_back(j * 7 + 3);
    for (int64_t j = 0; static_cast<int64_t>(want.size()) < 150; ++j) {
      if (j % 7 != 3 || j / 7 >= 100) want.push_back(j);
    }
    std::sort(want.begin(), want.end());
    EXPECT_EQ(top, want) << engine::DTypeName(dt);
    ASSERT_OK_AND_ASSIGN(all_but_one, scorer->TopK(*set, q.data(), nq, n - 1));
    EXPECT_EQ(std::count(all_but_one.begin(), all_but_one.end(), 501), 0);
  }
}

// The Backend retrieval API sessions use in resident mode: keys synced incrementally (only rows
// past the unchanged prefix are copied) and queries already on the GPU give the same top-k as a
// key set filled in one go and scored from host queries.
TEST_F(GpuCheck, BackendRetrievalKeysSyncAndDeviceQueries) {
  ASSERT_OK_AND_ASSIGN(scorer, engine::cuda::GpuRetrievalScorer::Create(0));
  const int64_t p = 128, nq = 16, k = 300;
  std::vector<float> keys = RandomFloats(4000 * p, 81, -0.3f, 0.3f);
  const std::vector<float> q = RandomFloats(nq * p, 82, -0.3f, 0.3f);
  ASSERT_OK_AND_ASSIGN(queries, Upload(*gpu_, q, {nq, p}));
  for (DType dt : {DType::kF32, DType::kBF16}) {
    SCOPED_TRACE(engine::DTypeName(dt));
    ASSERT_OK_AND_ASSIGN(mirror, gpu_->NewRetrievalKeys(p, dt));
    ASSERT_NE(mirror, nullptr);
    ASSERT_OK(gpu_->SyncRetrievalKeys(*mirror, Stored(keys, dt).data(), 3000, 0));
    // Rows from 1200 on are rewritten (an eviction compacted them) and 1000 more appended.
    std::vector<float> changed = keys;
    const std::vector<float> fresh = RandomFloats(2800 * p, 83, -0.3f, 0.3f);
    std::copy(fresh.begin(), fresh.end(), changed.begin() + 1200 * p);
    const std::vector<uint8_t> changed_rows = Stored(changed, dt);
    ASSERT_OK(gpu_->SyncRetrievalKeys(*mirror, changed_rows.data(), 4000, 1200));
    EXPECT_EQ(mirror->size(), 4000);
    EXPECT_GE(mirror->bytes(), static_cast<size_t>(4000 * p) * engine::DTypeSize(dt));
    ASSERT_OK_AND_ASSIGN(got, gpu_->TopRetrievalKeys(*mirror, queries, k));

    ASSERT_OK_AND_ASSIGN(whole, scorer->NewKeys(p, dt));
    ASSERT_OK(scorer->Append(*whole, changed_rows.data(), 4000));
    ASSERT_OK_AND_ASSIGN(want, scorer->TopK(*whole, q.data(), nq, k));
    EXPECT_EQ(got, want);
  }
  ASSERT_OK_AND_ASSIGN(mirror, gpu_->NewRetrievalKeys(p, DType::kF32));
  EXPECT_FALSE(gpu_->SyncRetrievalKeys(*mirror, keys.data(), 10, 11).ok());
  ASSERT_OK_AND_ASSIGN(wrong_width, Upload(*gpu_, q, {nq * 2, p / 2}));
  EXPECT_FALSE(gpu_->TopRetrievalKeys(*mirror, wrong_width, 5).ok());
}

}  // namespace
}  // namespace mplus::gpu_test
