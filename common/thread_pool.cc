#include "common/thread_pool.h"

#include <algorithm>
#include <atomic>

#include "common/cpu_count.h"

namespace mplus {

struct ThreadPool::Loop {
  const std::function<void(int64_t, int64_t)>* fn;
  int64_t n, chunk, num_chunks;
  std::atomic<int64_t> next{0};      // the next chunk to take
  std::atomic<int64_t> finished{0};  // chunks done
  std::mutex mu;
  std::condition_variable done_cv;

  bool taken() const { return next.load(std::memory_order_relaxed) >= num_chunks; }

  // Runs chunks until every one has been taken.
  void RunChunks() {
    for (int64_t c; (c = next.fetch_add(1)) < num_chunks;) {
      (*fn)(c * chunk, std::min(n, (c + 1) * chunk));
      if (finished.fetch_add(1) + 1 == num_chunks) {
        std::lock_guard<std::mutex> lock(mu);  // the waiter checks `finished` under mu
        done_cv.notify_all();
      }
    }
  }
};

ThreadPool::ThreadPool(int num_threads) {
  if (num_threads <= 0) num_threads = AvailableCpus();
  for (int i = 1; i < num_threads; ++i) workers_.emplace_back([this] { WorkerLoop(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  work_cv_.notify_all();
  for (std::thread& t : workers_) t.join();
}

void ThreadPool::WorkerLoop() {
  while (true) {
    std::shared_ptr<Loop> loop;
    {
      std::unique_lock<std::mutex> lock(mu_);
      work_cv_.wait(lock, [&] { return stop_ || !loops_.empty(); });
      if (stop_) return;
      loop = loops_.front();
      if (loop->taken()) {  // every chunk already running somewhere: on to the next loop
        loops_.pop_front();
        continue;
      }
    }
    loop->RunChunks();
  }
}

void ThreadPool::ParallelFor(int64_t n, int64_t grain,
                             const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  const int64_t max_chunks = std::max<int64_t>(1, n / std::max<int64_t>(1, grain));
  const int64_t num_chunks = std::min<int64_t>(max_chunks, 4 * num_threads());
  if (workers_.empty() || num_chunks == 1) {
    fn(0, n);
    return;
  }
  auto loop = std::make_shared<Loop>();
  loop->fn = &fn;
  loop->n = n;
  loop->chunk = (n + num_chunks - 1) / num_chunks;
  loop->num_chunks = (n + loop->chunk - 1) / loop->chunk;
  {
    std::lock_guard<std::mutex> lock(mu_);
    loops_.push_back(loop);
  }
  const int64_t helpers = std::min<int64_t>(loop->num_chunks - 1, workers_.size());
  for (int64_t i = 0; i < helpers; ++i) work_cv_.notify_one();
  loop->RunChunks();
  {
    std::unique_lock<std::mutex> lock(loop->mu);
    loop->done_cv.wait(lock, [&] { return loop->finished.load() == loop->num_chunks; });
  }
  // Every chunk has run; a worker holding `loop` now only finds it taken.
  std::lock_guard<std::mutex> lock(mu_);
  loops_.erase(std::remove(loops_.begin(), loops_.end(), loop), loops_.end());
}

}  // namespace mplus
