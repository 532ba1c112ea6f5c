#include "engine/drop_slots.h"

#include <algorithm>
#include <numeric>

namespace mplus::engine {
namespace {

uint64_t SplitMix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Uniform in [0, bound) by rejection (no modulo bias).
uint64_t Below(uint64_t& state, uint64_t bound) {
  const uint64_t limit = UINT64_MAX - UINT64_MAX % bound;
  uint64_t r;
  do {
    r = SplitMix64(state);
  } while (r >= limit);
  return r % bound;
}

}  // namespace

std::vector<std::vector<int32_t>> ChooseDropSlots(uint64_t session_seed, int64_t inject_index,
                                                  int num_layers, int64_t n, int64_t k,
                                                  bool per_layer) {
  std::vector<std::vector<int32_t>> result(static_cast<size_t>(num_layers));
  std::vector<int32_t> slots(static_cast<size_t>(n));
  for (int l = 0; l < num_layers; ++l) {
    if (!per_layer && l > 0) {
      result[l] = result[0];
      continue;
    }
    uint64_t state = session_seed;
    state = SplitMix64(state) ^ static_cast<uint64_t>(inject_index);
    state = SplitMix64(state) ^ static_cast<uint64_t>(l);
    std::iota(slots.begin(), slots.end(), 0);
    for (int64_t i = 0; i < k; ++i) {
      const int64_t j = i + static_cast<int64_t>(Below(state, static_cast<uint64_t>(n - i)));
      std::swap(slots[i], slots[j]);
    }
    result[l].assign(slots.begin(), slots.begin() + k);
    std::sort(result[l].begin(), result[l].end());
  }
  return result;
}

}  // namespace mplus::engine
