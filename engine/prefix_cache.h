// Per-session cache of the memory-prefix keys and values, which depend only on the session's
// short-term memory. In a generate forward the prefix is [bos ; K_ltm retrieved ; N STM] at
// fixed positions; the cache holds the bos and STM rows' keys (before RoPE) and values, so that
// Model::Prefill copies them instead of projecting them again. Keys are kept unrotated because
// an inject moves every kept STM token to another slot (position): after one, the kept rows are
// still valid and only the K new tokens' rows are computed by the next prefill. The engine owns
// the format; the session owns the lifetime (it calls OnInject whenever its short-term memory
// changes).
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
  // The session's short-term memory changed by one inject: in every layer l the slots
  // `dropped[l]` (ascending) left and K = dropped[l].size() new tokens were appended. The rows of
  // the kept tokens stay cached; the next prefill computes the new ones.
  void OnInject(const std::vector<std::vector<int32_t>>& dropped);

 private:
  friend class Model;
  uint64_t model_id_ = 0;              // the Model that filled it (Model ids are never reused)
  std::vector<Tensor> keys_, values_;  // per layer [bos + N, kv_cols]: bos row, then STM rows
  // Per layer and STM slot, the slot's row in keys_ / values_, or -1 when not cached. The
  // cached slots are always a prefix of the slots (new tokens are appended at the end).
  std::vector<std::vector<int32_t>> slot_rows_;
};

}  // namespace mplus::engine

#endif  // MPLUS_ENGINE_PREFIX_CACHE_H_
