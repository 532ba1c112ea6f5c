// A fixed pool of worker threads for data-parallel loops. Several threads may run loops on one
// pool at once, and a loop's body may run a loop of its own: the calling thread always works
// through its own loop's chunks, so a loop finishes even when every worker is busy elsewhere.
#ifndef MPLUS_COMMON_THREAD_POOL_H_
#define MPLUS_COMMON_THREAD_POOL_H_

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace mplus {

class ThreadPool {
 public:
  // num_threads <= 0: AvailableCpus(). The calling thread also works, so n threads means
  // n - 1 workers.
  explicit ThreadPool(int num_threads);
  ~ThreadPool();  // no loop may be running
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return static_cast<int>(workers_.size()) + 1; }

  // Calls fn(begin, end) on disjoint chunks covering [0, n), at least `grain` items per chunk
  // (the last may be shorter) and at most four chunks per thread, and returns when all are
  // done. Chunks run on the calling thread and on idle workers.
  void ParallelFor(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

 private:
  struct Loop;
  void WorkerLoop();

  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable work_cv_;
  std::deque<std::shared_ptr<Loop>> loops_;  // loops with chunks no thread has taken yet
  bool stop_ = false;
};

}  // namespace mplus

#endif  // MPLUS_COMMON_THREAD_POOL_H_
