// StallWatchdog: reports a device wait past the limit once, never one below it, and stops
// promptly.
#include <atomic>

#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "server/stall_watchdog.h"

namespace mplus::server {
namespace {

TEST(StallWatchdogTest, ReportsAWaitPastTheLimitOnce) {
  std::atomic<double> wait{0.0};
  std::atomic<int> stalls{0};
  std::atomic<double> reported{0.0};
  {
    StallWatchdog watchdog([&] { return wait.load(); }, absl::Seconds(5), absl::Milliseconds(2),
                           [&](double seconds) {
                             reported = seconds;
                             ++stalls;
                           });
    wait = 4.9;  // waits that end below the limit are normal work
    absl::SleepFor(absl::Milliseconds(30));
    EXPECT_EQ(stalls.load(), 0);
    wait = 5.5;
    for (int i = 0; i < 500 && stalls.load() == 0; ++i) absl::SleepFor(absl::Milliseconds(2));
    absl::SleepFor(absl::Milliseconds(30));  // more periods: still one report
  }
  EXPECT_EQ(stalls.load(), 1);
  EXPECT_EQ(reported.load(), 5.5);
}

TEST(StallWatchdogTest, StopsWithinAPeriod) {
  const absl::Time start = absl::Now();
  {
    StallWatchdog watchdog([] { return 0.0; }, absl::Seconds(1), absl::Milliseconds(20),
                           [](double) { FAIL() << "no wait was in progress"; });
  }
  EXPECT_LT(absl::Now() - start, absl::Seconds(1));
}

}  // namespace
}  // namespace mplus::server
