// Single-threaded float32 GEMM kernels for the CPU backend: AVX2+FMA(+F16C) register-tiled
// kernels chosen at run time, with a portable fallback. Callers split work across threads.
#ifndef MPLUS_ENGINE_CPU_GEMM_H_
#define MPLUS_ENGINE_CPU_GEMM_H_

#include <cstdint>

#include "engine/dtype.h"

namespace mplus::engine::cpu {

// out[i * ldo + j] = alpha * sum_c x[i * ldx + c] * w[j * ldw + c] (+ out[...] when accumulate)
// for i < n, j < m, c < k. w is float32, bfloat16 or float16, widened to float32 in registers.
// Blocked for cache and tiled 6 x 16 in registers: meant for n >= kGemvMaxRows.
void GemmNT(int64_t n, int64_t m, int64_t k, const float* x, int64_t ldx, const void* w, DType wt,
            int64_t ldw, float* out, int64_t ldo, float alpha, bool accumulate);

// The same product for few x rows (decode): streams each weight row once, 4 rows at a time.
void GemvNT(int64_t n, int64_t m, int64_t k, const float* x, int64_t ldx, const void* w, DType wt,
            int64_t ldw, float* out, int64_t ldo, float alpha, bool accumulate);

// Up to this many x rows GemvNT beats packing the weights for GemmNT.
inline constexpr int64_t kGemvMaxRows = 4;

// Rows per panel of GemmNT's packed weights (two AVX2 vectors of one element each).
inline constexpr int64_t kPanelRows = 16;

// Widens rows [j0, j0 + nc) x elements [0, k) of a row-major w (ldw elements per row) into
// GemmNT's packed layout, panels of kPanelRows rows stored element-major:
// buf[p * k * kPanelRows + e * kPanelRows + r] = w[(j0 + p * kPanelRows + r) * ldw + e], zero
// past row j0 + nc. buf holds ceil(nc / kPanelRows) * k * kPanelRows floats. With AVX2 full
// panels go through 8 x 8 register transposes.
void PackTransposedPanels(const void* w, DType wt, int64_t ldw, int64_t j0, int64_t nc, int64_t k,
                          float* buf);

// out[i * ldo + c] = alpha * sum_j p[i * ldp + j] * v[j * ldv + c] (+ out when accumulate),
// i < n, c < m, j < k (attention's probabilities times values); v float32, bfloat16 or float16,
// widened in registers (so a bf16 v gives bitwise the result of its float32 widening).
void GemmNN(int64_t n, int64_t m, int64_t k, const float* p, int64_t ldp, const void* v, DType vt,
            int64_t ldv, float* out, int64_t ldo, float alpha, bool accumulate);

}  // namespace mplus::engine::cpu

#endif  // MPLUS_ENGINE_CPU_GEMM_H_
