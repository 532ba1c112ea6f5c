// Splitting a loop over the CPUs the process may use (common/cpu_count.h).
#ifndef MPLUS_COMMON_PARALLEL_FOR_H_
#define MPLUS_COMMON_PARALLEL_FOR_H_

#include <cstddef>
#include <cstdint>
#include <functional>

namespace mplus {

// Runs fn(begin, end) on contiguous ranges that cover [0, n), one per thread, on up to
// AvailableCpus() threads (the calling thread takes the first range) with at least
// `min_per_thread` items each; returns when all are done. For work of a millisecond or more:
// each call starts its threads.
void ParallelFor(int64_t n, int64_t min_per_thread,
                 const std::function<void(int64_t begin, int64_t end)>& fn);

// memcpy of `bytes` (non-overlapping), on several threads when there are megabytes to copy: one
// thread copies ~5-10 GB/s, a server's memory takes several times that.
void ParallelCopy(void* dst, const void* src, size_t bytes);

}  // namespace mplus

#endif  // MPLUS_COMMON_PARALLEL_FOR_H_
