// Timing table printed after the checks pass (mplus_gpu_check --no_bench skips it), and main().
// Times are wall clock around Synchronize on the backend's stream, after one warm-up call.
#include <cuda_runtime_api.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/cuda/attention.h"
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

// Runs `rows` on a backend made with `variable` set to each of `values`.
absl::Status SweepGemvSetting(const char* variable, std::initializer_list<int> values,
                              const std::function<absl::Status(Backend&, int)>& rows) {
  for (const int value : values) {
    ScopedEnv setting(variable, std::to_string(value));
    absl::StatusOr<std::unique_ptr<Backend>> gpu = engine::cuda::CreateCudaBackend(0);
    if (!gpu.ok()) return gpu.status();
    if (absl::Status s = rows(**gpu, value); !s.ok()) return s;
  }
  return absl::OkStatus();
}

// Times a decode GEMV of weights [m, k] alone: TB/s of the weight bytes.
absl::Status GemvRow(Backend& gpu, int64_t m, int64_t k, const std::string& what) {
  auto w = MakeWeight(RandomFloats(m * k, 11), DType::kBF16, {m, k});
  absl::StatusOr<Tensor> wt = gpu.UploadWeight(w->view);
  absl::StatusOr<Tensor> x = Upload(gpu, RandomFloats(k, 13), {1, k});
  absl::StatusOr<Tensor> out = gpu.Allocate(DType::kF32, {1, m});
  if (!wt.ok() || !x.ok() || !out.ok()) return absl::InternalError("GEMV bench setup failed");
  Row(absl::StrCat("GEMV m=", m, " k=", k, ", ", what),
      TimeIt([&] { return gpu.MatMul(*x, *wt, *out, 1.0f, false); },
             [&] { return gpu.Synchronize(); }, 50),
      static_cast<double>(w->bytes.size()), "TB/s");
  return absl::OkStatus();
}

// Times decode's GEMVs with the short kernel ahead of each (mplus-8b's shapes, no LoRA): the
// input RMSNorm and q/k/v, and SiluMul and the down projection. TB/s of the weight bytes.
absl::Status DecodePairRows(Backend& gpu, const std::string& what) {
  const int64_t d = 4096, kv = 1024, inter = 14336;
  std::vector<std::unique_ptr<HostWeight>> qkv;
  std::vector<engine::TensorView> views;
  for (int64_t m : {d, kv, kv}) {
    qkv.push_back(MakeWeight(RandomFloats(m * d, 11), DType::kBF16, {m, d}));
    views.push_back(qkv.back()->view);
  }
  auto down = MakeWeight(RandomFloats(d * inter, 12), DType::kBF16, {d, inter});
  auto norm = MakeWeight(RandomFloats(d, 13), DType::kBF16, {d});
  absl::StatusOr<std::vector<Tensor>> ws = gpu.UploadWeights(views);
  absl::StatusOr<Tensor> down_t = gpu.UploadWeight(down->view);
  absl::StatusOr<Tensor> norm_t = gpu.UploadWeight(norm->view);
  absl::StatusOr<Tensor> x = Upload(gpu, RandomFloats(d, 14), {1, d});
  absl::StatusOr<Tensor> normed = gpu.Allocate(DType::kF32, {1, d});
  absl::StatusOr<Tensor> gate = Upload(gpu, RandomFloats(inter, 15), {1, inter});
  absl::StatusOr<Tensor> up = Upload(gpu, RandomFloats(inter, 16), {1, inter});
  absl::StatusOr<Tensor> q = gpu.Allocate(DType::kF32, {1, d});
  absl::StatusOr<Tensor> k = gpu.Allocate(DType::kF32, {1, kv});
  absl::StatusOr<Tensor> v = gpu.Allocate(DType::kF32, {1, kv});
  absl::StatusOr<Tensor> h = gpu.Allocate(DType::kF32, {1, d});
  for (const absl::Status& s :
       {ws.status(), down_t.status(), norm_t.status(), x.status(), normed.status(), gate.status(),
        up.status(), q.status(), k.status(), v.status(), h.status()}) {
    if (!s.ok()) return s;
  }
  const std::vector<engine::LoraLinear> group = {{(*ws)[0], Tensor(), Tensor()},
                                                 {(*ws)[1], Tensor(), Tensor()},
                                                 {(*ws)[2], Tensor(), Tensor()}};
  const std::vector<Tensor> outs = {*q, *k, *v};
  auto sync = [&] { return gpu.Synchronize(); };
  Row(absl::StrCat("RmsNorm + GEMV q/k/v m=6144 k=4096, ", what),
      TimeIt(
          [&] {
            absl::Status s = gpu.RmsNorm(*x, *norm_t, 1e-5f, *normed);
            return s.ok() ? gpu.LoraMatMulGroup(*normed, group, 1.0f, outs) : s;
          },
          sync, 50),
      2.0 * (d + 2 * kv) * d, "TB/s");
  // gate is overwritten in place: its values only change what is summed.
  Row(absl::StrCat("SiluMul + GEMV down m=4096 k=14336, ", what),
      TimeIt(
          [&] {
            absl::Status s = gpu.SiluMul(*gate, *up, *gate);
            return s.ok() ? gpu.MatMul(*gate, *down_t, *h, 1.0f, false) : s;
          },
          sync, 50),
      2.0 * d * inter, "TB/s");
  return absl::OkStatus();
}

// Decode's GEMV shapes (mplus-8b: q/k/v, o, gate/up, down) by threads per weight row: how the
// grid's blocks fill the GPU's (whole waves or a tail; GemvDevice::threads_per_row). Then
// decode's GEMVs with the short kernels ahead of them, by L2 prefetch budget (a programmatic
// GEMV's first blocks fetch their weights into L2 while the kernel ahead runs).
absl::Status GemvSweeps() {
  struct Shape {
    int64_t m, k;
  };
  const Shape decode_shapes[] = {{6144, 4096}, {4096, 4096}, {28672, 4096}, {4096, 14336}};
  absl::Status s = SweepGemvSetting(
      "MPLUS_CUDA_GEMV_THREADS_PER_ROW", {0, 32, 64, 128, 256}, [&](Backend& gpu, int t) {
        for (const Shape& g : decode_shapes) {
          const std::string what =
              t == 0 ? std::string("threads/row by shape") : absl::StrCat(t, " threads/row");
          if (absl::Status r = GemvRow(gpu, g.m, g.k, what); !r.ok()) return r;
        }
        return absl::OkStatus();
      });
  if (!s.ok()) return s;
  return SweepGemvSetting("MPLUS_CUDA_GEMV_L2_PREFETCH_MIB", {0, 8, 16, 32},
                          [](Backend& gpu, int mib) {
                            return DecodePairRows(gpu, absl::StrCat("L2 prefetch ", mib, " MiB"));
                          });
}

// Decode attention (one query row over mplus-8b's 14,849 keys, GQA 32/8, hd 128) by key
// splits, bf16 and fp8 K/V, launched directly on a stream of its own: which split count reads
// K/V fastest (the first row of each dtype is AttentionSplits' choice). TB/s of the K/V read.
absl::Status DecodeAttentionSplitSweep(Backend& gpu) {
  const engine::cuda::AttentionShape shape{1, 12800 + 2049, 32, 8, 128};
  int device = 0, num_sms = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
    return absl::InternalError("split sweep: no device attributes");
  }
  cudaStream_t stream = nullptr;
  if (cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) != cudaSuccess) {
    return absl::InternalError("split sweep: no stream");
  }
  const int64_t kv_cols = shape.num_kv_heads * shape.head_dim, q_cols = 32 * 128;
  absl::StatusOr<Tensor> k = Upload(gpu, RandomFloats(shape.nk * kv_cols, 21), {shape.nk, kv_cols});
  absl::StatusOr<Tensor> v = Upload(gpu, RandomFloats(shape.nk * kv_cols, 22), {shape.nk, kv_cols});
  absl::StatusOr<Tensor> q = Upload(gpu, RandomFloats(q_cols, 23), {1, q_cols});
  absl::StatusOr<Tensor> out = gpu.Allocate(DType::kF32, {1, q_cols});
  absl::Status status = k.status();
  for (const absl::Status& s : {v.status(), q.status(), out.status()}) status.Update(s);
  for (const DType kv_dtype : {DType::kBF16, DType::kF8E4M3}) {
    if (!status.ok()) break;
    absl::StatusOr<Tensor> kc = gpu.Allocate(kv_dtype, {shape.nk, kv_cols});
    absl::StatusOr<Tensor> vc = gpu.Allocate(kv_dtype, {shape.nk, kv_cols});
    if (!kc.ok() || !vc.ok() || !gpu.Copy(*k, *kc).ok() || !gpu.Copy(*v, *vc).ok() ||
        !gpu.Synchronize().ok()) {
      status = absl::InternalError("split sweep setup failed");
      break;
    }
    // Split counts with the tiles loaded as by default, then pipelined (attention.h); the first
    // row of each is AttentionSplits' choice.
    struct Run {
      int splits;
      bool pipelined, chosen;
    };
    std::vector<Run> runs;
    for (const bool pipelined : {false, true}) {
      const int chosen = engine::cuda::AttentionSplits(shape, num_sms, kv_dtype, pipelined);
      runs.push_back({chosen, pipelined, true});
      for (const int splits : {16, 31, 33, 47, 66, 132, 198, 264, 396}) {
        if (splits != chosen && (!pipelined || splits <= 66)) {
          runs.push_back({splits, pipelined, false});
        }
      }
    }
    for (const auto& [splits, pipelined, chosen] : runs) {
      const int64_t ws_floats =
          static_cast<int64_t>(engine::cuda::AttentionWorkspaceBytes(shape, splits) / 4) + 1;
      absl::StatusOr<Tensor> ws = gpu.Allocate(DType::kF32, {ws_floats});
      if (!ws.ok()) {
        status = ws.status();
        break;
      }
      auto op = [&]() -> absl::Status {
        const cudaError_t err = engine::cuda::LaunchAttention(
            q->data_as<const float>(), kc->data(), vc->data(), kv_dtype, out->data_as<float>(),
            shape, splits, ws->data(), stream, /*dependent=*/false, nullptr, pipelined);
        return err == cudaSuccess ? absl::OkStatus() : absl::InternalError(cudaGetErrorString(err));
      };
      auto sync = [&]() -> absl::Status {
        const cudaError_t err = cudaStreamSynchronize(stream);
        return err == cudaSuccess ? absl::OkStatus() : absl::InternalError(cudaGetErrorString(err));
      };
      Row(absl::StrCat("Attention decode nk=14849 ", engine::DTypeName(kv_dtype), ", ", splits,
                       " splits", chosen ? " (chosen)" : "", pipelined ? ", pipelined" : ""),
          TimeIt(op, sync, 50), static_cast<double>(kc->nbytes() + vc->nbytes()), "TB/s");
    }
  }
  cudaStreamDestroy(stream);
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
  if (absl::Status s = GemvSweeps(); !s.ok()) return s;
  if (absl::Status s = DecodeAttentionSplitSweep(gpu); !s.ok()) return s;
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
  if (rc != 0 || !bench || GTEST_FLAG_GET(list_tests)) return rc;
  if (absl::Status s = mplus::gpu_test::RunBenchmarks(); !s.ok()) {
    std::fprintf(stderr, "benchmark failed: %s\n", s.ToString().c_str());
    return 1;
  }
  return 0;
}
