#include "server/request_scheduler.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"

namespace mplus::server {

RequestScheduler::RequestScheduler(int workers, int max_queued)
    : workers_(workers), max_queued_(max_queued) {}

RequestScheduler::Slot::Slot(Slot&& other) noexcept
    : scheduler_(other.scheduler_), session_(std::move(other.session_)) {
  other.scheduler_ = nullptr;
}

RequestScheduler::Slot::~Slot() {
  if (scheduler_ != nullptr) scheduler_->Release(session_);
}

absl::StatusOr<RequestScheduler::Slot> RequestScheduler::Acquire(
    const std::string& session, const std::function<bool()>& cancelled) {
  absl::MutexLock lock(&mu_);
  if (draining_) return absl::UnavailableError("server is shutting down; retry on another replica");
  if (queued_ >= max_queued_) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "request queue full (", max_queued_, " waiting); raise --max_queued_requests or retry"));
  }
  const uint64_t ticket = next_ticket_++;
  sessions_[session].waiting.push_back(ticket);
  ++queued_;
  auto my_turn = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const SessionQueue& q = sessions_[session];
    return !q.running && q.waiting.front() == ticket && running_ < workers_;
  };
  // Wake periodically to notice a client that went away while we wait.
  while (!mu_.AwaitWithTimeout(absl::Condition(&my_turn), absl::Milliseconds(50))) {
    if (cancelled()) {
      --queued_;
      SessionQueue& q = sessions_[session];
      q.waiting.erase(std::find(q.waiting.begin(), q.waiting.end(), ticket));
      if (q.waiting.empty() && !q.running) sessions_.erase(session);
      return absl::CancelledError("request cancelled while waiting for its session's turn");
    }
  }
  --queued_;
  ++running_;
  SessionQueue& q = sessions_[session];
  q.waiting.pop_front();
  q.running = true;
  return Slot(this, session);
}

void RequestScheduler::Release(const std::string& session) {
  absl::MutexLock lock(&mu_);
  --running_;
  SessionQueue& q = sessions_[session];
  q.running = false;
  if (q.waiting.empty()) sessions_.erase(session);
}

void RequestScheduler::Drain() {
  absl::MutexLock lock(&mu_);
  draining_ = true;
}

int RequestScheduler::queued() const {
  absl::MutexLock lock(&mu_);
  return queued_;
}

int RequestScheduler::running() const {
  absl::MutexLock lock(&mu_);
  return running_;
}

}  // namespace mplus::server
