#include "memstore/long_term_index.h"

namespace mplus::memstore {

void LongTermLayer::AddMerged(uint64_t token_id, absl::Span<const float> key, int64_t age,
                              double recall_frequency) {
  // Merged entries precede pending ones in storage order.
  entries_.insert(entries_.begin() + merged_count_, LongTermEntry{token_id, age, recall_frequency});
  keys_.insert(keys_.begin() + merged_count_ * key_dim_, key.begin(), key.end());
  ++merged_count_;
}

void LongTermLayer::AddPending(uint64_t token_id, absl::Span<const float> key, int64_t age,
                               double recall_frequency) {
  entries_.push_back(LongTermEntry{token_id, age, recall_frequency});
  keys_.insert(keys_.end(), key.begin(), key.end());
}

}  // namespace mplus::memstore
