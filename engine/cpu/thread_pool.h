// A small fixed pool for data-parallel loops over rows (the CPU backend's only threading).
#ifndef MPLUS_ENGINE_CPU_THREAD_POOL_H_
#define MPLUS_ENGINE_CPU_THREAD_POOL_H_

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace mplus::engine::cpu {

class ThreadPool {
 public:
  // num_threads <= 0: AvailableCpus(). The calling thread also works, so n threads means
  // n - 1 workers.
  explicit ThreadPool(int num_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return static_cast<int>(workers_.size()) + 1; }

  // Calls fn(begin, end) on disjoint chunks covering [0, n), at least `grain` items per chunk,
  // and returns when all are done. Not reentrant: fn must not call ParallelFor.
  void ParallelFor(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

 private:
  void WorkerLoop();
  void RunChunks();

  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable start_cv_, done_cv_;
  uint64_t generation_ = 0;
  bool stop_ = false;
  int active_ = 0;
  // The current job.
  const std::function<void(int64_t, int64_t)>* fn_ = nullptr;
  int64_t n_ = 0, chunk_ = 0, num_chunks_ = 0;
  int64_t next_chunk_ = 0;
  std::mutex serial_mu_;  // one ParallelFor at a time
};

}  // namespace mplus::engine::cpu

#endif  // MPLUS_ENGINE_CPU_THREAD_POOL_H_
