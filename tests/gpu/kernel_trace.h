// Where the GPU's time goes inside a stretch of work: the kernels and copies it ran, timed by the
// GPU itself through CUPTI's activity records (what Nsight Systems reads), summed per kernel
// name. Also the time the GPU sat idle between them, which is where launch latency and a host
// that cannot keep up show. Tracing costs ~1 us per kernel on the host; the GPU times are exact.
#ifndef MPLUS_TESTS_GPU_KERNEL_TRACE_H_
#define MPLUS_TESTS_GPU_KERNEL_TRACE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace mplus::model_bench {

struct KernelTotal {
  std::string name;  // demangled, without namespaces and parameter lists, and the launch's grid
  int64_t count = 0;
  double gpu_us = 0;  // sum of the GPU durations
};

struct TraceSummary {
  std::vector<KernelTotal> kernels;  // by gpu_us, largest first
  int64_t copies = 0;                // memcpy and memset operations
  double copy_us = 0;
  double span_us = 0;  // first start to last end of everything traced
  double busy_us = 0;  // union of the kernel and copy intervals
};

// One trace at a time per process (CUPTI's activity buffers are process-wide).
class KernelTrace {
 public:
  // Starts recording kernels, copies and memsets on every stream.
  static absl::Status Start();
  // Waits for the GPU to finish what was recorded, stops, and sums the records.
  static absl::StatusOr<TraceSummary> Stop();
};

// `summary` as a markdown table per `steps` (e.g. decode steps): the `top` kernels by time, the
// rest in one row, copies, and the GPU's idle time within the span.
std::string FormatTrace(const TraceSummary& summary, int steps, int top);

// "void ns::(anonymous namespace)::Kernel<float, 4>(ns::Params, int)" -> "Kernel<float, 4>".
std::string ShortKernelName(const std::string& demangled);

}  // namespace mplus::model_bench

#endif  // MPLUS_TESTS_GPU_KERNEL_TRACE_H_
