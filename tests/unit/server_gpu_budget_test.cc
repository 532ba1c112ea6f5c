// The sessions' GPU budget: the flag when set, else half of what the loaded model leaves free.
#include "gtest/gtest.h"
#include "server/service_options.h"

namespace mplus::server {
namespace {

TEST(SessionGpuBudgetTest, FlagWinsElseHalfOfTheFreeMemory) {
  EXPECT_EQ(SessionGpuBudgetBytes(64, int64_t{80} << 30), size_t{64} << 20);
  EXPECT_EQ(SessionGpuBudgetBytes(0, int64_t{80} << 30), size_t{40} << 30);
  // Nothing free (or a bogus reading): a budget of one byte, so sessions spill after each use,
  // never 0, which the store reads as "no limit".
  EXPECT_EQ(SessionGpuBudgetBytes(0, 0), 1u);
  EXPECT_EQ(SessionGpuBudgetBytes(0, -5), 1u);
}

}  // namespace
}  // namespace mplus::server
