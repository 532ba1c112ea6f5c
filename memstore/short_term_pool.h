// One layer's short-term vectors in RAM as a pool of rows plus the row of each slot
// (engine::ShortTermRows): an inject writes its K new tokens over the rows of the K tokens it
// drops, so a commit copies K rows instead of moving the kept ones to keep slot order (on
// mplus-8b 100 MB a layer, 3.2 GB an inject).
#ifndef MPLUS_MEMSTORE_SHORT_TERM_POOL_H_
#define MPLUS_MEMSTORE_SHORT_TERM_POOL_H_

#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "engine/session_memory.h"

namespace mplus::memstore {

// OK when `dropped` holds `count` ascending, distinct slots of [0, slots).
absl::Status CheckDroppedSlots(absl::Span<const int32_t> dropped, int64_t slots, int64_t count);

// One inject on an array with one value per slot: the slots `dropped` (CheckDroppedSlots) leave,
// the kept ones close up in order, and the dropped.size() values of `appended` become the last
// slots. Short-term rows, token ids and ages all move this way.
template <typename T>
void ReplaceSlots(std::vector<T>& per_slot, absl::Span<const int32_t> dropped,
                  absl::Span<const T> appended) {
  size_t next_drop = 0, out = 0;
  for (size_t slot = 0; slot < per_slot.size(); ++slot) {
    if (next_drop < dropped.size() && dropped[next_drop] == static_cast<int32_t>(slot)) {
      ++next_drop;
    } else {
      per_slot[out++] = per_slot[slot];
    }
  }
  std::copy(appended.begin(), appended.end(), per_slot.begin() + out);
}

class ShortTermPool {
 public:
  ShortTermPool() = default;
  // `slots` rows of `row_bytes` each, uninitialised (a restore writes 100 MB a layer on mplus-8b
  // and should not zero them first): fill them through initial_rows() before any Replace.
  ShortTermPool(int64_t slots, size_t row_bytes);
  // The rows in slot order, as long as no Replace has run.
  uint8_t* initial_rows() { return rows_.get(); }

  int64_t slots() const { return static_cast<int64_t>(slot_rows_.size()); }
  const uint8_t* row(int64_t slot) const { return rows_.get() + slot_rows_[slot] * row_bytes_; }
  size_t bytes() const { return slot_rows_.size() * (row_bytes_ + sizeof(int32_t)); }
  // As the engine reads it: rows of `cols` elements of `dtype`.
  engine::ShortTermRows View(engine::DType dtype, int64_t cols) const;

  // One inject: the slots `dropped` (CheckDroppedSlots) leave, the kept ones close up in order,
  // and the dropped.size() rows of `new_rows` become the last slots, in order, narrowed to the
  // pool's `dtype` straight into the rows they take over (no staging copy).
  void Replace(absl::Span<const int32_t> dropped, const float* new_rows, engine::DType dtype);

 private:
  std::unique_ptr<uint8_t[]> rows_;  // slots() rows
  size_t row_bytes_ = 0;
  std::vector<int32_t> slot_rows_;
};

}  // namespace mplus::memstore

#endif  // MPLUS_MEMSTORE_SHORT_TERM_POOL_H_
