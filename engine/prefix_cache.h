// Per-session cache of the memory-prefix keys and values that only change when the session's
// short-term memory does. In a generate forward the prefix is [bos ; K_ltm retrieved ; N STM]
// at fixed positions, so the bos and STM rows' rotated keys and their values are the same in
// every Generate until the next inject: Model::Prefill fills an empty cache and then projects
// only the retrieved rows and the prompt. The engine owns the format; the session owns the
// lifetime (it clears the cache whenever its short-term memory changes).
#ifndef MPLUS_ENGINE_PREFIX_CACHE_H_
#define MPLUS_ENGINE_PREFIX_CACHE_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "engine/backend.h"

namespace mplus::engine {

class PrefixCache {
 public:
  // Bytes held (0 when empty), and of those the ones on `device`.
  size_t bytes() const;
  size_t bytes(Device device) const;
  bool empty() const { return keys_.empty(); }
  // Frees the tensors; the next prefill refills the cache.
  void Clear();

 private:
  friend class Model;
  uint64_t model_id_ = 0;              // the Model that filled it (Model ids are never reused)
  std::vector<Tensor> keys_, values_;  // per layer [bos + N, kv_cols]: bos row, then STM slots
};

}  // namespace mplus::engine

#endif  // MPLUS_ENGINE_PREFIX_CACHE_H_
