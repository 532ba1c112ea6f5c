// Admission control for engine work: requests on one session run one at a time in arrival
// order; different sessions run concurrently up to `workers`; at most `max_queued` requests
// wait. A waiting request gives up when its client cancels or its deadline passes.
#ifndef MPLUS_SERVER_REQUEST_SCHEDULER_H_
#define MPLUS_SERVER_REQUEST_SCHEDULER_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace mplus::server {

class RequestScheduler {
 public:
  RequestScheduler(int workers, int max_queued);

  // Holding a Slot means "this request runs now"; destroying it lets the next one in.
  class Slot {
   public:
    Slot(Slot&& other) noexcept;
    Slot& operator=(Slot&&) = delete;
    ~Slot();

   private:
    friend class RequestScheduler;
    Slot(RequestScheduler* scheduler, std::string session) noexcept
        : scheduler_(scheduler), session_(std::move(session)) {}
    RequestScheduler* scheduler_;
    std::string session_;
  };

  // Waits for this session's turn and a free worker. RESOURCE_EXHAUSTED when the queue is full
  // (naming --max_queued_requests), CANCELLED when `cancelled()` turns true while waiting,
  // UNAVAILABLE once draining.
  absl::StatusOr<Slot> Acquire(const std::string& session, const std::function<bool()>& cancelled);

  // Refuse new requests from now on (requests already running finish).
  void Drain();

  int queued() const;
  int running() const;

 private:
  struct SessionQueue {
    std::deque<uint64_t> waiting;  // tickets in arrival order
    bool running = false;
  };
  void Release(const std::string& session);

  const int workers_;
  const int max_queued_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, SessionQueue> sessions_ ABSL_GUARDED_BY(mu_);
  int running_ ABSL_GUARDED_BY(mu_) = 0;
  int queued_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t next_ticket_ ABSL_GUARDED_BY(mu_) = 0;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace mplus::server

#endif  // MPLUS_SERVER_REQUEST_SCHEDULER_H_
