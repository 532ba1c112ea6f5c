// CPU backend ops at Llama-3-8B layer shapes (d 4096, 32/8 heads of 128, I 14336): MatMul for
// decode (n = 1, memory-bound) and prefill (n = 512, compute-bound) with bf16 and fp32 weights,
// and Attention over an mplus-8b prefix (12,801 memory rows) for decode and a prompt block.
// Times are wall time with all backend threads; x_floor = floor time / measured (1.0 = at the
// machine's floor), the floor being max(FLOPs / (FMA peak per core x threads),
// bytes / streaming read bandwidth of all threads), both measured in this process.
#include <algorithm>
#include <random>
#include <thread>
#include <vector>

#include "bench/machine_floor.h"
#include "benchmark/benchmark.h"
#include "common/cpu_count.h"
#include "engine/cpu/cpu_backend.h"
#include "engine/lora_merge.h"

namespace mplus::engine::cpu {
namespace {

struct Floor {
  int threads;
  double peak_flops;  // all threads
  double bandwidth;   // all threads reading at once
  Floor() {
    threads = AvailableCpus();
    peak_flops = bench::MeasureFmaPeak() * threads;
    std::vector<double> bw(threads);
    std::vector<std::thread> readers;
    for (int t = 0; t < threads; ++t) {
      readers.emplace_back([&bw, t] { bw[t] = bench::MeasureReadBandwidth(); });
    }
    for (std::thread& r : readers) r.join();
    bandwidth = 0;
    for (double b : bw) bandwidth += b;
  }
};

const Floor& GetFloor() {
  static const Floor* f = new Floor();
  return *f;
}

CpuBackend& Backend() {
  static CpuBackend* b = new CpuBackend(0);
  return *b;
}

Tensor Random(DType dtype, std::vector<int64_t> shape, uint64_t seed) {
  Tensor t = *Backend().Allocate(dtype, std::move(shape));
  std::mt19937 rng(static_cast<uint32_t>(seed));
  std::normal_distribution<float> normal(0.f, 0.02f);
  for (int64_t i = 0; i < t.numel(); ++i) {
    const float v = normal(rng);
    if (dtype == DType::kBF16) {
      t.data_as<uint16_t>()[i] = FloatToBF16(v);
    } else {
      t.data_as<float>()[i] = v;
    }
  }
  return t;
}

void Report(benchmark::State& state, double flops, double bytes) {
  const Floor& f = GetFloor();
  const double floor_s = std::max(flops / f.peak_flops, bytes / f.bandwidth);
  const auto iters = static_cast<double>(state.iterations());
  state.counters["GFLOPs"] = benchmark::Counter(flops * 1e-9 * iters, benchmark::Counter::kIsRate);
  state.counters["GBs"] = benchmark::Counter(bytes * 1e-9 * iters, benchmark::Counter::kIsRate);
  state.counters["x_floor"] = benchmark::Counter(floor_s * iters, benchmark::Counter::kIsRate);
  state.counters["floor_ms"] = floor_s * 1e3;
  state.counters["peak_GFLOPs"] = f.peak_flops * 1e-9;
  state.counters["bw_GBs"] = f.bandwidth * 1e-9;
}

// Args: n (x rows), m (weight rows), k, weight dtype (0 bf16, 1 fp32).
void BM_MatMul(benchmark::State& state) {
  const int64_t n = state.range(0), m = state.range(1), k = state.range(2);
  const DType wt = state.range(3) == 0 ? DType::kBF16 : DType::kF32;
  GetFloor();
  const Tensor x = Random(DType::kF32, {n, k}, 1);
  const Tensor w = Random(wt, {m, k}, 2);
  const Tensor out = *Backend().Allocate(DType::kF32, {n, m});
  for (auto _ : state) {
    if (!Backend().MatMul(x, w, out, 1.0f, false).ok()) state.SkipWithError("MatMul failed");
  }
  Report(state, 2.0 * n * m * k, static_cast<double>(w.nbytes()) + 4.0 * (n * k + n * m));
}

void MatMulShapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"n", "m", "k", "fp32"});
  for (int64_t n : {1, 512}) {
    for (int64_t dt : {0, 1}) {
      b->Args({n, 4096, 4096, dt});  // q_proj / o_proj
      b->Args({n, 1024, 4096, dt});  // k_proj / v_proj
      if (dt == 0) {
        b->Args({n, 14336, 4096, dt});  // gate_proj / up_proj
        b->Args({n, 4096, 14336, dt});  // down_proj
      }
    }
  }
}
BENCHMARK(BM_MatMul)->Apply(MatMulShapes)->Unit(benchmark::kMillisecond)->UseRealTime();

// Args: nq (queries), prefix (memory rows before them). 32 query heads, 8 kv heads, hd 128.
void BM_Attention(benchmark::State& state) {
  const int64_t nq = state.range(0), nk = state.range(1) + nq, h = 32, hkv = 8, hd = 128;
  GetFloor();
  const Tensor q = Random(DType::kF32, {nq, h * hd}, 3);
  const Tensor k = Random(DType::kF32, {nk, hkv * hd}, 4);
  const Tensor v = Random(DType::kF32, {nk, hkv * hd}, 5);
  const Tensor out = *Backend().Allocate(DType::kF32, {nq, h * hd});
  for (auto _ : state) {
    if (!Backend().Attention(q, k, v, h, hkv, hd, out).ok()) state.SkipWithError("failed");
  }
  // Q·K^T and P·V over the visible keys (causal within the block is ignored: ~nq/2 fewer).
  Report(state, 4.0 * nq * nk * hd * h, 2.0 * nk * hkv * hd * 4);
}
BENCHMARK(BM_Attention)
    ->ArgNames({"nq", "prefix"})
    ->Args({1, 12801})
    ->Args({64, 12801})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// Small ops of one prefill step (n = 512, d 4096 / I 14336).
void BM_RmsNorm(benchmark::State& state) {
  const Tensor x = Random(DType::kF32, {512, 4096}, 6), w = Random(DType::kBF16, {4096}, 7);
  const Tensor out = *Backend().Allocate(DType::kF32, {512, 4096});
  for (auto _ : state) benchmark::DoNotOptimize(Backend().RmsNorm(x, w, 1e-5f, out));
  Report(state, 3.0 * x.numel(), 8.0 * x.numel());
}
BENCHMARK(BM_RmsNorm)->Unit(benchmark::kMicrosecond)->UseRealTime();

void BM_SiluMul(benchmark::State& state) {
  const Tensor g = Random(DType::kF32, {512, 14336}, 8), u = Random(DType::kF32, {512, 14336}, 9);
  for (auto _ : state) benchmark::DoNotOptimize(Backend().SiluMul(g, u, g));
  Report(state, 4.0 * g.numel(), 12.0 * g.numel());
}
BENCHMARK(BM_SiluMul)->Unit(benchmark::kMicrosecond)->UseRealTime();

// Load time: folding a rank-16 decoder LoRA into one mplus-8b gate_proj (14336 x 4096 bf16,
// --merge_decoder_lora), on a pool of every usable CPU. Bytes: W read and W' written (mplus-8b
// folds 32 x 201M such elements: x 48 this linear's time).
void BM_MergeDecoderLora(benchmark::State& state) {
  const int64_t out = 14336, in = 4096, r = 16;
  const Tensor w = Random(DType::kBF16, {out, in}, 10), a_d = Random(DType::kBF16, {r, in}, 11),
               b_d = Random(DType::kBF16, {out, r}, 12), a_e = Random(DType::kBF16, {r, in}, 13),
               b_e = Random(DType::kBF16, {out, r}, 14);
  const auto view = [](const Tensor& t) {
    return TensorView{"t", t.dtype(), t.shape(), t.data(), t.nbytes()};
  };
  LinearWeights linear;
  linear.weight = view(w);
  linear.lora_a[0] = view(a_e);
  linear.lora_b[0] = view(b_e);
  linear.lora_a[1] = view(a_d);
  linear.lora_b[1] = view(b_d);
  ThreadPool pool(0);
  for (auto _ : state) benchmark::DoNotOptimize(MergeDecoderLora(linear, 2.0f, pool));
  Report(state, 2.0 * out * in * r, 4.0 * out * in);
}
BENCHMARK(BM_MergeDecoderLora)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace
}  // namespace mplus::engine::cpu

BENCHMARK_MAIN();
