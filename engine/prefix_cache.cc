#include "engine/prefix_cache.h"

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
}

}  // namespace mplus::engine
