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

}  // namespace mplus::engine::cuda

#endif  // MPLUS_ENGINE_CUDA_DEPENDENT_LAUNCH_CUH_
