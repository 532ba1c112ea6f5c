// The CUDA backend's fused ops (one launch where the Backend defaults compose several): the
// decode LoRA linear, the KV-cache store, and a decode step's store with its query's RoPE. Each
// is checked against the GPU's own composed default (Backend::...) and against the CPU (the
// store with RoPE through DecodeOpsAtADevicePosition), with NaN-poisoned outputs. Also GEMVs
// launched as programmatic dependents of the kernel before them (sm_90).
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <vector>

#include "tests/gpu/gpu_check.h"
#include "tests/gpu/kernel_trace.h"

namespace mplus::gpu_test {
namespace {

// float32 values of a float32, bfloat16 or float8 e4m3 tensor (widened on the device: exact).
absl::StatusOr<std::vector<float>> DownloadWidened(Backend& b, const Tensor& t) {
  if (t.dtype() == DType::kF32) return Download(b, t);
  absl::StatusOr<Tensor> wide = b.Allocate(DType::kF32, t.shape());
  if (!wide.ok()) return wide.status();
  if (absl::Status s = b.Copy(t, *wide); !s.ok()) return s;
  return Download(b, *wide);
}

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

// Bound as the MatMul check's for bf16 (the composed GPU path rounds x to bf16 for cuBLAS when
// it has more rows than the GEMV takes), over both terms of x·w^T + scale (x·a^T)·b^T.
std::vector<float> LoraBound(const std::vector<float>& x, const std::vector<float>& w,
                             const std::vector<float>& a, const std::vector<float>& b, int64_t n,
                             int64_t m, int64_t k, int64_t r, float scale) {
  std::vector<float> bound(static_cast<size_t>(n * m));
  for (int64_t i = 0; i < n; ++i) {
    std::vector<double> t_mag(static_cast<size_t>(r), 0.0);
    for (int64_t j = 0; j < r; ++j) {
      for (int64_t q = 0; q < k; ++q) t_mag[j] += std::fabs(x[i * k + q] * a[j * k + q]);
    }
    for (int64_t o = 0; o < m; ++o) {
      double mag = 0;
      for (int64_t q = 0; q < k; ++q) mag += std::fabs(x[i * k + q] * w[o * k + q]);
      for (int64_t j = 0; j < r; ++j) mag += std::fabs(scale) * t_mag[j] * std::fabs(b[o * r + j]);
      bound[i * m + o] = 1e-4f + static_cast<float>(mag) / 128;
    }
  }
  return bound;
}

// With and without the LoRA term, writing out or adding to it (a residual add, after the LoRA
// term as the composed way does).
TEST_F(GpuCheck, LoraMatMulFusedMatchesComposedAndCpu) {
  struct Case {
    int64_t n, m, k, r;
  };
  // Decode shapes (fused on the GPU), then a prefill-sized one (composed there too).
  const Case cases[] = {{1, 4096, 4096, 16}, {1, 14336, 4096, 16}, {3, 1000, 136, 8},
                        {2, 64, 24, 4},      {4, 1024, 14336, 16}, {9, 300, 256, 16}};
  const float scale = 2.0f;
  uint32_t seed = 500;
  for (const Case& c : cases) {
    SCOPED_TRACE(testing::Message() << "n=" << c.n << " m=" << c.m << " k=" << c.k << " r=" << c.r);
    const std::vector<float> x = RandomFloats(c.n * c.k, seed++);
    const std::vector<float> w = Rounded(RandomFloats(c.m * c.k, seed++), DType::kBF16);
    const std::vector<float> a = Rounded(RandomFloats(c.r * c.k, seed++), DType::kBF16);
    const std::vector<float> bw = Rounded(RandomFloats(c.m * c.r, seed++), DType::kBF16);
    auto hw = MakeWeight(w, DType::kBF16, {c.m, c.k});
    auto ha = MakeWeight(a, DType::kBF16, {c.r, c.k});
    auto hb = MakeWeight(bw, DType::kBF16, {c.m, c.r});
    const std::vector<float> residual = RandomFloats(c.n * c.m, seed++);
    for (const bool lora : {true, false}) {
      for (const bool accumulate : {false, true}) {
        SCOPED_TRACE(testing::Message() << "lora=" << lora << " accumulate=" << accumulate);
        std::vector<std::vector<float>> res;  // cpu, gpu fused, gpu composed
        for (int run = 0; run < 3; ++run) {
          Backend& b = run == 0 ? *cpu_ : *gpu_;
          ASSERT_OK_AND_ASSIGN(xt, Upload(b, x, {c.n, c.k}));
          ASSERT_OK_AND_ASSIGN(wt, b.UploadWeight(hw->view));
          ASSERT_OK_AND_ASSIGN(a_uploaded, b.UploadWeight(ha->view));
          ASSERT_OK_AND_ASSIGN(b_uploaded, b.UploadWeight(hb->view));
          const Tensor at = lora ? a_uploaded : Tensor(), bt = lora ? b_uploaded : Tensor();
          ASSERT_OK_AND_ASSIGN(
              out, accumulate ? Upload(b, residual, {c.n, c.m}) : Poisoned(b, {c.n, c.m}));
          if (run == 2) {
            ASSERT_OK(b.Backend::LoraMatMul(xt, wt, at, bt, scale, out, accumulate));
          } else {
            ASSERT_OK(b.LoraMatMul(xt, wt, at, bt, scale, out, accumulate));
          }
          ASSERT_OK_AND_ASSIGN(host, Download(b, out));
          res.push_back(std::move(host));
        }
        const std::vector<float> bound =
            LoraBound(x, w, a, bw, c.n, c.m, c.k, c.r, lora ? scale : 0.0f);
        ExpectNear(res[1], res[0], bound, "LoraMatMul GPU vs CPU");
        ExpectNear(res[1], res[2], bound, "LoraMatMul GPU vs GPU composed");
      }
    }
  }
}

// Linears reading the same x (q, k, v; gate, up) with weights uploaded together: one GEMV for
// their A matrices and one for their weights, each linear's rows routed to its own output with
// its LoRA term; checked against the CPU and the GPU's composed path. Weights uploaded one by one
// (not back to back) take the composed path. r = 0: no LoRA (the decoder's merged into the
// weights, --merge_decoder_lora), the one GEMV alone.
TEST_F(GpuCheck, LoraMatMulGroupFusedMatchesComposedAndCpu) {
  struct Case {
    int64_t n, k, r;
    std::vector<int64_t> m;
    bool together;
  };
  const Case cases[] = {{1, 256, 8, {512, 128, 128}, true},     {3, 256, 8, {512, 128, 128}, true},
                        {1, 512, 16, {1024, 1024}, true},       {2, 256, 8, {512, 128, 128}, false},
                        {1, 4096, 0, {4096, 1024, 1024}, true}, {2, 512, 0, {1024, 1024}, true}};
  const float scale = 0.5f;
  uint32_t seed = 700;
  for (const Case& c : cases) {
    SCOPED_TRACE(testing::Message() << "n=" << c.n << " k=" << c.k << " r=" << c.r
                                    << " linears=" << c.m.size() << " together=" << c.together);
    const std::vector<float> x = RandomFloats(c.n * c.k, seed++);
    std::vector<std::vector<float>> w, a, b;
    std::vector<std::unique_ptr<HostWeight>> hw, ha, hb;
    for (int64_t m : c.m) {
      w.push_back(Rounded(RandomFloats(m * c.k, seed++), DType::kBF16));
      a.push_back(Rounded(RandomFloats(c.r * c.k, seed++), DType::kBF16));
      b.push_back(Rounded(RandomFloats(m * c.r, seed++), DType::kBF16));
      hw.push_back(MakeWeight(w.back(), DType::kBF16, {m, c.k}));
      if (c.r == 0) continue;
      ha.push_back(MakeWeight(a.back(), DType::kBF16, {c.r, c.k}));
      hb.push_back(MakeWeight(b.back(), DType::kBF16, {m, c.r}));
    }
    std::vector<std::vector<std::vector<float>>> res;  // [cpu, gpu, gpu composed][linear]
    for (int run = 0; run < 3; ++run) {
      Backend& be = run == 0 ? *cpu_ : *gpu_;
      ASSERT_OK_AND_ASSIGN(xt, Upload(be, x, {c.n, c.k}));
      std::vector<engine::TensorView> wv, av;
      for (size_t i = 0; i < c.m.size(); ++i) {
        wv.push_back(hw[i]->view);
        if (c.r > 0) av.push_back(ha[i]->view);
      }
      std::vector<Tensor> ws, as;
      if (c.together) {
        ASSERT_OK_AND_ASSIGN(wt, be.UploadWeights(wv));
        ws = std::move(wt);
        if (c.r > 0) {
          ASSERT_OK_AND_ASSIGN(at, be.UploadWeights(av));
          as = std::move(at);
        }
      } else {
        for (size_t i = 0; i < c.m.size(); ++i) {
          ASSERT_OK_AND_ASSIGN(wt, be.UploadWeight(wv[i]));
          ASSERT_OK_AND_ASSIGN(at, be.UploadWeight(av[i]));
          ws.push_back(std::move(wt));
          as.push_back(std::move(at));
        }
      }
      if (run == 1 && c.together) {  // the GPU packs them back to back
        for (size_t i = 1; i < ws.size(); ++i) {
          EXPECT_EQ(static_cast<const char*>(ws[i - 1].data()) + ws[i - 1].nbytes(), ws[i].data());
          if (c.r == 0) continue;
          EXPECT_EQ(static_cast<const char*>(as[i - 1].data()) + as[i - 1].nbytes(), as[i].data());
        }
      }
      std::vector<engine::LoraLinear> group;
      std::vector<Tensor> outs;
      for (size_t i = 0; i < c.m.size(); ++i) {
        if (c.r == 0) {
          group.push_back({ws[i], Tensor(), Tensor()});
        } else {
          ASSERT_OK_AND_ASSIGN(bt, be.UploadWeight(hb[i]->view));
          group.push_back({ws[i], as[i], bt});
        }
        ASSERT_OK_AND_ASSIGN(out, Poisoned(be, {c.n, c.m[i]}));
        outs.push_back(std::move(out));
      }
      if (run == 2) {
        ASSERT_OK(be.Backend::LoraMatMulGroup(xt, group, scale, outs));
      } else {
        ASSERT_OK(be.LoraMatMulGroup(xt, group, scale, outs));
      }
      ASSERT_OK_AND_ASSIGN(per_linear, DownloadEach(be, outs));
      res.push_back(std::move(per_linear));
    }
    for (size_t i = 0; i < c.m.size(); ++i) {
      SCOPED_TRACE(testing::Message() << "linear " << i);
      const std::vector<float> bound = LoraBound(x, w[i], a[i], b[i], c.n, c.m[i], c.k, c.r, scale);
      ExpectNear(res[1][i], res[0][i], bound, "LoraMatMulGroup GPU vs CPU");
      ExpectNear(res[1][i], res[2][i], bound, "LoraMatMulGroup GPU vs GPU composed");
    }
  }
}

TEST_F(GpuCheck, StoreKeysValuesFusedMatchesComposedAndCpu) {
  const int64_t n = 7, hd = 64;
  std::vector<float> inv_freq(static_cast<size_t>(hd / 2));
  for (int64_t j = 0; j < hd / 2; ++j) {
    inv_freq[j] = 1.0f / std::pow(500000.0f, 2.0f * j / static_cast<float>(hd));
  }
  uint32_t seed = 600;
  // 9 K/V heads spread a row's items over several blocks, the last one partial.
  for (const int64_t kv_heads : {2, 9}) {
    const int64_t cols = kv_heads * hd;
    for (const DType cache : {DType::kF32, DType::kBF16, DType::kF8E4M3}) {
      for (const bool consecutive : {true, false}) {
        SCOPED_TRACE(testing::Message() << engine::DTypeName(cache) << " kv_heads=" << kv_heads
                                        << " consecutive=" << consecutive);
        std::vector<int64_t> pos(static_cast<size_t>(n));
        for (int64_t i = 0; i < n; ++i) pos[i] = consecutive ? 15000 + i : (i * 7919) % 30000;
        const std::vector<float> k = RandomFloats(n * cols, seed++, -3, 3);
        const std::vector<float> v = RandomFloats(n * cols, seed++, -3, 3);
        // Rows 2..2+n of a 12-row cache (a KV cache's rows), cpu / gpu fused / gpu composed.
        std::vector<std::vector<float>> keys, values;
        for (int run = 0; run < 3; ++run) {
          Backend& b = run == 0 ? *cpu_ : *gpu_;
          ASSERT_OK_AND_ASSIGN(kt, Upload(b, k, {n, cols}));
          ASSERT_OK_AND_ASSIGN(vt, Upload(b, v, {n, cols}));
          ASSERT_OK_AND_ASSIGN(ft, Upload(b, inv_freq, {hd / 2}));
          ASSERT_OK_AND_ASSIGN(poison, Poisoned(b, {12, cols}));
          ASSERT_OK_AND_ASSIGN(kc, b.Allocate(cache, {12, cols}));
          ASSERT_OK_AND_ASSIGN(vc, b.Allocate(cache, {12, cols}));
          ASSERT_OK(b.Copy(poison, kc));
          ASSERT_OK(b.Copy(poison, vc));
          const Tensor kr = kc.Rows(2, 2 + n), vr = vc.Rows(2, 2 + n);
          if (run == 2) {
            ASSERT_OK(b.Backend::StoreKeysValues(kt, vt, hd, pos, ft, kr, vr));
          } else {
            ASSERT_OK(b.StoreKeysValues(kt, vt, hd, pos, ft, kr, vr));
          }
          ASSERT_OK_AND_ASSIGN(kh, DownloadWidened(b, kc));
          ASSERT_OK_AND_ASSIGN(vh, DownloadWidened(b, vc));
          for (int64_t i = 0; i < 12 * cols; ++i) {
            const bool stored = i >= 2 * cols && i < (2 + n) * cols;
            ASSERT_EQ(std::isnan(kh[i]), !stored) << "key element " << i;
            ASSERT_EQ(std::isnan(vh[i]), !stored) << "value element " << i;
          }
          keys.push_back(std::move(kh));
          values.push_back(std::move(vh));
        }
        // The fused kernel does the composed path's float operations: bit for bit (NaN == NaN
        // here only through the poisoned rows, compared by position above).
        for (size_t i = 2 * cols; i < static_cast<size_t>((2 + n) * cols); ++i) {
          ASSERT_EQ(keys[1][i], keys[2][i]) << "key " << i << " fused vs composed";
          ASSERT_EQ(values[1][i], values[2][i]) << "value " << i << " fused vs composed";
          ASSERT_EQ(values[1][i], values[0][i]) << "value " << i << " GPU vs CPU";  // rounding only
        }
        std::vector<float> got(keys[1].begin() + 2 * cols, keys[1].begin() + (2 + n) * cols);
        std::vector<float> want(keys[0].begin() + 2 * cols, keys[0].begin() + (2 + n) * cols);
        ExpectNear(got, want, CacheRowBound(want, cache), "StoreKeysValues keys GPU vs CPU");
      }
    }
  }
}

// A decode step's query rotated by the kernel that stores its key / value row
// (RopeStoreKeysValuesAt): one kernel, caches and query bit for bit those of StoreKeysValuesAt
// and RopeAt (which DecodeOpsAtADevicePosition checks against the CPU).
TEST_F(GpuCheck, QueryRopeInTheKvStoreIsOneKernelAndMatchesTheSeparateKernels) {
  const DecodeCase cases[] = {{3000, 1234, 32, 8, 128, DType::kBF16},
                              {700, 0, 8, 8, 128, DType::kF32},
                              {500, 499, 8, 2, 64, DType::kF8E4M3}};
  uint32_t seed = 980;
  for (const DecodeCase& c : cases) {
    SCOPED_TRACE(testing::Message() << c);
    const int64_t kv_cols = c.kv_heads * c.hd, q_cols = c.heads * c.hd;
    const auto [cache, q, k, v, inv_freq] = RandomDecodeStep(c, seed);
    std::vector<std::vector<float>> res[2];  // [fused, separate]: key cache, value cache, query
    for (int fused = 1; fused >= 0; --fused) {
      Backend& b = *gpu_;
      ASSERT_OK_AND_ASSIGN(pos, Position(b, c.position));
      ASSERT_OK_AND_ASSIGN(kc, UploadAs(b, cache, c.cache, {c.capacity, kv_cols}));
      ASSERT_OK_AND_ASSIGN(vc, UploadAs(b, cache, c.cache, {c.capacity, kv_cols}));
      ASSERT_OK_AND_ASSIGN(wide, b.Allocate(DType::kF32, {c.capacity, kv_cols}));
      ASSERT_OK_AND_ASSIGN(kt, Upload(b, k, {1, kv_cols}));
      ASSERT_OK_AND_ASSIGN(vt, Upload(b, v, {1, kv_cols}));
      ASSERT_OK_AND_ASSIGN(qt, Upload(b, q, {1, q_cols}));
      ASSERT_OK_AND_ASSIGN(freq, Upload(b, inv_freq, {c.hd / 2}));
      if (fused) {
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
      res[fused] = {std::move(k_host), std::move(v_host), std::move(q_host)};
    }
    EXPECT_TRUE(SameBits(res[1][0], res[0][0])) << "key caches differ";
    EXPECT_TRUE(SameBits(res[1][1], res[0][1])) << "value caches differ";
    EXPECT_TRUE(SameBits(res[1][2], res[0][2])) << "rotated queries differ";
  }
}

// Back-to-back GEMVs, the second reading what the first writes: on sm_90 the second is a
// programmatic dependent launch that starts while the first runs (reading its own weights) and
// must wait for it before reading x. A large first GEMV leaves a wide window for a missing wait
// to show as a wrong second result.
TEST_F(GpuCheck, GemvChainWaitsForThePrecedingGemv) {
  const int64_t k1 = 4096, m1 = 28672, m2 = 4096;
  const std::vector<float> x = RandomFloats(k1, 1200);
  const std::vector<float> w1 = Rounded(RandomFloats(m1 * k1, 1201), DType::kBF16);
  const std::vector<float> w2 = Rounded(RandomFloats(m2 * m1, 1202), DType::kBF16);
  auto hw1 = MakeWeight(w1, DType::kBF16, {m1, k1});
  auto hw2 = MakeWeight(w2, DType::kBF16, {m2, m1});
  std::vector<std::vector<float>> res;
  for (Backend* b : {cpu_, gpu_}) {
    ASSERT_OK_AND_ASSIGN(xt, Upload(*b, x, {1, k1}));
    ASSERT_OK_AND_ASSIGN(wt1, b->UploadWeight(hw1->view));
    ASSERT_OK_AND_ASSIGN(wt2, b->UploadWeight(hw2->view));
    ASSERT_OK_AND_ASSIGN(y1, Poisoned(*b, {1, m1}));
    ASSERT_OK_AND_ASSIGN(y2, Poisoned(*b, {1, m2}));
    ASSERT_OK(b->MatMul(xt, wt1, y1));  // y1 was NaN: a read before it is written shows
    ASSERT_OK(b->MatMul(y1, wt2, y2));
    ASSERT_OK_AND_ASSIGN(host, Download(*b, y2));
    res.push_back(std::move(host));
  }
  // y2 sums 28,672 terms of ~12: float32 summation orders differ by ~3e-3 near zero outputs.
  // A read of y1 before it is written still shows (NaN).
  ExpectNear(res[1], res[0], RelBound(res[0], 5e-2f, 1e-3f), "GEMV after GEMV");
}

}  // namespace
}  // namespace mplus::gpu_test
