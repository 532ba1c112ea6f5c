// common/: the CPU count that sizes thread pools (cgroup quota parsing, the count itself) and
// ParallelFor.
#include <atomic>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "common/cpu_count.h"
#include "common/parallel_for.h"
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

TEST(ParallelForTest, CoversEveryIndexOnceInContiguousRanges) {
  for (const int64_t n : {0, 1, 7, 1000, 4097}) {
    std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
    std::mutex mu;
    std::set<std::thread::id> threads;
    int64_t ranges = 0;
    ParallelFor(n, 100, [&](int64_t begin, int64_t end) {
      ASSERT_LT(begin, end);
      for (int64_t i = begin; i < end; ++i) ++hits[i];
      std::lock_guard<std::mutex> lock(mu);
      threads.insert(std::this_thread::get_id());
      ++ranges;
    });
    for (int64_t i = 0; i < n; ++i) EXPECT_EQ(hits[i], 1) << "n=" << n << " i=" << i;
    // At least 100 items a range, at most one range per usable CPU.
    EXPECT_LE(ranges,
              std::max<int64_t>(n == 0 ? 0 : 1, std::min<int64_t>(n / 100, AvailableCpus())));
    EXPECT_EQ(static_cast<int64_t>(threads.size()), ranges);
  }
}

TEST(ParallelForTest, ParallelCopyCopiesEveryByte) {
  for (const size_t bytes : {size_t{0}, size_t{13}, (size_t{5} << 20) + 3}) {
    std::vector<char> src(bytes), dst(bytes, 0);
    for (size_t i = 0; i < bytes; ++i) src[i] = static_cast<char>(i * 7 + 1);
    ParallelCopy(dst.data(), src.data(), bytes);
    EXPECT_EQ(dst, src) << bytes << " bytes";
  }
}

}  // namespace
}  // namespace mplus
