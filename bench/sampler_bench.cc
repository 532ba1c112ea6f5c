// Next-token sampling over Llama 3's 128,256-entry vocabulary: the host's share of every decode
// step (the GPU waits for the token before the next step), with the options clients use most.
// Logits are a seeded normal spread like a language model's (most mass in a few hundred ids).
#include <random>
#include <vector>

#include "benchmark/benchmark.h"
#include "engine/sampler.h"

namespace mplus::engine {
namespace {

constexpr int kVocab = 128'256;

const std::vector<float>& Logits() {
  static const std::vector<float> logits = [] {
    std::mt19937 rng(3);
    std::normal_distribution<float> normal(0.f, 2.5f);
    std::vector<float> v(kVocab);
    for (float& x : v) x = normal(rng);
    return v;
  }();
  return logits;
}

// Arguments: temperature x 100, top_p x 100, top_k, repetition penalty x 100, history tokens.
void BM_Sample(benchmark::State& state) {
  SamplingOptions o;
  o.temperature = static_cast<float>(state.range(0)) / 100;
  o.top_p = static_cast<float>(state.range(1)) / 100;
  o.top_k = static_cast<int>(state.range(2));
  o.repetition_penalty = static_cast<float>(state.range(3)) / 100;
  o.seed = 1;
  std::vector<int32_t> history(static_cast<size_t>(state.range(4)));
  for (size_t i = 0; i < history.size(); ++i) history[i] = static_cast<int32_t>(i * 37 % kVocab);
  Sampler sampler(o);
  for (auto _ : state) benchmark::DoNotOptimize(sampler.Sample(Logits(), history));
}
BENCHMARK(BM_Sample)
    ->ArgNames({"temp", "top_p", "top_k", "rep", "history"})
    ->Args({0, 100, 0, 100, 0})      // greedy
    ->Args({70, 90, 0, 100, 0})      // temperature + nucleus
    ->Args({100, 100, 50, 100, 0})   // top-k
    ->Args({100, 100, 0, 100, 0})    // plain sampling
    ->Args({70, 90, 0, 110, 2048})   // nucleus with a repetition penalty over a long history
    ->Args({70, 90, 0, 110, 16384})  // ... and over a long prompt
    ->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace mplus::engine

BENCHMARK_MAIN();
