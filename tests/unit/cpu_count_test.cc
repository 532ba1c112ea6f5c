// The CPU count that sizes thread pools: cgroup quota parsing, and the count itself.
#include "common/cpu_count.h"

#include <thread>

#include "gtest/gtest.h"

namespace mplus {
namespace {

TEST(CpuCountTest, CgroupV2QuotaRoundsUp) {
  EXPECT_EQ(CpusFromCgroupV2("200000 100000\n"), 2);
  EXPECT_EQ(CpusFromCgroupV2("150000 100000"), 2);
  EXPECT_EQ(CpusFromCgroupV2("50000 100000"), 1);  // half a CPU still gets a thread
  EXPECT_EQ(CpusFromCgroupV2("1600000 100000\n"), 16);
}

TEST(CpuCountTest, NoOrUnreadableCgroupLimitIsNone) {
  EXPECT_EQ(CpusFromCgroupV2("max 100000\n"), std::nullopt);
  EXPECT_EQ(CpusFromCgroupV2(""), std::nullopt);  // no such file
  EXPECT_EQ(CpusFromCgroupV2("100000"), std::nullopt);
  EXPECT_EQ(CpusFromCgroupV2("abc 100000"), std::nullopt);
  EXPECT_EQ(CpusFromCgroupV2("100000 0"), std::nullopt);
  EXPECT_EQ(CpusFromCgroupV1("-1\n", "100000\n"), std::nullopt);
  EXPECT_EQ(CpusFromCgroupV1("", ""), std::nullopt);
  EXPECT_EQ(CpusFromCgroupV1("300000\n", "100000\n"), 3);
}

TEST(CpuCountTest, AvailableCpusIsWithinTheMachine) {
  const int cpus = AvailableCpus();
  EXPECT_GE(cpus, 1);
  EXPECT_LE(cpus, static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
  EXPECT_EQ(AvailableCpus(), cpus);
}

}  // namespace
}  // namespace mplus
