// Which short-term slots an inject drops, when the caller does not say: a seeded,
// platform-independent choice (the official code draws torch.randperm per layer).
#ifndef MPLUS_ENGINE_DROP_SLOTS_H_
#define MPLUS_ENGINE_DROP_SLOTS_H_

#include <cstdint>
#include <vector>

namespace mplus::engine {

// For each of num_layers layers, k distinct slots of [0, n), sorted ascending; a pure function
// of (session_seed, inject_index, layer) using splitmix64 and a partial Fisher-Yates shuffle,
// so results are bitwise stable across platforms and compilers. Requires 0 <= k <= n.
// With per_layer false every layer gets layer 0's slots (config drop_memory_per_layer = false:
// the official code then drops the same slots of the whole [L, N, d] memory).
std::vector<std::vector<int32_t>> ChooseDropSlots(uint64_t session_seed, int64_t inject_index,
                                                  int num_layers, int64_t n, int64_t k,
                                                  bool per_layer = true);

}  // namespace mplus::engine

#endif  // MPLUS_ENGINE_DROP_SLOTS_H_
