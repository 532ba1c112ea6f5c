#include <atomic>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "server/request_scheduler.h"

namespace mplus::server {
namespace {

auto kNever = [] { return false; };

TEST(RequestSchedulerTest, SameSessionRunsInArrivalOrderOneAtATime) {
  RequestScheduler scheduler(/*workers=*/4, /*max_queued=*/16);
  std::vector<int> order;
  absl::Mutex mu;
  std::atomic<int> concurrent{0}, max_concurrent{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 6; ++i) {
    threads.emplace_back([&, i] {
      auto slot = scheduler.Acquire("s", kNever);
      ASSERT_TRUE(slot.ok());
      int now = ++concurrent;
      max_concurrent = std::max(max_concurrent.load(), now);
      {
        absl::MutexLock lock(&mu);
        order.push_back(i);
      }
      absl::SleepFor(absl::Milliseconds(5));
      --concurrent;
    });
    absl::SleepFor(absl::Milliseconds(20));  // arrival order = i
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(order, (std::vector<int>{0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(max_concurrent.load(), 1);
}

TEST(RequestSchedulerTest, DifferentSessionsRunConcurrentlyUpToWorkers) {
  RequestScheduler scheduler(/*workers=*/2, /*max_queued=*/16);
  std::atomic<int> concurrent{0}, max_concurrent{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 6; ++i) {
    threads.emplace_back([&, i] {
      auto slot = scheduler.Acquire("s" + std::to_string(i), kNever);
      ASSERT_TRUE(slot.ok());
      int now = ++concurrent;
      int seen = max_concurrent.load();
      while (now > seen && !max_concurrent.compare_exchange_weak(seen, now)) {
      }
      absl::SleepFor(absl::Milliseconds(30));
      --concurrent;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(max_concurrent.load(), 2);
}

TEST(RequestSchedulerTest, FullQueueIsResourceExhausted) {
  RequestScheduler scheduler(/*workers=*/1, /*max_queued=*/1);
  auto running = scheduler.Acquire("a", kNever);
  ASSERT_TRUE(running.ok());
  std::atomic<bool> release{false};
  std::thread waiter([&] { auto slot = scheduler.Acquire("a", [&] { return release.load(); }); });
  while (scheduler.queued() == 0) absl::SleepFor(absl::Milliseconds(1));
  auto refused = scheduler.Acquire("b", kNever);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(refused.status().message().find("--max_queued_requests"), std::string::npos);
  release = true;
  waiter.join();
}

TEST(RequestSchedulerTest, CancelledWaiterLeavesAndNextRuns) {
  RequestScheduler scheduler(/*workers=*/1, /*max_queued=*/8);
  auto first = std::make_unique<RequestScheduler::Slot>(*scheduler.Acquire("s", kNever));
  std::atomic<bool> cancel_second{false};
  absl::Status second_status;
  std::thread second([&] {
    second_status = scheduler.Acquire("s", [&] { return cancel_second.load(); }).status();
  });
  std::atomic<bool> third_ran{false};
  while (scheduler.queued() < 1) absl::SleepFor(absl::Milliseconds(1));
  std::thread third([&] {
    auto slot = scheduler.Acquire("s", kNever);
    third_ran = slot.ok();
  });
  while (scheduler.queued() < 2) absl::SleepFor(absl::Milliseconds(1));
  cancel_second = true;
  second.join();
  EXPECT_EQ(second_status.code(), absl::StatusCode::kCancelled);
  first.reset();
  third.join();
  EXPECT_TRUE(third_ran);
  EXPECT_EQ(scheduler.running(), 0);
  EXPECT_EQ(scheduler.queued(), 0);
}

TEST(RequestSchedulerTest, DrainRefusesNewWork) {
  RequestScheduler scheduler(1, 4);
  scheduler.Drain();
  EXPECT_EQ(scheduler.Acquire("s", kNever).status().code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace mplus::server
