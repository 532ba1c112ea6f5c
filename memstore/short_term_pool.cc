#include "memstore/short_term_pool.h"

#include <numeric>

#include "absl/strings/str_cat.h"
#include "engine/dtype.h"

namespace mplus::memstore {

absl::Status CheckDroppedSlots(absl::Span<const int32_t> dropped, int64_t slots, int64_t count) {
  if (static_cast<int64_t>(dropped.size()) != count) {
    return absl::InvalidArgumentError(
        absl::StrCat(dropped.size(), " dropped slots, expected ", count));
  }
  for (size_t j = 0; j < dropped.size(); ++j) {
    if (dropped[j] < 0 || dropped[j] >= slots || (j > 0 && dropped[j] <= dropped[j - 1])) {
      return absl::InvalidArgumentError(
          absl::StrCat("dropped slots must be ascending, distinct and in [0, ", slots, ")"));
    }
  }
  return absl::OkStatus();
}

ShortTermPool::ShortTermPool(int64_t slots, size_t row_bytes)
    : rows_(new uint8_t[static_cast<size_t>(slots) * row_bytes]),
      row_bytes_(row_bytes),
      slot_rows_(static_cast<size_t>(slots)) {
  std::iota(slot_rows_.begin(), slot_rows_.end(), 0);
}

engine::ShortTermRows ShortTermPool::View(engine::DType dtype, int64_t cols) const {
  engine::ShortTermRows v;
  v.pool.name = "stm";
  v.pool.dtype = dtype;
  v.pool.shape = {slots(), cols};
  v.pool.data = rows_.get();
  v.pool.nbytes = slot_rows_.size() * row_bytes_;
  v.slot_rows = slot_rows_;
  return v;
}

void ShortTermPool::Replace(absl::Span<const int32_t> dropped, const float* new_rows,
                            engine::DType dtype) {
  const int64_t cols = static_cast<int64_t>(row_bytes_ / engine::DTypeSize(dtype));
  std::vector<int32_t> freed;  // the dropped slots' rows: the new tokens' rows
  freed.reserve(dropped.size());
  for (size_t j = 0; j < dropped.size(); ++j) {
    freed.push_back(slot_rows_[dropped[j]]);
    engine::FloatsToDType(new_rows + j * cols, cols, dtype, rows_.get() + freed[j] * row_bytes_);
  }
  ReplaceSlots<int32_t>(slot_rows_, dropped, freed);
}

}  // namespace mplus::memstore
