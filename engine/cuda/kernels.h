// Launchers for the element-wise and row-wise CUDA kernels of the backend. Each enqueues on
// `stream` and returns the launch error (cudaGetLastError), so the caller can wrap it in a
// Status. Pointers are device pointers; shapes were validated by the caller. Compiled by nvcc
// (C++17) and included by host C++ code, so plain types only.
#ifndef MPLUS_ENGINE_CUDA_KERNELS_H_
#define MPLUS_ENGINE_CUDA_KERNELS_H_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "engine/dtype.h"

namespace mplus::engine::cuda {

// dst[i] = float(src[i]) for a float dtype (F32/BF16/F16/F8E4M3; NaNs keep their sign).
cudaError_t LaunchWidenToF32(const void* src, DType src_dtype, int64_t n, float* dst,
                             cudaStream_t stream);
// dst[i] = bf16(src[i]), bit for bit engine/dtype.h's FloatToBF16: round to nearest even (the
// rounding of torch's .to(bfloat16)), NaN stays NaN with its sign and top payload bits.
cudaError_t LaunchF32ToBF16(const float* src, int64_t n, uint16_t* dst, cudaStream_t stream);
// dst[i] = src[i] rounded to dst_dtype: BF16 as LaunchF32ToBF16, F8E4M3 bit for bit
// engine/dtype.h's FloatToF8E4M3 (nearest even, saturating at +-448); else cudaErrorInvalidValue.
cudaError_t LaunchNarrowF32(const float* src, int64_t n, DType dst_dtype, void* dst,
                            cudaStream_t stream);
// *index = the index of the largest non-NaN x[i], the lowest on ties, or 0 when every x[i] is
// NaN (engine/float_range.h's ArgmaxIgnoringNaN); one block.
cudaError_t LaunchArgmax(const float* x, int64_t n, int64_t* index, cudaStream_t stream);
// `dependent`: launch as a programmatic dependent of the kernel ahead (GemvDevice's
// programmatic_launch; engine/cuda/dependent_launch.cuh), hiding the launch behind it. The
// kernels that take it wait for the kernel ahead before reading anything.

// out[r, :] = w * x[r, :] / sqrt(mean(x[r, :]^2) + eps); out may alias x. `w_is_weight`: w is
// weight memory, which no kernel writes, so a dependent launch may read it before its wait.
cudaError_t LaunchRmsNorm(const float* x, const void* w, DType w_dtype, int64_t rows, int64_t d,
                          float eps, float* out, cudaStream_t stream, bool dependent,
                          bool w_is_weight);
// In-place HF rotate_half RoPE of x [rows, cols] with heads of head_dim; positions [rows] on
// the device, or null for consecutive positions first_position, first_position + 1, ...
cudaError_t LaunchRope(float* x, int64_t rows, int64_t cols, int64_t head_dim,
                       const int64_t* positions, int64_t first_position, const float* inv_freq,
                       cudaStream_t stream, bool dependent);
// Backend::StoreKeysValues in one pass: k, v float32 [rows, cols] (k only read); k_rows, v_rows
// [rows, cols] of cache_dtype (F32, BF16 or F8E4M3), not overlapping k / v except exactly (in
// place). Positions as LaunchRope. With rows_at_positions (positions given), k_rows / v_rows are
// whole caches and row r goes to their row positions[r] (a decode step's row, placed by the GPU).
// With q (float32 [rows, q_cols], q_cols a multiple of head_dim) also rotates q's rows in place
// at the same positions, as LaunchRope.
cudaError_t LaunchStoreKeysValues(const float* k, const float* v, int64_t rows, int64_t cols,
                                  int64_t head_dim, const int64_t* positions,
                                  int64_t first_position, const float* inv_freq, DType cache_dtype,
                                  void* k_rows, void* v_rows, cudaStream_t stream, bool dependent,
                                  bool rows_at_positions = false, float* q = nullptr,
                                  int64_t q_cols = 0);
// out = silu(gate) * up (out may alias either input).
cudaError_t LaunchSiluMul(const float* gate, const float* up, float* out, int64_t n,
                          cudaStream_t stream, bool dependent);
cudaError_t LaunchSilu(float* x, int64_t n, cudaStream_t stream);
cudaError_t LaunchAdd(const float* a, const float* b, float* out, int64_t n, cudaStream_t stream);
// x[r, :] += row for every r.
cudaError_t LaunchAddRow(float* x, int64_t rows, int64_t d, const void* row, DType row_dtype,
                         cudaStream_t stream);
// out[i, :] = table[ids[i], :] widened to float32; ids were range-checked on the host.
cudaError_t LaunchEmbedding(const void* table, DType table_dtype, int64_t d, const int32_t* ids,
                            int64_t n, float* out, cudaStream_t stream);
// out[i, :] = table[ids[i], :] bit for bit, out in the table's dtype (rows of d elements); ids
// were range-checked on the host.
cudaError_t LaunchGatherRows(const void* table, DType dtype, int64_t d, const int32_t* ids,
                             int64_t n, void* out, cudaStream_t stream);

}  // namespace mplus::engine::cuda

#endif  // MPLUS_ENGINE_CUDA_KERNELS_H_
