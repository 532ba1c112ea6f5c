#include "engine/prefix_cache.h"

#include <algorithm>

namespace mplus::engine {

size_t PrefixCache::bytes() const {
  size_t total = 0;
  for (const Tensor& t : keys_) total += t.nbytes();
  for (const Tensor& t : values_) total += t.nbytes();
  return total;
}

size_t PrefixCache::bytes(Device device) const {
  return !keys_.empty() && keys_.front().device() == device ? bytes() : 0;
}

void PrefixCache::Clear() {
  model_id_ = 0;
  keys_.clear();
  values_.clear();
  slot_rows_.clear();
}

void PrefixCache::OnInject(const std::vector<std::vector<int32_t>>& dropped) {
  if (empty()) return;
  if (dropped.size() != slot_rows_.size()) {
    Clear();
    return;
  }
  for (size_t l = 0; l < slot_rows_.size(); ++l) {
    std::vector<int32_t>& rows = slot_rows_[l];
    const std::vector<int32_t>& gone = dropped[l];
    std::vector<int32_t> kept;
    kept.reserve(rows.size());
    for (size_t slot = 0; slot < rows.size(); ++slot) {
      if (!std::binary_search(gone.begin(), gone.end(), static_cast<int32_t>(slot))) {
        kept.push_back(rows[slot]);
      }
    }
    if (kept.size() + gone.size() != rows.size()) {  // not this cache's memory: start over
      Clear();
      return;
    }
    kept.resize(rows.size(), -1);
    rows = std::move(kept);
  }
}

}  // namespace mplus::engine
