// Timing table printed after the checks pass (mplus_gpu_check --no_bench skips it), and main().
// Times are wall clock around Synchronize on the backend's stream, after one warm-up call.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/cuda/cuda_backend.h"
#include "engine/cuda/device_info.h"
#include "engine/cuda/retrieval.h"
#include "gtest/gtest.h"
#include "tests/gpu/gpu_test_util.h"

namespace mplus::gpu_test {
namespace {

// Seconds per call of `op`, or the first error.
absl::StatusOr<double> TimeIt(const std::function<absl::Status()>& op,
                              const std::function<absl::Status()>& sync, int iters) {
  if (absl::Status s = op(); !s.ok()) return s;
  if (absl::Status s = sync(); !s.ok()) return s;
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < iters; ++i) {
    if (absl::Status s = op(); !s.ok()) return s;
  }
  if (absl::Status s = sync(); !s.ok()) return s;
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / iters;
}

void Row(const std::string& what, const absl::StatusOr<double>& secs, double work,
         const char* unit) {
  if (!secs.ok()) {
    std::printf("| %-52s | ERROR: %s\n", what.c_str(), secs.status().ToString().c_str());
    return;
  }
  std::printf("| %-52s | %10.3f ms | %9.1f %s |\n", what.c_str(), *secs * 1e3, work / *secs / 1e12,
              unit);
}

// A decode step's GEMVs follow short kernels, during which a programmatic GEMV's first blocks
// fetch their weights into L2 (GemvDevice::l2_prefetch_bytes, read from
// MPLUS_CUDA_GEMV_L2_PREFETCH_MIB when a backend is made): RmsNorm then the q/k/v GEMV, and the
// down projection's shape, per prefetch budget. TB/s of the GEMV's weight bytes over the pair.
absl::Status GemvL2PrefetchSweep() {
  constexpr const char* kVariable = "MPLUS_CUDA_GEMV_L2_PREFETCH_MIB";
  const char* set = std::getenv(kVariable);
  const std::string saved = set != nullptr ? set : "";
  struct Shape {
    int64_t m, k;
  };
  absl::Status status;
  for (const int mib : {0, 8, 16, 32}) {
    setenv(kVariable, std::to_string(mib).c_str(), 1);
    absl::StatusOr<std::unique_ptr<Backend>> gpu_or = engine::cuda::CreateCudaBackend(0);
    if (!gpu_or.ok()) {
      status = gpu_or.status();
      break;
    }
    Backend& gpu = **gpu_or;
    for (const Shape& g : {Shape{6144, 4096}, Shape{4096, 14336}}) {
      auto w = MakeWeight(RandomFloats(g.m * g.k, 11), DType::kBF16, {g.m, g.k});
      auto norm = MakeWeight(RandomFloats(g.k, 12), DType::kBF16, {g.k});
      absl::StatusOr<Tensor> wt = gpu.UploadWeight(w->view);
      absl::StatusOr<Tensor> nt = gpu.UploadWeight(norm->view);
      absl::StatusOr<Tensor> x = Upload(gpu, RandomFloats(g.k, 13), {1, g.k});
      absl::StatusOr<Tensor> normed = gpu.Allocate(DType::kF32, {1, g.k});
      absl::StatusOr<Tensor> out = gpu.Allocate(DType::kF32, {1, g.m});
      if (!wt.ok() || !nt.ok() || !x.ok() || !normed.ok() || !out.ok()) {
        status = absl::InternalError("GEMV prefetch bench setup failed");
        break;
      }
      auto pair = [&]() -> absl::Status {
        if (absl::Status s = gpu.RmsNorm(*x, *nt, 1e-5f, *normed); !s.ok()) return s;
        return gpu.MatMul(*normed, *wt, *out, 1.0f, false);
      };
      Row(absl::StrCat("RmsNorm + GEMV m=", g.m, " k=", g.k, ", L2 prefetch ", mib, " MiB"),
          TimeIt(
              pair, [&] { return gpu.Synchronize(); }, 50),
          static_cast<double>(w->bytes.size()), "TB/s");
    }
    if (!status.ok()) break;
  }
  if (set != nullptr) {
    setenv(kVariable, saved.c_str(), 1);
  } else {
    unsetenv(kVariable);
  }
  return status;
}

absl::Status RunBenchmarks() {
  absl::StatusOr<engine::cuda::DeviceInfo> info = engine::cuda::GetDeviceInfo(0);
  if (!info.ok()) return info.status();
  absl::StatusOr<std::unique_ptr<Backend>> gpu_or = engine::cuda::CreateCudaBackend(0);
  if (!gpu_or.ok()) return gpu_or.status();
  Backend& gpu = **gpu_or;
  auto sync = [&] { return gpu.Synchronize(); };
  std::printf("\nDevice: %s (sm_%d%d, %.1f GiB)\n", info->name.c_str(),
              info->compute_capability_major, info->compute_capability_minor,
              static_cast<double>(info->total_memory_bytes) / (1 << 30));
  std::printf("| %-52s | %13s | %14s |\n", "op", "time", "rate");

  // GEMM: TFLOP/s = 2 n m k / t.
  struct Gemm {
    int64_t n, m, k;
    DType dtype;
  };
  for (const Gemm& g : {Gemm{4096, 4096, 4096, DType::kBF16}, Gemm{2048, 14336, 4096, DType::kBF16},
                        Gemm{1, 14336, 4096, DType::kBF16}, Gemm{2048, 2048, 2048, DType::kF32}}) {
    auto w = MakeWeight(RandomFloats(g.m * g.k, 1), g.dtype, {g.m, g.k});
    absl::StatusOr<Tensor> wt = gpu.UploadWeight(w->view);
    absl::StatusOr<Tensor> x = Upload(gpu, RandomFloats(g.n * g.k, 2), {g.n, g.k});
    absl::StatusOr<Tensor> out = gpu.Allocate(DType::kF32, {g.n, g.m});
    if (!wt.ok() || !x.ok() || !out.ok()) return absl::InternalError("GEMM bench setup failed");
    const std::string name =
        absl::StrCat("MatMul ", engine::DTypeName(g.dtype), " w, n=", g.n, " m=", g.m, " k=", g.k);
    const double flops = 2.0 * g.n * g.m * g.k;
    if (g.n == 1) {  // decode: weight-bandwidth bound, report TB/s of weight bytes
      Row(name, TimeIt([&] { return gpu.MatMul(*x, *wt, *out, 1.0f, false); }, sync, 50),
          static_cast<double>(w->bytes.size()), "TB/s");
    } else {
      Row(name, TimeIt([&] { return gpu.MatMul(*x, *wt, *out, 1.0f, false); }, sync, 10), flops,
          "TFLOP/s");
    }
  }

  // Attention (Llama-3-8B shapes): prefill 2048 tokens over a 12,800-token memory, and decode.
  struct Attn {
    int64_t nq, nk;
  };
  for (const Attn& a : {Attn{2048, 2048 + 12800}, Attn{1, 12800 + 2049}}) {
    const int64_t h = 32, hkv = 8, hd = 128;
    absl::StatusOr<Tensor> q = Upload(gpu, RandomFloats(a.nq * h * hd, 3), {a.nq, h * hd});
    absl::StatusOr<Tensor> k = Upload(gpu, RandomFloats(a.nk * hkv * hd, 4), {a.nk, hkv * hd});
    absl::StatusOr<Tensor> v = Upload(gpu, RandomFloats(a.nk * hkv * hd, 5), {a.nk, hkv * hd});
    absl::StatusOr<Tensor> out = gpu.Allocate(DType::kF32, {a.nq, h * hd});
    if (!q.ok() || !k.ok() || !v.ok() || !out.ok()) {
      return absl::InternalError("attention bench setup failed");
    }
    // FLOPs of QK^T and PV over the visible (bottom-right causal) keys.
    double visible = 0;
    for (int64_t i = 0; i < a.nq; ++i) visible += static_cast<double>(a.nk - a.nq + i + 1);
    const double flops = 4.0 * h * hd * visible;
    // Prefill: TFLOP/s over the visible keys, f32 K/V (SIMT tiles) and a bf16 cache (tensor
    // cores). Decode is bound by reading K/V: TB/s of K/V bytes.
    for (const DType kv_dtype : {DType::kF32, DType::kBF16}) {
      absl::StatusOr<Tensor> kc = gpu.Allocate(kv_dtype, {a.nk, hkv * hd});
      absl::StatusOr<Tensor> vc = gpu.Allocate(kv_dtype, {a.nk, hkv * hd});
      if (!kc.ok() || !vc.ok() || !gpu.Copy(*k, *kc).ok() || !gpu.Copy(*v, *vc).ok()) {
        return absl::InternalError("attention bench setup failed");
      }
      const std::string name = absl::StrCat("Attention nq=", a.nq, " nk=", a.nk, " H=32/8 hd=128, ",
                                            engine::DTypeName(kv_dtype), " K/V");
      auto op = [&] { return gpu.Attention(*q, *kc, *vc, h, hkv, hd, *out); };
      if (a.nq > 1) {
        Row(name, TimeIt(op, sync, 3), flops, "TFLOP/s");
      } else {
        Row(name, TimeIt(op, sync, 50), static_cast<double>(kc->nbytes() + vc->nbytes()), "TB/s");
      }
    }
  }

  // Retrieval: 150k keys x 256, 64 queries, top 2560 (one layer).
  absl::StatusOr<std::unique_ptr<engine::cuda::GpuRetrievalScorer>> scorer =
      engine::cuda::GpuRetrievalScorer::Create(0);
  if (!scorer.ok()) return scorer.status();
  const int64_t n = 150000, p = 256, nq = 64;
  const std::vector<float> keys = RandomFloats(n * p, 6, -0.1f, 0.1f);
  const std::vector<float> queries = RandomFloats(nq * p, 7, -0.1f, 0.1f);
  for (DType dt : {DType::kBF16, DType::kF32}) {
    absl::StatusOr<std::unique_ptr<engine::cuda::DeviceRetrievalKeys>> set =
        (*scorer)->NewKeys(p, dt);
    if (!set.ok()) return set.status();
    if (absl::Status s = (*scorer)->Append(**set, Stored(keys, dt).data(), n); !s.ok()) return s;
    Row(absl::StrCat("Retrieval TopK 2560 of 150k x 256 keys ", engine::DTypeName(dt), ", 64 q"),
        TimeIt([&] { return (*scorer)->TopK(**set, queries.data(), nq, 2560).status(); },
               [] { return absl::OkStatus(); }, 10),
        2.0 * n * p * nq, "TFLOP/s");
  }

  // Device memory bandwidth: read + write of a 1 GiB device-to-device copy.
  const int64_t elems = int64_t{1} << 28;
  absl::StatusOr<Tensor> src = gpu.Allocate(DType::kF32, {elems});
  absl::StatusOr<Tensor> dst = gpu.Allocate(DType::kF32, {elems});
  if (!src.ok() || !dst.ok()) return absl::InternalError("bandwidth bench setup failed");
  Row("Copy 1 GiB device-to-device (read + write)",
      TimeIt([&] { return gpu.Copy(*src, *dst); }, sync, 10), 2.0 * elems * 4, "TB/s");
  if (absl::Status s = GemvL2PrefetchSweep(); !s.ok()) return s;
  absl::StatusOr<engine::cuda::CudaMemoryStats> mem = engine::cuda::GetCudaMemoryStats(gpu);
  if (mem.ok()) {
    std::printf(
        "Backend memory: weights %.1f MiB, workspace %.1f MiB, other %.1f MiB, peak %.1f MiB\n",
        mem->weights_bytes / 1048576.0, mem->workspace_bytes / 1048576.0,
        mem->other_bytes / 1048576.0, mem->peak_total_bytes / 1048576.0);
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace mplus::gpu_test

int main(int argc, char** argv) {
  testing::InitGoogleTest(&argc, argv);
  bool bench = true;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--no_bench") == 0) bench = false;
  }
  int rc = RUN_ALL_TESTS();
  if (rc != 0 || !bench) return rc;
  if (absl::Status s = mplus::gpu_test::RunBenchmarks(); !s.ok()) {
    std::fprintf(stderr, "benchmark failed: %s\n", s.ToString().c_str());
    return 1;
  }
  return 0;
}
