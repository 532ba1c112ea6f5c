// Decode's ops folded together (MPLUS_CUDA_FOLD_DECODE_OPS=1): the RMSNorm and SiluMul into the
// GEMVs after them (engine/cuda/gemv.h's GemvInput), the query's RoPE into the K/V store (and
// decode attention's splits merged by the wide combine, checked against the CPU). On a
// backend made with the fold on, each fused op must launch one kernel (CUPTI's records) and give
// bit for bit what the separate kernels give (the GPU's composed default, Backend::...; the
// norm: within 1e-5, see there), and match the CPU. Shapes the fold does not take (two rows) go the
// composed way.
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "tests/gpu/gpu_check.h"
#include "tests/gpu/kernel_trace.h"

namespace mplus::gpu_test {
namespace {

// A CUDA backend made with the fold switched on; threads_per_row > 0 fixes the GEMVs' threads a
// row (MPLUS_CUDA_GEMV_THREADS_PER_ROW, as the op table's sweeps) instead of the shape's choice.
absl::StatusOr<std::unique_ptr<Backend>> FoldingBackend(int threads_per_row = 0) {
  ScopedEnv fold("MPLUS_CUDA_FOLD_DECODE_OPS", "1");
  ScopedEnv threads("MPLUS_CUDA_GEMV_THREADS_PER_ROW", std::to_string(threads_per_row));
  return engine::cuda::CreateCudaBackend(0);
}

// The folded GEMVs are checked with the threads a row the shape picks and with the sweeps'
// extremes: 16 (16 rows a block, so a partial last block where m is not a multiple) and a whole
// block a row.
constexpr int kFoldThreadsPerRow[] = {0, 16, 256};

// Kernels `op` launches, by CUPTI's records.
absl::StatusOr<int64_t> KernelsLaunchedBy(const std::function<absl::Status()>& op) {
  if (absl::Status s = model_bench::KernelTrace::Start(); !s.ok()) return s;
  const absl::Status ran = op();
  absl::StatusOr<model_bench::TraceSummary> trace = model_bench::KernelTrace::Stop();
  if (!ran.ok()) return ran;
  if (!trace.ok()) return trace.status();
  int64_t kernels = 0;
  for (const model_bench::KernelTotal& k : trace->kernels) kernels += k.count;
  return kernels;
}

bool SameBits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// RMSNorm then q/k/v (mplus-8b's shapes) or gate/up: one kernel, the separate kernels' bits.
TEST_F(GpuCheck, FoldedRmsNormGroupIsOneKernelAndMatchesTheSeparateKernels) {
  struct Case {
    int64_t n, k;
    std::vector<int64_t> m;
    int64_t kernels;  // launched by the fused op: 1 folded; composed: RmsNorm + GEMV
  };
  // 500 | 261 puts a segment edge inside a block; k = 1024 keeps 500 rows a multiple of 256
  // bytes, which UploadWeights needs to pack the group back to back (else no group GEMV).
  const Case cases[] = {{1, 4096, {4096, 1024, 1024}, 1},
                        {1, 4096, {14336, 14336}, 1},
                        {1, 1000, {512, 256}, 1},
                        {1, 1024, {500, 261}, 1},
                        {2, 4096, {4096, 1024, 1024}, 2}};
  uint32_t seed = 900;
  for (int threads_per_row : kFoldThreadsPerRow) {
    SCOPED_TRACE(testing::Message() << "threads a row " << threads_per_row);
    ASSERT_OK_AND_ASSIGN(folding, FoldingBackend(threads_per_row));
    for (const Case& c : cases) {
      SCOPED_TRACE(testing::Message() << "n=" << c.n << " k=" << c.k << " linears=" << c.m.size());
      const std::vector<float> x = RandomFloats(c.n * c.k, seed++, -3.0f, 3.0f);
      const std::vector<float> norm = Rounded(RandomFloats(c.k, seed++, 0.5f, 1.5f), DType::kBF16);
      auto hn = MakeWeight(norm, DType::kBF16, {c.k});
      std::vector<std::unique_ptr<HostWeight>> hw;
      std::vector<engine::TensorView> views;
      for (int64_t m : c.m) {
        hw.push_back(MakeWeight(Rounded(RandomFloats(m * c.k, seed++), DType::kBF16), DType::kBF16,
                                {m, c.k}));
        views.push_back(hw.back()->view);
      }
      // [cpu, gpu folded, gpu composed][linear]
      std::vector<std::vector<std::vector<float>>> res;
      for (int run = 0; run < 3; ++run) {
        Backend& be = run == 0 ? *cpu_ : *folding;
        ASSERT_OK_AND_ASSIGN(xt, Upload(be, x, {c.n, c.k}));
        ASSERT_OK_AND_ASSIGN(nt, be.UploadWeight(hn->view));
        ASSERT_OK_AND_ASSIGN(ws, be.UploadWeights(views));
        std::vector<engine::LoraLinear> group;
        std::vector<Tensor> outs;
        for (size_t i = 0; i < c.m.size(); ++i) {
          group.push_back({ws[i], Tensor(), Tensor()});
          ASSERT_OK_AND_ASSIGN(out, Poisoned(be, {c.n, c.m[i]}));
          outs.push_back(std::move(out));
        }
        if (run == 1) {
          ASSERT_OK_AND_ASSIGN(kernels, KernelsLaunchedBy([&] {
                                 return be.RmsNormLoraMatMulGroup(xt, nt, 1e-5f, group, 1.0f, outs);
                               }));
          EXPECT_EQ(kernels, c.kernels);
        } else if (run == 2) {
          ASSERT_OK(be.Backend::RmsNormLoraMatMulGroup(xt, nt, 1e-5f, group, 1.0f, outs));
        } else {
          ASSERT_OK(be.RmsNormLoraMatMulGroup(xt, nt, 1e-5f, group, 1.0f, outs));
        }
        ASSERT_OK_AND_ASSIGN(per_linear, DownloadEach(be, outs));
        res.push_back(std::move(per_linear));
      }
      for (size_t i = 0; i < c.m.size(); ++i) {
        SCOPED_TRACE(testing::Message() << "linear " << i);
        // The same float operations in the same order; should the compiler still round the
        // norm's 1/sqrt differently in the two kernels, every output moves by ~1e-7 relative:
        // reported, and held to a bound a real slip (a wrong element, sum or weight) is far
        // beyond.
        if (!SameBits(res[1][i], res[2][i])) {
          std::printf("note: folded RmsNorm GEMV not bitwise the separate kernels' (linear %zu)\n",
                      i);
        }
        ExpectNear(res[1][i], res[2][i], RelBound(res[2][i], 1e-6f, 1e-5f),
                   "folded vs separate kernels");
        // Sums of k products of ~3 (normed x) and ~1: float32 orders differ by ~1e-5 relative.
        ExpectNear(res[1][i], res[0][i], RelBound(res[0][i], 1e-3f, 1e-3f),
                   "folded norm GPU vs CPU");
      }
    }
  }
}

// SiluMul then the down projection (accumulating into the residual): one kernel, same bits.
TEST_F(GpuCheck, FoldedSiluMulLinearIsOneKernelAndMatchesTheSeparateKernels) {
  struct Case {
    int64_t n, k, m;
    int64_t kernels;  // 1 folded; composed: SiluMul + GEMV
  };
  const Case cases[] = {
      {1, 14336, 4096, 1}, {1, 4096, 1024, 1}, {1, 1000, 761, 1}, {2, 1024, 512, 2}};
  uint32_t seed = 950;
  for (int threads_per_row : kFoldThreadsPerRow) {
    SCOPED_TRACE(testing::Message() << "threads a row " << threads_per_row);
    ASSERT_OK_AND_ASSIGN(folding, FoldingBackend(threads_per_row));
    for (const Case& c : cases) {
      SCOPED_TRACE(testing::Message() << "n=" << c.n << " k=" << c.k << " m=" << c.m);
      const std::vector<float> gate = RandomFloats(c.n * c.k, seed++, -4.0f, 4.0f);
      const std::vector<float> up = RandomFloats(c.n * c.k, seed++);
      const std::vector<float> residual = RandomFloats(c.n * c.m, seed++);
      auto hw = MakeWeight(Rounded(RandomFloats(c.m * c.k, seed++), DType::kBF16), DType::kBF16,
                           {c.m, c.k});
      std::vector<std::vector<float>> res;  // cpu, gpu folded, gpu composed
      for (int run = 0; run < 3; ++run) {
        Backend& be = run == 0 ? *cpu_ : *folding;
        ASSERT_OK_AND_ASSIGN(gt, Upload(be, gate, {c.n, c.k}));
        ASSERT_OK_AND_ASSIGN(ut, Upload(be, up, {c.n, c.k}));
        ASSERT_OK_AND_ASSIGN(wt, be.UploadWeight(hw->view));
        ASSERT_OK_AND_ASSIGN(out, Upload(be, residual, {c.n, c.m}));
        const Tensor none;
        if (run == 1) {
          ASSERT_OK_AND_ASSIGN(kernels, KernelsLaunchedBy([&] {
                                 return be.SiluMulLoraMatMul(gt, ut, wt, none, none, 1.0f, out,
                                                             true);
                               }));
          EXPECT_EQ(kernels, c.kernels);
        } else if (run == 2) {
          ASSERT_OK(be.Backend::SiluMulLoraMatMul(gt, ut, wt, none, none, 1.0f, out, true));
        } else {
          ASSERT_OK(be.SiluMulLoraMatMul(gt, ut, wt, none, none, 1.0f, out, true));
        }
        ASSERT_OK_AND_ASSIGN(host, Download(be, out));
        res.push_back(std::move(host));
      }
      EXPECT_TRUE(SameBits(res[1], res[2])) << "folded and separate kernels differ";
      ExpectNear(res[1], res[0], RelBound(res[0], 1e-3f, 1e-3f), "folded SiluMul GPU vs CPU");
    }
  }
}

// A decode step's query rotated by the kernel that stores its key / value row
// (RopeStoreKeysValuesAt): one kernel, caches and query bit for bit those of StoreKeysValuesAt
// and RopeAt (which DecodeOpsAtADevicePosition checks against the CPU).
TEST_F(GpuCheck, FoldedQueryRopeInTheKvStoreIsOneKernelAndMatchesTheSeparateKernels) {
  ASSERT_OK_AND_ASSIGN(folding, FoldingBackend());
  const DecodeCase cases[] = {{3000, 1234, 32, 8, 128, DType::kBF16},
                              {700, 0, 8, 8, 128, DType::kF32},
                              {500, 499, 8, 2, 64, DType::kF8E4M3}};
  uint32_t seed = 980;
  for (const DecodeCase& c : cases) {
    SCOPED_TRACE(testing::Message() << c);
    const int64_t kv_cols = c.kv_heads * c.hd, q_cols = c.heads * c.hd;
    const std::vector<float> cache =
        Rounded(RandomFloats(c.capacity * kv_cols, seed++, -2, 2), c.cache);
    const std::vector<float> q = RandomFloats(q_cols, seed++, -2, 2);
    const std::vector<float> k = RandomFloats(kv_cols, seed++, -2, 2);
    const std::vector<float> v = RandomFloats(kv_cols, seed++);
    const std::vector<float> inv_freq = RandomFloats(c.hd / 2, seed++, 0, 1);
    std::vector<std::vector<float>> res[2];  // [folded, separate]: key cache, value cache, query
    for (int folded = 1; folded >= 0; --folded) {
      Backend& b = *folding;
      ASSERT_OK_AND_ASSIGN(pos, Position(b, c.position));
      ASSERT_OK_AND_ASSIGN(kc, UploadAs(b, cache, c.cache, {c.capacity, kv_cols}));
      ASSERT_OK_AND_ASSIGN(vc, UploadAs(b, cache, c.cache, {c.capacity, kv_cols}));
      ASSERT_OK_AND_ASSIGN(wide, b.Allocate(DType::kF32, {c.capacity, kv_cols}));
      ASSERT_OK_AND_ASSIGN(kt, Upload(b, k, {1, kv_cols}));
      ASSERT_OK_AND_ASSIGN(vt, Upload(b, v, {1, kv_cols}));
      ASSERT_OK_AND_ASSIGN(qt, Upload(b, q, {1, q_cols}));
      ASSERT_OK_AND_ASSIGN(freq, Upload(b, inv_freq, {c.hd / 2}));
      if (folded) {
        ASSERT_OK_AND_ASSIGN(kernels, KernelsLaunchedBy([&] {
                               return b.RopeStoreKeysValuesAt(qt, kt, vt, c.hd, pos, freq, kc, vc);
                             }));
        EXPECT_EQ(kernels, 1);
      } else {
        ASSERT_OK(b.Backend::RopeStoreKeysValuesAt(qt, kt, vt, c.hd, pos, freq, kc, vc));
      }
      ASSERT_OK(b.Copy(kc, wide));
      ASSERT_OK_AND_ASSIGN(k_host, Download(b, wide));
      ASSERT_OK(b.Copy(vc, wide));
      ASSERT_OK_AND_ASSIGN(v_host, Download(b, wide));
      ASSERT_OK_AND_ASSIGN(q_host, Download(b, qt));
      res[folded] = {std::move(k_host), std::move(v_host), std::move(q_host)};
    }
    EXPECT_TRUE(SameBits(res[1][0], res[0][0])) << "key caches differ";
    EXPECT_TRUE(SameBits(res[1][1], res[0][1])) << "value caches differ";
    EXPECT_TRUE(SameBits(res[1][2], res[0][2])) << "rotated queries differ";
  }
}

// Decode attention's splits merged by the wide combine (the folds' AttentionAt): the CPU's
// result within the decode check's bounds, and the narrow combine's (the default backend) to
// summation order.
TEST_F(GpuCheck, FoldedDecodeAttentionWideCombineMatchesCpu) {
  ASSERT_OK_AND_ASSIGN(folding, FoldingBackend());
  const DecodeCase cases[] = {{14849, 14848, 32, 8, 128, DType::kBF16},
                              {3000, 1234, 32, 8, 128, DType::kF8E4M3},
                              {500, 77, 8, 2, 64, DType::kF32}};
  uint32_t seed = 990;
  for (const DecodeCase& c : cases) {
    SCOPED_TRACE(testing::Message() << c);
    const int64_t kv_cols = c.kv_heads * c.hd, q_cols = c.heads * c.hd;
    const std::vector<float> k =
        Rounded(RandomFloats(c.capacity * kv_cols, seed++, -2, 2), c.cache);
    const std::vector<float> v = Rounded(RandomFloats(c.capacity * kv_cols, seed++), c.cache);
    const std::vector<float> q = RandomFloats(q_cols, seed++, -1, 1);
    std::vector<std::vector<float>> outs;  // cpu, gpu wide (folding), gpu narrow (default)
    for (Backend* b : {cpu_, folding.get(), gpu_}) {
      ASSERT_OK_AND_ASSIGN(pos, Position(*b, c.position));
      ASSERT_OK_AND_ASSIGN(kc, UploadAs(*b, k, c.cache, {c.capacity, kv_cols}));
      ASSERT_OK_AND_ASSIGN(vc, UploadAs(*b, v, c.cache, {c.capacity, kv_cols}));
      ASSERT_OK_AND_ASSIGN(qt, Upload(*b, q, {1, q_cols}));
      ASSERT_OK_AND_ASSIGN(out, Poisoned(*b, {1, q_cols}));
      ASSERT_OK(b->AttentionAt(qt, kc, vc, pos, c.heads, c.kv_heads, c.hd, out));
      ASSERT_OK_AND_ASSIGN(host, Download(*b, out));
      outs.push_back(std::move(host));
    }
    ExpectNear(outs[1], outs[0], RelBound(outs[0], 2e-5f, 1e-4f), "wide combine GPU vs CPU");
    ExpectNear(outs[1], outs[2], RelBound(outs[2], 1e-6f, 1e-5f), "wide vs narrow combine");
  }
}

}  // namespace
}  // namespace mplus::gpu_test
