// common/: the CPU count that sizes thread pools (cgroup quota parsing, the count itself) and
// ParallelFor.
#include <atomic>
#include <chrono>
#include <mutex>
#include <set>
#include <thread>
#include <utility>
#include <vector>

#include "common/cpu_count.h"
#include "common/parallel_for.h"
#include "common/thread_pool.h"
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
    std::atomic<int64_t> ranges{0}, short_ranges{0};
    ParallelFor(n, 100, [&](int64_t begin, int64_t end) {
      ASSERT_LT(begin, end);
      for (int64_t i = begin; i < end; ++i) ++hits[i];
      ++ranges;
      short_ranges += end - begin < 100 && end != n;
    });
    for (int64_t i = 0; i < n; ++i) EXPECT_EQ(hits[i], 1) << "n=" << n << " i=" << i;
    // At least 100 items a range (but the last), at most four ranges per usable CPU.
    EXPECT_EQ(short_ranges, 0) << "n=" << n;
    EXPECT_LE(ranges,
              std::max<int64_t>(n == 0 ? 0 : 1, std::min<int64_t>(n / 100, 4 * AvailableCpus())));
  }
}

// Chunks of one loop run on several threads at once (the pool's workers help the caller).
TEST(ThreadPoolTest, ChunksRunOnSeveralThreads) {
  ThreadPool pool(4);
  ASSERT_EQ(pool.num_threads(), 4);
  std::vector<int> hits(1000, 0);
  std::mutex mu;
  std::set<std::thread::id> threads;
  std::atomic<int> inside{0};
  pool.ParallelFor(1000, 7, [&](int64_t a, int64_t b) {
    // The first chunk waits (up to 10 s) for a second to start, which only another thread can.
    if (++inside == 1) {
      const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(10);
      while (inside < 2 && std::chrono::steady_clock::now() < give_up) std::this_thread::yield();
    }
    for (int64_t i = a; i < b; ++i) ++hits[i];
    std::lock_guard<std::mutex> lock(mu);
    threads.insert(std::this_thread::get_id());
  });
  for (int h : hits) EXPECT_EQ(h, 1);
  EXPECT_GE(threads.size(), 2u);
}

// Loops from several threads at once, each with loops nested in its chunks: all finish, each
// index once, although there are more loops than workers.
TEST(ThreadPoolTest, ConcurrentAndNestedLoopsFinish) {
  ThreadPool pool(3);
  constexpr int kCallers = 4, kOuter = 16, kInner = 500;
  std::vector<std::vector<std::atomic<int>>> hits(kCallers);
  for (auto& h : hits) h = std::vector<std::atomic<int>>(kOuter * kInner);
  std::vector<std::thread> callers;
  for (int c = 0; c < kCallers; ++c) {
    callers.emplace_back([&, c] {
      pool.ParallelFor(kOuter, 1, [&](int64_t o0, int64_t o1) {
        for (int64_t o = o0; o < o1; ++o) {
          pool.ParallelFor(kInner, 10, [&](int64_t i0, int64_t i1) {
            for (int64_t i = i0; i < i1; ++i) ++hits[c][o * kInner + i];
          });
        }
      });
    });
  }
  for (std::thread& t : callers) t.join();
  for (const auto& h : hits) {
    for (const auto& x : h) ASSERT_EQ(x, 1);
  }
}

// One thread: the caller runs the whole range itself, in one call.
TEST(ThreadPoolTest, OneThreadRunsTheLoopInline) {
  ThreadPool pool(1);
  std::vector<std::pair<int64_t, int64_t>> calls;
  pool.ParallelFor(100, 1, [&](int64_t a, int64_t b) { calls.push_back({a, b}); });
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_EQ(calls[0], std::make_pair(int64_t{0}, int64_t{100}));
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
