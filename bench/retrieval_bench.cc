// Long-term retrieval at mplus-8b scale for one layer: 150,000 keys x 256 dims, K_ltm 2560,
// 64 and 512 prompt queries, keys kept as float32 or bfloat16 (second argument 0 / 1: what a
// float32 / bfloat16 checkpoint keeps). Reports time per layer and its ratio to this machine's
// floor (max of FLOPs / measured FMA peak and key bytes / measured read bandwidth, one core). Rates
// and x_floor (one-core floor time / CPU time: 1.0 = at the floor) use the CPU time of all threads,
// so they measure per-core efficiency even on a loaded machine.
#include <algorithm>
#include <random>

#include "bench/machine_floor.h"
#include "benchmark/benchmark.h"
#include "memstore/long_term_index.h"
#include "memstore/retrieval_scorer.h"

namespace mplus::memstore {
namespace {

constexpr int64_t kKeys = 150'000, kDim = 256, kRetrieved = 2560;

struct Fixture {
  LongTermMemory ltm_f32, ltm_bf16;
  std::vector<float> queries;
  double peak_flops, bandwidth;
  Fixture() : ltm_f32(Params(engine::DType::kF32), 1), ltm_bf16(Params(engine::DType::kBF16), 1) {
    std::mt19937 rng(7);
    std::normal_distribution<float> normal(0.f, 0.0625f);
    std::vector<float> key(kDim);
    for (int64_t i = 0; i < kKeys; ++i) {
      for (float& x : key) x = normal(rng);
      for (LongTermMemory* ltm : {&ltm_f32, &ltm_bf16}) {
        ltm->layer(0).AddMerged(static_cast<uint64_t>(i + 1), key, (kKeys - i) / 256, 10.0);
      }
    }
    queries.resize(512 * kDim);
    for (float& x : queries) x = normal(rng);
    peak_flops = bench::MeasureFmaPeak();
    bandwidth = bench::MeasureReadBandwidth();
  }
  static LongTermParams Params(engine::DType key_dtype) {
    LongTermParams p;
    p.key_dtype = key_dtype;
    p.tokens_per_inject = 256;
    p.retrieved_tokens = kRetrieved;
    p.key_dim = kDim;
    p.update_ltm_frequency = 60;
    p.initial_recall_frequency = 10;
    return p;
  }
};

Fixture& Get() {
  static Fixture* f = new Fixture();
  return *f;
}

// The benchmark's long-term memory: float32 keys (range(1) == 0) or bfloat16 keys.
LongTermMemory& Memory(const benchmark::State& state) {
  return state.range(1) == 0 ? Get().ltm_f32 : Get().ltm_bf16;
}

void Report(benchmark::State& state, int64_t nq) {
  const Fixture& f = Get();
  const double flops = 2.0 * nq * kKeys * kDim;
  const double key_bytes = static_cast<double>(Memory(state).layer(0).keys_bytes());
  const double floor_s = std::max(flops / f.peak_flops, key_bytes / f.bandwidth);
  state.counters["floor_ms"] = floor_s * 1e3;
  state.counters["x_floor"] = benchmark::Counter(floor_s * static_cast<double>(state.iterations()),
                                                 benchmark::Counter::kIsRate);
  state.counters["GFLOPs"] =
      benchmark::Counter(flops * 1e-9 * state.iterations(), benchmark::Counter::kIsRate);
  state.counters["peak_GFLOPs"] = f.peak_flops * 1e-9;
  state.counters["bw_GBs"] = f.bandwidth * 1e-9;
}

// Select = scores + top-k + age order: what RetrieveLongTerm spends before fetching vectors.
void BM_Select(benchmark::State& state) {
  const Fixture& f = Get();
  const LongTermMemory& ltm = Memory(state);
  const int64_t nq = state.range(0);
  for (auto _ : state) {
    benchmark::DoNotOptimize(ltm.Select(0, f.queries.data(), nq));
  }
  Report(state, nq);
}
BENCHMARK(BM_Select)
    ->ArgsProduct({{64, 512}, {0, 1}})
    ->Unit(benchmark::kMillisecond)
    ->MeasureProcessCPUTime();

void BM_Scores(benchmark::State& state) {
  const Fixture& f = Get();
  const LongTermLayer& layer = Memory(state).layer(0);
  const int64_t nq = state.range(0);
  std::vector<float> scores(kKeys);
  for (auto _ : state) {
    MeanSigmoidScores(f.queries.data(), nq, layer.keys(), layer.key_dtype(), kKeys, kDim,
                      scores.data());
    benchmark::DoNotOptimize(scores.data());
  }
  Report(state, nq);
}
BENCHMARK(BM_Scores)
    ->ArgsProduct({{64, 512}, {0, 1}})
    ->Unit(benchmark::kMillisecond)
    ->MeasureProcessCPUTime();

void BM_TopK(benchmark::State& state) {
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> u;
  std::vector<float> scores(kKeys);
  for (float& s : scores) s = u(rng);
  for (auto _ : state) benchmark::DoNotOptimize(TopK(scores.data(), kKeys, kRetrieved));
}
BENCHMARK(BM_TopK)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace mplus::memstore

BENCHMARK_MAIN();
