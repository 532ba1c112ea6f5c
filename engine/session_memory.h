// The narrow interface through which the model reads one session's memory. The engine never
// sees how memory is stored: memstore implements this for in-RAM and RocksDB-backed sessions.
#ifndef MPLUS_ENGINE_SESSION_MEMORY_H_
#define MPLUS_ENGINE_SESSION_MEMORY_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "engine/prefix_cache.h"
#include "engine/safetensors.h"

namespace mplus::engine {

class SessionMemory {
 public:
  virtual ~SessionMemory() = default;

  // Layer `layer`'s short-term memory: N = config.stm_tokens() rows of hidden_size, slot order.
  // dtype is float32 or the checkpoint's dtype.
  virtual TensorView ShortTerm(int layer) const = 0;

  // M+ only: writes layer `layer`'s K_ltm retrieved long-term tokens, float32 [K_ltm, hidden],
  // in prefix order (oldest first), chosen by the mean sigmoid score of `queries`
  // ([num_queries, selector_hidden_dim], float32) as MPLUS-DETAILS.md "Retrieval" says.
  virtual absl::Status RetrieveLongTerm(int layer, const float* queries, int64_t num_queries,
                                        float* out) = 0;

  // The session's cache of prefix keys and values (prefix_cache.h), or null for none. A session
  // that returns one must clear it whenever its short-term memory changes.
  virtual PrefixCache* prefix_cache() { return nullptr; }
};

// What one inject computed, per layer; the caller commits it to the session's memory.
struct InjectResult {
  std::vector<std::vector<float>> delta;         // [L][K * hidden]: the K new memory tokens
  std::vector<std::vector<int32_t>> dropped;     // [L][K]: dropped STM slots, ascending
  std::vector<std::vector<float>> dropped_keys;  // [L][K * p]: retrieval keys (M+ only)
};

}  // namespace mplus::engine

#endif  // MPLUS_ENGINE_SESSION_MEMORY_H_
