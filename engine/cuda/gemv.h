// Matrix-vector products for decode: out[n, m] = alpha * x[n, k] · w[m, k]^T (+ out), with a few
// float32 rows x and bfloat16 weights. cuBLASLt would need x rounded to bf16 by a separate
// kernel first and reaches ~77% of the bandwidth at n = 1; this kernel reads x in float32 (more
// accurate, one launch) and streams each weight row once, 16 bytes per thread.
#ifndef MPLUS_ENGINE_CUDA_GEMV_H_
#define MPLUS_ENGINE_CUDA_GEMV_H_

#include <cuda_runtime_api.h>

#include <cstdint>

namespace mplus::engine::cuda {

inline constexpr int64_t kMaxGemvRows = 4;  // rows of x

// The LoRA term of a LoRA linear, added by the GEMV's epilogue (one launch fewer than a second
// GEMV): out[i, row] += scale * t[i, :] · b[row, :], t float32 [n, r], b bf16 [m, r].
struct GemvLora {
  const float* t = nullptr;  // null: no LoRA term
  const uint16_t* b = nullptr;
  int64_t r = 0;
  float scale = 0.0f;
};

// Whether LaunchGemvBf16 takes these operands: 1 <= n <= kMaxGemvRows, k a multiple of 8, and
// x, w 16-byte aligned (k a multiple of 8 keeps every row aligned after the first).
bool GemvSupported(int64_t n, int64_t k, const void* x, const void* w);
// out = alpha * x · w^T (+ the LoRA term), plus out when accumulate (out is not read
// otherwise). Operands as GemvSupported; `num_sms` sizes the grid.
cudaError_t LaunchGemvBf16(const float* x, const uint16_t* w, float* out, int64_t n, int64_t m,
                           int64_t k, float alpha, bool accumulate, const GemvLora& lora,
                           int num_sms, cudaStream_t stream);

}  // namespace mplus::engine::cuda

#endif  // MPLUS_ENGINE_CUDA_GEMV_H_
