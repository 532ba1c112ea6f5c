#include "server/stall_watchdog.h"

#include <utility>

namespace mplus::server {

StallWatchdog::StallWatchdog(std::function<double()> wait_seconds, absl::Duration limit,
                             absl::Duration period, std::function<void(double)> on_stall)
    : wait_seconds_(std::move(wait_seconds)),
      limit_seconds_(absl::ToDoubleSeconds(limit)),
      period_(period),
      on_stall_(std::move(on_stall)),
      thread_([this] { Run(); }) {}

StallWatchdog::~StallWatchdog() {
  stop_.Notify();
  thread_.join();
}

void StallWatchdog::Run() {
  while (!stop_.WaitForNotificationWithTimeout(period_)) {
    const double seconds = wait_seconds_();
    if (seconds >= limit_seconds_) {
      on_stall_(seconds);
      return;  // once: the device does not come back
    }
  }
}

}  // namespace mplus::server
