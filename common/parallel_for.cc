#include "common/parallel_for.h"

#include <algorithm>
#include <cstring>
#include <thread>
#include <vector>

#include "common/cpu_count.h"

namespace mplus {

void ParallelFor(int64_t n, int64_t min_per_thread,
                 const std::function<void(int64_t begin, int64_t end)>& fn) {
  if (n <= 0) return;
  const int64_t threads =
      std::clamp<int64_t>(n / std::max<int64_t>(1, min_per_thread), 1, AvailableCpus());
  const int64_t per = (n + threads - 1) / threads;
  std::vector<std::thread> pool;
  for (int64_t begin = per; begin < n; begin += per) {
    pool.emplace_back(fn, begin, std::min(n, begin + per));
  }
  fn(0, std::min(n, per));
  for (std::thread& t : pool) t.join();
}

void ParallelCopy(void* dst, const void* src, size_t bytes) {
  constexpr int64_t kMinBytesPerThread = int64_t{2} << 20;
  ParallelFor(static_cast<int64_t>(bytes), kMinBytesPerThread, [&](int64_t begin, int64_t end) {
    std::memcpy(static_cast<char*>(dst) + begin, static_cast<const char*>(src) + begin,
                static_cast<size_t>(end - begin));
  });
}

}  // namespace mplus
