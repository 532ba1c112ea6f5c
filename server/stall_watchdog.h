// Watches for a stalled device: a wait for the GPU that lasts minutes means a hung device (a
// kernel that never ends), and the work stuck behind it cannot be taken back. The watchdog
// reports it once, so that the server can turn its health NOT_SERVING: the load balancer stops
// routing to it and the orchestrator restarts it, instead of requests hanging forever.
#ifndef MPLUS_SERVER_STALL_WATCHDOG_H_
#define MPLUS_SERVER_STALL_WATCHDOG_H_

#include <functional>
#include <thread>

#include "absl/synchronization/notification.h"
#include "absl/time/time.h"

namespace mplus::server {

class StallWatchdog {
 public:
  // Every `period`, reads `wait_seconds` (the oldest wait for the device in progress, 0 when
  // none; Backend::DeviceWaitSeconds) and calls `on_stall(seconds)` the first time it reaches
  // `limit`. Both callbacks run on the watchdog's thread.
  StallWatchdog(std::function<double()> wait_seconds, absl::Duration limit, absl::Duration period,
                std::function<void(double seconds)> on_stall);
  ~StallWatchdog();  // stops the thread (within one period)
  StallWatchdog(const StallWatchdog&) = delete;
  StallWatchdog& operator=(const StallWatchdog&) = delete;

 private:
  void Run();

  const std::function<double()> wait_seconds_;
  const double limit_seconds_;
  const absl::Duration period_;
  const std::function<void(double)> on_stall_;
  absl::Notification stop_;
  std::thread thread_;
};

}  // namespace mplus::server

#endif  // MPLUS_SERVER_STALL_WATCHDOG_H_
