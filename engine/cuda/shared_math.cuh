// Math that more than one kernel computes and that must round alike in each: the MLP's SiLU
// (kernels.cu's SiluMul, and the down projection's GEMV that may fold it in) and the RMSNorm's
// block size, which fixes the order of its sum of squares (kernels.cu's RmsNorm, and the GEMV
// that may fold it in; gemv.h).
#ifndef MPLUS_ENGINE_CUDA_SHARED_MATH_CUH_
#define MPLUS_ENGINE_CUDA_SHARED_MATH_CUH_

namespace mplus::engine::cuda {

__device__ __forceinline__ float SiluF(float x) { return x / (1.0f + expf(-x)); }

// Threads of RmsNorm's block: thread t sums the squares of elements t, t + 1024, ... in turn,
// then warps reduce by xor shuffles, then the 32 warp sums likewise.
inline constexpr int kRmsNormThreads = 1024;

}  // namespace mplus::engine::cuda

#endif  // MPLUS_ENGINE_CUDA_SHARED_MATH_CUH_
