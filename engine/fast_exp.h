// exp(x) in float32 by range reduction, x = n·ln2 + r with |r| <= ln2/2, and a degree-6
// polynomial for e^r (Cephes' expf coefficients; relative error within ~2 ulp of the true
// value). One scalar and one AVX2 form that give the same bits for every input (the same
// operations, fused multiply-adds spelled out), so a result does not depend on which CPU path
// ran. The argument is first clamped to [-87, 87]: results stay normal and finite (below -87,
// e^-87 ≈ 1.6e-38 instead of a subnormal or 0) and NaN gives e^-87.
// Used by the retrieval scorer's sigmoid and the sampler's weights, where libm's one call per
// element was the largest cost.
#ifndef MPLUS_ENGINE_FAST_EXP_H_
#define MPLUS_ENGINE_FAST_EXP_H_

#include <immintrin.h>

#include <bit>
#include <cmath>
#include <cstdint>

#include "common/cpu_features.h"

namespace mplus::engine {

namespace fast_exp {
inline constexpr float kMaxArg = 87.0f;
inline constexpr float kLog2E = 1.44269504088896341f;
// ln2 split in two so that n·kLn2Hi is exact for the n that occur.
inline constexpr float kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
inline constexpr float kPoly[6] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f,
                                   4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f};
}  // namespace fast_exp

inline float FastExp(float x) {
  using namespace fast_exp;
  // The comparisons pick the bound for NaN, as the vector min/max do.
  x = x > -kMaxArg ? x : -kMaxArg;
  x = x < kMaxArg ? x : kMaxArg;
  const float n = std::nearbyint(x * kLog2E);
  float r = std::fma(-n, kLn2Hi, x);
  r = std::fma(-n, kLn2Lo, r);
  float poly = kPoly[0];
#pragma GCC unroll 5
  for (int i = 1; i < 6; ++i) poly = std::fma(poly, r, kPoly[i]);
  poly = std::fma(poly, r * r, r + 1.0f);
  return poly * std::bit_cast<float>((static_cast<int32_t>(n) + 127) << 23);
}

MPLUS_TARGET_AVX2_FMA inline __m256 FastExp8(__m256 x) {
  using namespace fast_exp;
  // max/min_ps(x, bound) return the bound when x is NaN.
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-kMaxArg)), _mm256_set1_ps(kMaxArg));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(kLog2E)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Hi), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Lo), r);
  __m256 poly = _mm256_set1_ps(kPoly[0]);
#pragma GCC unroll 5
  for (int i = 1; i < 6; ++i) poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(kPoly[i]));
  poly = _mm256_fmadd_ps(poly, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i scale =
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(poly, _mm256_castsi256_ps(scale));
}

}  // namespace mplus::engine

#endif  // MPLUS_ENGINE_FAST_EXP_H_
