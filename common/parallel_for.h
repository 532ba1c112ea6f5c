// Splitting a loop over the CPUs the process may use (common/cpu_count.h).
#ifndef MPLUS_COMMON_PARALLEL_FOR_H_
#define MPLUS_COMMON_PARALLEL_FOR_H_

#include <cstddef>
#include <cstdint>
#include <functional>

namespace mplus {

// Runs fn(begin, end) on contiguous ranges that cover [0, n), at least `min_per_thread` items
// each (the last may be shorter), on the calling thread and a process-wide pool of
// AvailableCpus() - 1 workers (common/thread_pool.h: concurrent and nested calls are fine);
// returns when all are done. A call costs a few microseconds of hand-off: meant for loops of
// tens of microseconds or more.
void ParallelFor(int64_t n, int64_t min_per_thread,
                 const std::function<void(int64_t begin, int64_t end)>& fn);

// memcpy of `bytes` (non-overlapping), on several threads when there are megabytes to copy: one
// thread copies ~5-10 GB/s, a server's memory takes several times that.
void ParallelCopy(void* dst, const void* src, size_t bytes);

}  // namespace mplus

#endif  // MPLUS_COMMON_PARALLEL_FOR_H_
