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

inline constexpr int kMaxGemvSegments = 4;

// Where the GEMV's rows go, and the LoRA terms its epilogue adds (a launch fewer than a second
// GEMV each). Rows [end[s-1], end[s]) of w (end[-1] = 0) are segment s: written to out[s], its own
// [n, rows_s] float32 matrix; with lora_b[s] (bf16 [rows_s, r]) they gain
// lora_scale * t[i, s r .. s r + r) · lora_b[s][row, :], t float32 [n, lora_t_cols]. One segment
// is a plain (LoRA) linear; several are linears reading the same x with their weights back to
// back (q, k, v).
struct GemvEpilogue {
  int segments = 1;
  int64_t end[kMaxGemvSegments] = {};
  float* out[kMaxGemvSegments] = {};
  const uint16_t* lora_b[kMaxGemvSegments] = {};  // null: no LoRA term for the segment
  const float* lora_t = nullptr;
  int64_t lora_r = 0, lora_t_cols = 0;
  float lora_scale = 0.0f;
};

// One segment: all m rows into out, no LoRA.
inline GemvEpilogue PlainGemv(float* out, int64_t m) {
  GemvEpilogue e;
  e.end[0] = m;
  e.out[0] = out;
  return e;
}

// What a GEMV launch needs to know of the device. On sm_90+ a GEMV is launched as a programmatic
// dependent of the kernel before it: it may start while that kernel's last blocks run, reading
// its first weights (which no kernel writes) meanwhile, and waits for that kernel (PTX
// griddepcontrol.wait) before it reads x or touches out. It also lets the launch after it start
// early, which changes nothing unless that launch is programmatic too.
//
// A programmatic GEMV's first blocks also fetch their whole weight rows into L2 before that wait,
// up to l2_prefetch_bytes in all: the memory bus would otherwise idle through the short kernels
// between a decode step's GEMVs (RMSNorm, RoPE, SiluMul; a few microseconds each). A hint only:
// the weights are read as before, so results cannot change.
struct GemvDevice {
  int num_sms = 1;
  bool programmatic_launch = false;               // compute capability 9.0 or later
  int64_t l2_prefetch_bytes = int64_t{16} << 20;  // a third of an H100's L2
  // Threads that share a weight row (a power of two up to 256); 0: chosen by the shape.
  int threads_per_row = 0;
};
// The current device's; MPLUS_CUDA_GEMV_L2_PREFETCH_MIB overrides l2_prefetch_bytes (0: off)
// and MPLUS_CUDA_GEMV_THREADS_PER_ROW threads_per_row (for the op table's sweeps).
cudaError_t GetGemvDevice(GemvDevice* device);

// Whether LaunchGemvBf16 takes these operands: 1 <= n <= kMaxGemvRows, k a multiple of 8, and
// x, w 16-byte aligned (k a multiple of 8 keeps every row aligned after the first).
bool GemvSupported(int64_t n, int64_t k, const void* x, const void* w);
// out = alpha * x · w^T (+ the LoRA terms), plus out when accumulate (out is not read
// otherwise), routed by `epilogue` (whose last end must be m). Operands as GemvSupported;
// `device.num_sms` sizes the grid.
cudaError_t LaunchGemvBf16(const float* x, const uint16_t* w, int64_t n, int64_t m, int64_t k,
                           float alpha, bool accumulate, const GemvEpilogue& epilogue,
                           const GemvDevice& device, cudaStream_t stream);

}  // namespace mplus::engine::cuda

#endif  // MPLUS_ENGINE_CUDA_GEMV_H_
