#include "common/parallel_for.h"

#include <algorithm>
#include <cstring>

#include "common/cpu_count.h"
#include "common/thread_pool.h"

namespace mplus {

void ParallelFor(int64_t n, int64_t min_per_thread,
                 const std::function<void(int64_t begin, int64_t end)>& fn) {
  // One pool for the process, never destroyed (a loop may still run in a detached thread at
  // exit).
  static ThreadPool* const pool = new ThreadPool(AvailableCpus());
  pool->ParallelFor(n, min_per_thread, fn);
}

void ParallelCopy(void* dst, const void* src, size_t bytes) {
  constexpr int64_t kMinBytesPerThread = int64_t{2} << 20;
  ParallelFor(static_cast<int64_t>(bytes), kMinBytesPerThread, [&](int64_t begin, int64_t end) {
    std::memcpy(static_cast<char*>(dst) + begin, static_cast<const char*>(src) + begin,
                static_cast<size_t>(end - begin));
  });
}

}  // namespace mplus
