// ShortTermPool: an inject's new rows take the dropped rows' places, and slot order reads as if
// the kept rows had moved up (the engine's ShortTermRows view).
#include "memstore/short_term_pool.h"

#include <algorithm>
#include <cstring>
#include <numeric>
#include <random>

#include "gtest/gtest.h"

namespace mplus::memstore {
namespace {

constexpr int64_t kSlots = 40, kCols = 3;
constexpr size_t kRowBytes = kCols * sizeof(float);

std::vector<float> Floats(int64_t count, float first_value) {
  std::vector<float> v(static_cast<size_t>(count * kCols));
  std::iota(v.begin(), v.end(), first_value);
  return v;
}

std::vector<uint8_t> Rows(int64_t count, float first_value) {
  const std::vector<float> v = Floats(count, first_value);
  std::vector<uint8_t> bytes(v.size() * sizeof(float));
  std::memcpy(bytes.data(), v.data(), bytes.size());
  return bytes;
}

ShortTermPool PoolOf(const std::vector<uint8_t>& rows) {
  ShortTermPool pool(static_cast<int64_t>(rows.size() / kRowBytes), kRowBytes);
  std::memcpy(pool.initial_rows(), rows.data(), rows.size());
  return pool;
}

std::vector<uint8_t> SlotOrder(const ShortTermPool& pool) {
  const engine::ShortTermRows view = pool.View(engine::DType::kF32, kCols);
  std::vector<uint8_t> out(static_cast<size_t>(view.slots()) * view.row_bytes());
  view.CopySlots(0, view.slots(), out.data());
  return out;
}

TEST(ShortTermPoolTest, InjectsReadAsCompactedSlotOrder) {
  ShortTermPool pool = PoolOf(Rows(kSlots, 0));
  std::vector<uint8_t> reference = Rows(kSlots, 0);  // kept rows moved up, new rows appended
  std::mt19937 rng(7);
  std::vector<int32_t> all(kSlots);
  std::iota(all.begin(), all.end(), 0);
  for (int inject = 0; inject < 6; ++inject) {
    const int64_t k = 1 + inject % 4;
    std::shuffle(all.begin(), all.end(), rng);
    std::vector<int32_t> dropped(all.begin(), all.begin() + k);
    std::sort(dropped.begin(), dropped.end());
    ASSERT_TRUE(CheckDroppedSlots(dropped, kSlots, k).ok());
    const std::vector<uint8_t> fresh = Rows(k, 1000.0f * (inject + 1));

    std::vector<uint8_t> next;
    for (int64_t slot = 0; slot < kSlots; ++slot) {
      if (!std::binary_search(dropped.begin(), dropped.end(), slot)) {
        next.insert(next.end(), reference.begin() + slot * kRowBytes,
                    reference.begin() + (slot + 1) * kRowBytes);
      }
    }
    next.insert(next.end(), fresh.begin(), fresh.end());
    reference = std::move(next);

    pool.Replace(dropped, Floats(k, 1000.0f * (inject + 1)).data(), engine::DType::kF32);
    ASSERT_EQ(SlotOrder(pool), reference) << "after inject " << inject;
    for (int64_t slot = 0; slot < kSlots; ++slot) {
      ASSERT_EQ(std::memcmp(pool.row(slot), reference.data() + slot * kRowBytes, kRowBytes), 0);
    }
  }
  // The pool never grew: every new row went over a dropped one.
  EXPECT_EQ(pool.View(engine::DType::kF32, kCols).pool.shape[0], kSlots);
}

TEST(ShortTermPoolTest, ContiguousOnlyWhileSlotsAreOneRunOfRows) {
  ShortTermPool pool = PoolOf(Rows(kSlots, 0));
  engine::ShortTermRows view = pool.View(engine::DType::kF32, kCols);
  EXPECT_EQ(view.Contiguous(0, kSlots), view.pool.data);
  // Dropping the last slots writes the new rows in place: still one run.
  const std::vector<int32_t> last = {kSlots - 2, kSlots - 1};
  pool.Replace(last, Floats(2, 500).data(), engine::DType::kF32);
  view = pool.View(engine::DType::kF32, kCols);
  EXPECT_EQ(view.Contiguous(0, kSlots), view.pool.data);
  const std::vector<int32_t> first = {0};
  pool.Replace(first, Floats(1, 900).data(), engine::DType::kF32);
  view = pool.View(engine::DType::kF32, kCols);
  EXPECT_EQ(view.Contiguous(0, kSlots), nullptr);
  EXPECT_EQ(view.Contiguous(0, kSlots - 1), view.Row(0));  // the kept rows 1 .. N-1
  EXPECT_EQ(view.GetFloat(kSlots - 1, 0), 900.0f);         // the new row, last slot
}

TEST(ShortTermPoolTest, DroppedSlotsMustBeAscendingDistinctAndInRange) {
  EXPECT_TRUE(CheckDroppedSlots(std::vector<int32_t>{1, 5}, 8, 2).ok());
  for (const std::vector<int32_t>& bad :
       {std::vector<int32_t>{1}, {5, 1}, {3, 3}, {-1, 2}, {2, 8}}) {
    EXPECT_EQ(CheckDroppedSlots(bad, 8, 2).code(), absl::StatusCode::kInvalidArgument);
  }
}

}  // namespace
}  // namespace mplus::memstore
