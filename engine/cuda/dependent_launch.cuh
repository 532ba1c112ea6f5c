// Programmatic dependent launch (sm_90+): a kernel launched with
// cudaLaunchAttributeProgrammaticStreamSerialization may start before the kernel ahead of it in
// the stream has finished, once every block of that kernel has allowed it (or exited). It must
// wait before it reads anything that kernel writes. Both are no-ops below sm_90, where no launch
// is programmatic.
//
// What keeps a chain of programmatic launches ordered: every thread of a programmatic kernel
// reaches WaitForPrecedingKernel (no early return before it), so no such kernel completes
// before the one ahead of it, and a wait covers the whole chain back to the last plain launch;
// and before its wait a kernel reads only what no kernel writes (the GEMV: uploaded weights).
// The server sets MPLUS_CUDA_DEPENDENT_LAUNCH=0 to launch everything plainly (diagnosis).
#ifndef MPLUS_ENGINE_CUDA_DEPENDENT_LAUNCH_CUH_
#define MPLUS_ENGINE_CUDA_DEPENDENT_LAUNCH_CUH_

#include <cuda_runtime.h>

#include <utility>

namespace mplus::engine::cuda {

// Blocks until the kernel ahead in the stream has completed and its writes are visible.
__device__ __forceinline__ void WaitForPrecedingKernel() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Lets a programmatic launch behind this kernel start now (it still waits for this kernel's
// completion before reading what it writes); a plain launch behind it is unaffected.
__device__ __forceinline__ void AllowDependentLaunch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// The L2 cache line that holds `p` fetched from memory, without waiting or using a register: what
// a kernel may do before its wait with memory that the kernel ahead may be writing too (L2 is
// where global memory is coherent: a line written meanwhile is read as written after the wait).
__device__ __forceinline__ void PrefetchL2(const void* p) {
  asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
}

// kernel<<<grid, block, 0, stream>>>(args...), as a programmatic dependent of the kernel ahead
// when `dependent` (the kernel then follows the rules above). A failed launch's error is
// returned and cleared from the thread's last error, which the next launch check would
// otherwise report as its own.
template <typename... Params, typename... Args>
cudaError_t LaunchKernel(void (*kernel)(Params...), dim3 grid, dim3 block, cudaStream_t stream,
                         bool dependent, Args&&... args) {
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.stream = stream;
  cudaLaunchAttribute attribute = {};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  config.attrs = &attribute;
  config.numAttrs = dependent ? 1 : 0;
  const cudaError_t launched = cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
  if (launched != cudaSuccess) (void)cudaGetLastError();
  return launched;
}

}  // namespace mplus::engine::cuda

#endif  // MPLUS_ENGINE_CUDA_DEPENDENT_LAUNCH_CUH_
