// mplus-8b's memory shapes on a few layers, with constant stand-in contents, for the memstore
// benches: N = 12,800 short-term tokens of 4096 bf16 per layer, K = 256 new and dropped per
// inject, retrieval keys of 256, and optionally a checkpoint long-term memory.
#ifndef MPLUS_BENCH_MPLUS8B_STAND_IN_H_
#define MPLUS_BENCH_MPLUS8B_STAND_IN_H_

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "bench/bf16_view.h"
#include "engine/model_config.h"
#include "engine/model_weights.h"
#include "engine/session_memory.h"

namespace mplus::bench {

inline constexpr int64_t kStandInHidden = 4096, kStandInK = 256, kStandInKeyDim = 256;

struct Mplus8bStandIn {
  engine::ModelConfig config;
  engine::ModelWeights weights;
  // One buffer of each kind serves every layer.
  std::vector<uint16_t> memory, ltm_rows, ltm_keys, ltm_ages, ltm_rf;

  // `ltm_entries` checkpoint long-term entries per layer (mplus-8b: ~150k at steady state),
  // merging every `update_frequency` injects (mplus-8b: 60).
  Mplus8bStandIn(int64_t layers, int64_t ltm_entries, int64_t update_frequency) {
    config.kind = engine::ModelKind::kMPlus;
    config.dtype = engine::DType::kBF16;
    config.num_hidden_layers = layers;
    config.hidden_size = kStandInHidden;
    config.num_tokens = kStandInK;
    config.num_blocks = 50;  // N = 12,800, as mplus-8b
    config.num_ltm_blocks = 10;
    config.selector_hidden_dim = kStandInKeyDim;
    config.update_ltm_frequency = update_frequency;
    config.decay_frequency = 1;
    config.initial_rf_when_moving_stm_to_ltm = 10;
    const int64_t n = config.stm_tokens(), m = ltm_entries, m1 = std::max<int64_t>(m, 1);
    memory.assign(static_cast<size_t>(layers * n * kStandInHidden), 0x3f80);
    // Checkpoint entries: bf16 1.0 everywhere, ages 0, recall frequency 10 (the moved tokens').
    ltm_rows.assign(static_cast<size_t>(m1 * kStandInHidden), 0x3f80);
    ltm_keys.assign(static_cast<size_t>(m1 * kStandInKeyDim), 0x3f80);
    ltm_ages.assign(static_cast<size_t>(m1), 0);
    ltm_rf.assign(static_cast<size_t>(m1), 0x4120);
    weights.memory =
        Bf16View("memory", memory.data(), {layers, n, kStandInHidden}, memory.size() * 2);
    for (int64_t l = 0; l < layers; ++l) {
      weights.ltm.push_back(
          Bf16View("ltm", ltm_rows.data(), {m, kStandInHidden}, m * kStandInHidden * 2));
      weights.ltm_keys.push_back(
          Bf16View("ltm_keys", ltm_keys.data(), {m, kStandInKeyDim}, m * kStandInKeyDim * 2));
      weights.ltm_ages.push_back(Bf16View("ltm_ages", ltm_ages.data(), {m}, m * 2));
      weights.ltm_recall_frequencies.push_back(Bf16View("ltm_rf", ltm_rf.data(), {m}, m * 2));
    }
  }
};

// What Model::Inject returns for one chunk: random new rows and dropped keys, K random slots.
inline engine::InjectResult RandomInject(const engine::ModelConfig& config, std::mt19937& rng) {
  std::normal_distribution<float> normal;
  std::vector<int32_t> all(static_cast<size_t>(config.stm_tokens()));
  std::iota(all.begin(), all.end(), 0);
  engine::InjectResult r;
  for (int64_t l = 0; l < config.num_hidden_layers; ++l) {
    r.delta.emplace_back(config.num_tokens * config.hidden_size);
    for (float& x : r.delta.back()) x = normal(rng);
    std::shuffle(all.begin(), all.end(), rng);
    std::vector<int32_t> slots(all.begin(), all.begin() + config.num_tokens);
    std::sort(slots.begin(), slots.end());
    r.dropped.push_back(std::move(slots));
    r.dropped_keys.emplace_back(config.num_tokens * config.selector_hidden_dim);
    for (float& x : r.dropped_keys.back()) x = normal(rng);
  }
  return r;
}

}  // namespace mplus::bench

#endif  // MPLUS_BENCH_MPLUS8B_STAND_IN_H_
