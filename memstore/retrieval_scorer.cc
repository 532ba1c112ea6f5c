#include "memstore/retrieval_scorer.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <thread>
#include <vector>

namespace mplus::memstore {
namespace {

inline float Dot(const float* a, const float* b, int64_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int j = 0; j < 8; ++j) acc[j] += a[i + j] * b[i + j];
  }
  float sum = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

using ScoreRangeFn = void (*)(const float*, int64_t, const float*, int64_t, int64_t, int64_t,
                              float*);

// Portable path: one dot product per (query, key) pair, sigmoid summed in double.
void ScoreRangeGeneric(const float* queries, int64_t nq, const float* keys, int64_t j_begin,
                       int64_t j_end, int64_t p, float* scores_out) {
  // Blocks of keys stay in cache while every query passes over them.
  constexpr int64_t kBlock = 64;
  double sums[kBlock];
  for (int64_t j0 = j_begin; j0 < j_end; j0 += kBlock) {
    const int64_t j1 = std::min(j_end, j0 + kBlock);
    std::fill(sums, sums + (j1 - j0), 0.0);
    for (int64_t t = 0; t < nq; ++t) {
      const float* q = queries + t * p;
      for (int64_t j = j0; j < j1; ++j) {
        const double logit = Dot(q, keys + j * p, p);
        sums[j - j0] += 1.0 / (1.0 + std::exp(-logit));
      }
    }
    for (int64_t j = j0; j < j1; ++j) {
      scores_out[j] = static_cast<float>(sums[j - j0] / static_cast<double>(nq));
    }
  }
}

#define MPLUS_AVX2 __attribute__((target("avx2,fma")))

MPLUS_AVX2 inline float HorizontalSum(__m256 v) {
  const __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  __m128 s = _mm_add_ps(lo, hi);
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// 1 / (1 + exp(-x)) for 8 floats: exp by range reduction x = n ln2 + r and a degree-6
// polynomial (relative error ~2 ulp), clamped so huge |x| saturate to 0 or 1 without NaN.
MPLUS_AVX2 inline __m256 Sigmoid8(__m256 x) {
  const __m256 z =
      _mm256_min_ps(_mm256_max_ps(_mm256_sub_ps(_mm256_setzero_ps(), x), _mm256_set1_ps(-87.0f)),
                    _mm256_set1_ps(87.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(z, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), z);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 poly = _mm256_set1_ps(1.9875691500e-4f);
  poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(1.3981999507e-3f));
  poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(8.3334519073e-3f));
  poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(4.1665795894e-2f));
  poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(1.6666665459e-1f));
  poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(5.0000001201e-1f));
  poly = _mm256_fmadd_ps(poly, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i exponent =
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  const __m256 e = _mm256_mul_ps(poly, _mm256_castsi256_ps(exponent));
  return _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_add_ps(_mm256_set1_ps(1.0f), e));
}

// Logits of kQ queries × kK keys at once: 12 independent FMA chains per step keep the FMA units
// busy while each loaded vector is reused 3 or 4 times (GEMM-style register blocking).
template <int kQ, int kK>
MPLUS_AVX2 inline void LogitTile(const float* queries, const float* keys, int64_t p,
                                 float* out /* [kQ][kK] */) {
  __m256 acc[kQ][kK];
#pragma GCC unroll 4
  for (int a = 0; a < kQ; ++a)
#pragma GCC unroll 4
    for (int b = 0; b < kK; ++b) acc[a][b] = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= p; i += 8) {
    __m256 k[kK];
#pragma GCC unroll 4
    for (int b = 0; b < kK; ++b) k[b] = _mm256_loadu_ps(keys + b * p + i);
#pragma GCC unroll 4
    for (int a = 0; a < kQ; ++a) {
      const __m256 q = _mm256_loadu_ps(queries + a * p + i);
#pragma GCC unroll 4
      for (int b = 0; b < kK; ++b) acc[a][b] = _mm256_fmadd_ps(q, k[b], acc[a][b]);
    }
  }
  for (int a = 0; a < kQ; ++a) {
    for (int b = 0; b < kK; ++b) {
      float sum = HorizontalSum(acc[a][b]);
      for (int64_t t = i; t < p; ++t) sum += queries[a * p + t] * keys[b * p + t];
      out[a * kK + b] = sum;
    }
  }
}

// AVX2 path: register-blocked logits, vectorised sigmoid, sums in double.
MPLUS_AVX2 void ScoreRangeAvx2(const float* queries, int64_t nq, const float* keys, int64_t j_begin,
                               int64_t j_end, int64_t p, float* scores_out) {
  constexpr int kQ = 3, kK = 4;
  constexpr int64_t kBlock = 64;  // keys per block (64 KiB at p = 256: stays in L2)
  alignas(32) float logits[kBlock * kQ];
  double sums[kBlock];
  for (int64_t j0 = j_begin; j0 < j_end; j0 += kBlock) {
    const int64_t count = std::min(j_end, j0 + kBlock) - j0;
    std::fill(sums, sums + count, 0.0);
    for (int64_t t0 = 0; t0 < nq; t0 += kQ) {
      const int64_t rows = std::min<int64_t>(kQ, nq - t0);
      // logits laid out [query row][key in block].
      for (int64_t j = 0; j < count; j += kK) {
        float tile[kQ * kK];
        const float* q = queries + t0 * p;
        const float* k = keys + (j0 + j) * p;
        if (rows == kQ && j + kK <= count) {
          LogitTile<kQ, kK>(q, k, p, tile);
        } else {
          for (int64_t a = 0; a < rows; ++a)
            for (int64_t b = 0; b < kK && j + b < count; ++b)
              LogitTile<1, 1>(q + a * p, k + b * p, p, &tile[a * kK + b]);
        }
        for (int64_t a = 0; a < rows; ++a)
          for (int64_t b = 0; b < kK && j + b < count; ++b)
            logits[a * kBlock + j + b] = tile[a * kK + b];
      }
      for (int64_t a = 0; a < rows; ++a) {
        const float* row = logits + a * kBlock;
        int64_t j = 0;
        for (; j + 8 <= count; j += 8) {
          alignas(32) float sig[8];
          _mm256_store_ps(sig, Sigmoid8(_mm256_loadu_ps(row + j)));
          for (int c = 0; c < 8; ++c) sums[j + c] += sig[c];
        }
        for (; j < count; ++j) sums[j] += 1.0 / (1.0 + std::exp(-static_cast<double>(row[j])));
      }
    }
    for (int64_t j = 0; j < count; ++j) {
      scores_out[j0 + j] = static_cast<float>(sums[j] / static_cast<double>(nq));
    }
  }
}

ScoreRangeFn BestScoreRange() {
  static const ScoreRangeFn fn = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")
                                     ? ScoreRangeAvx2
                                     : ScoreRangeGeneric;
  return fn;
}

// Ranks higher scores first, NaN last, then lower index first.
struct Better {
  const float* scores;
  bool operator()(int64_t a, int64_t b) const {
    const float sa = scores[a], sb = scores[b];
    const bool na = std::isnan(sa), nb = std::isnan(sb);
    if (na != nb) return nb;
    if (!na && sa != sb) return sa > sb;
    return a < b;
  }
};

}  // namespace

void MeanSigmoidScores(const float* queries, int64_t nq, const float* keys, int64_t n, int64_t p,
                       float* scores_out) {
  // Each key's score is computed the same way on any thread; large layers split across cores.
  constexpr double kWorkPerThread = 1 << 24;  // multiply-adds; below this a thread costs more
  const double work = static_cast<double>(nq) * static_cast<double>(n) * static_cast<double>(p);
  const int64_t threads =
      std::max<int64_t>(1, std::min<int64_t>(std::max(1u, std::thread::hardware_concurrency()),
                                             static_cast<int64_t>(work / kWorkPerThread)));
  const ScoreRangeFn score_range = BestScoreRange();
  if (threads == 1) {
    score_range(queries, nq, keys, 0, n, p, scores_out);
    return;
  }
  std::vector<std::thread> pool;
  const int64_t per = (n + threads - 1) / threads;
  for (int64_t t = 1; t < threads; ++t) {
    const int64_t b = std::min(n, t * per), e = std::min(n, (t + 1) * per);
    pool.emplace_back(score_range, queries, nq, keys, b, e, p, scores_out);
  }
  score_range(queries, nq, keys, 0, std::min(n, per), p, scores_out);
  for (std::thread& th : pool) th.join();
}

std::vector<int64_t> TopK(const float* scores, int64_t n, int64_t k) {
  if (k <= 0 || n <= 0) return {};
  std::vector<int64_t> idx(static_cast<size_t>(n));
  std::iota(idx.begin(), idx.end(), 0);
  if (k < n) {
    std::nth_element(idx.begin(), idx.begin() + k, idx.end(), Better{scores});
    idx.resize(static_cast<size_t>(k));
  }
  std::sort(idx.begin(), idx.end());
  return idx;
}

}  // namespace mplus::memstore
