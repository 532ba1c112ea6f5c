// The smallest and largest non-NaN values of a float array, shared by the sampler's argmax and
// the retrieval top-k: eight lanes in SSE registers (a single running maximum waits on every
// compare; a plain lane array makes GCC keep the lanes in memory). And the argmax itself.
#ifndef MPLUS_ENGINE_FLOAT_RANGE_H_
#define MPLUS_ENGINE_FLOAT_RANGE_H_

#include <xmmintrin.h>

#include <algorithm>
#include <bit>
#include <cstdint>
#include <limits>

namespace mplus::engine {

struct FloatRange {
  float lo, hi;  // +inf and -inf when there is no non-NaN value
};

inline FloatRange RangeIgnoringNaN(const float* x, int64_t n) {
  // min/max_ps(v, bound) return `bound` when v is NaN, so NaN never replaces a bound.
  __m128 lo0 = _mm_set1_ps(std::numeric_limits<float>::infinity()), lo1 = lo0;
  __m128 hi0 = _mm_set1_ps(-std::numeric_limits<float>::infinity()), hi1 = hi0;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128 a = _mm_loadu_ps(x + i), b = _mm_loadu_ps(x + i + 4);
    lo0 = _mm_min_ps(a, lo0);
    lo1 = _mm_min_ps(b, lo1);
    hi0 = _mm_max_ps(a, hi0);
    hi1 = _mm_max_ps(b, hi1);
  }
  alignas(16) float lo[8], hi[8];
  _mm_store_ps(lo, lo0);
  _mm_store_ps(lo + 4, lo1);
  _mm_store_ps(hi, hi0);
  _mm_store_ps(hi + 4, hi1);
  FloatRange r{*std::min_element(lo, lo + 8), *std::max_element(hi, hi + 8)};
  for (; i < n; ++i) {
    r.lo = x[i] < r.lo ? x[i] : r.lo;
    r.hi = x[i] > r.hi ? x[i] : r.hi;
  }
  return r;
}

// The index of the largest non-NaN value, the lowest on ties; 0 when every value is NaN (the
// sampler's greedy choice). Two passes: the maximum, then its first occurrence, eight compares a
// step (not a branch per value).
inline int64_t ArgmaxIgnoringNaN(const float* x, int64_t n) {
  const float best = RangeIgnoringNaN(x, n).hi;
  const __m128 b = _mm_set1_ps(best);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const int hits = _mm_movemask_ps(_mm_cmpeq_ps(_mm_loadu_ps(x + i), b)) |
                     _mm_movemask_ps(_mm_cmpeq_ps(_mm_loadu_ps(x + i + 4), b)) << 4;
    if (hits != 0) return i + std::countr_zero(static_cast<unsigned>(hits));
  }
  for (; i < n; ++i) {
    if (x[i] == best) return i;
  }
  return 0;  // every value NaN
}

}  // namespace mplus::engine

#endif  // MPLUS_ENGINE_FLOAT_RANGE_H_
