#include "memstore/retrieval_scorer.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <new>
#include <numeric>
#include <type_traits>
#include <vector>

#include "common/cpu_features.h"
#include "common/parallel_for.h"
#include "engine/cpu/gemm.h"
#include "engine/dot.h"
#include "engine/fast_exp.h"
#include "engine/float_range.h"

namespace mplus::memstore {
namespace {

using engine::Dot;

// A key element as float32 (bfloat16 widens exactly).
inline float KeyElement(float k) { return k; }
inline float KeyElement(uint16_t bf16) { return engine::BF16ToFloat(bf16); }

// Portable path: one dot product per (query, key) pair, sigmoid summed in double.
template <typename Key>
void ScoreRangeGeneric(const float* queries, int64_t nq, const Key* keys, int64_t j_begin,
                       int64_t j_end, int64_t p, float* scores_out) {
  // Blocks of keys, widened, stay in cache while every query passes over them.
  constexpr int64_t kBlock = 64;
  double sums[kBlock];
  std::vector<float> block(static_cast<size_t>(kBlock * p));
  for (int64_t j0 = j_begin; j0 < j_end; j0 += kBlock) {
    const int64_t j1 = std::min(j_end, j0 + kBlock);
    for (int64_t e = 0; e < (j1 - j0) * p; ++e) block[e] = KeyElement(keys[j0 * p + e]);
    std::fill(sums, sums + (j1 - j0), 0.0);
    for (int64_t t = 0; t < nq; ++t) {
      const float* q = queries + t * p;
      for (int64_t j = j0; j < j1; ++j) {
        const double logit = Dot(q, block.data() + (j - j0) * p, p);
        sums[j - j0] += 1.0 / (1.0 + std::exp(-logit));
      }
    }
    for (int64_t j = j0; j < j1; ++j) {
      scores_out[j] = static_cast<float>(sums[j - j0] / static_cast<double>(nq));
    }
  }
}

// 1 / (1 + exp(-x)) for 8 floats; huge |x| saturate to 0 or 1 without NaN (FastExp8 clamps).
MPLUS_TARGET_AVX2_FMA inline __m256 Sigmoid8(__m256 x) {
  const __m256 e = engine::FastExp8(_mm256_sub_ps(_mm256_setzero_ps(), x));
  return _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_add_ps(_mm256_set1_ps(1.0f), e));
}

// Adds sigmoid(logits) of kQ queries × 16 keys into sums[16] (double), where the 16 keys are
// packed transposed (packed[i * 16 + c] = key c's element i), so lanes are keys and no
// horizontal sums are needed: 2 loads and kQ broadcasts feed 2·kQ independent FMA chains.
template <int kQ>
MPLUS_TARGET_AVX2_FMA inline void SigmoidSumTile(const float* queries, int64_t p,
                                                 const float* packed, double* sums) {
  __m256 acc[kQ][2];
#pragma GCC unroll 6
  for (int a = 0; a < kQ; ++a) acc[a][0] = acc[a][1] = _mm256_setzero_ps();
  for (int64_t i = 0; i < p; ++i) {
    const __m256 k0 = _mm256_loadu_ps(packed + i * 16), k1 = _mm256_loadu_ps(packed + i * 16 + 8);
#pragma GCC unroll 6
    for (int a = 0; a < kQ; ++a) {
      const __m256 q = _mm256_broadcast_ss(queries + a * p + i);
      acc[a][0] = _mm256_fmadd_ps(q, k0, acc[a][0]);
      acc[a][1] = _mm256_fmadd_ps(q, k1, acc[a][1]);
    }
  }
#pragma GCC unroll 6
  for (int a = 0; a < kQ; ++a) {
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {
      const __m256 sig = Sigmoid8(acc[a][h]);
      double* out = sums + 8 * h;
      _mm256_storeu_pd(
          out, _mm256_add_pd(_mm256_loadu_pd(out), _mm256_cvtps_pd(_mm256_castps256_ps128(sig))));
      _mm256_storeu_pd(out + 4, _mm256_add_pd(_mm256_loadu_pd(out + 4),
                                              _mm256_cvtps_pd(_mm256_extractf128_ps(sig, 1))));
    }
  }
}

// AVX2 path: keys packed transposed in blocks of 64 (the CPU GEMM's panel layout),
// register-blocked logits (6 queries × 16 keys), vectorised sigmoid, sums in double.
template <typename Key>
MPLUS_TARGET_AVX2_FMA void ScoreRangeAvx2(const float* queries, int64_t nq, const Key* keys,
                                          int64_t j_begin, int64_t j_end, int64_t p,
                                          float* scores_out) {
  static_assert(engine::cpu::kPanelRows == 16, "SigmoidSumTile reads panels of 16 keys");
  constexpr int64_t kBlock = 64;  // keys per block: 64 KiB packed at p = 256, stays in L2
  constexpr engine::DType kKeyDType =
      std::is_same_v<Key, float> ? engine::DType::kF32 : engine::DType::kBF16;
  std::vector<float> packed(static_cast<size_t>(kBlock * p));
  alignas(32) double sums[kBlock];
  for (int64_t j0 = j_begin; j0 < j_end; j0 += kBlock) {
    const int64_t count = std::min(j_end, j0 + kBlock) - j0;
    const int64_t groups = (count + 15) / 16;
    // Missing keys of the last group are zero; their sums are ignored.
    engine::cpu::PackTransposedPanels(keys, kKeyDType, p, j0, count, p, packed.data());
    std::fill(sums, sums + kBlock, 0.0);
    for (int64_t g = 0; g < groups; ++g) {
      const float* panel = packed.data() + g * 16 * p;
      double* group_sums = sums + g * 16;
      int64_t t = 0;
      for (; t + 6 <= nq; t += 6) SigmoidSumTile<6>(queries + t * p, p, panel, group_sums);
      switch (nq - t) {
        case 5:
          SigmoidSumTile<5>(queries + t * p, p, panel, group_sums);
          break;
        case 4:
          SigmoidSumTile<4>(queries + t * p, p, panel, group_sums);
          break;
        case 3:
          SigmoidSumTile<3>(queries + t * p, p, panel, group_sums);
          break;
        case 2:
          SigmoidSumTile<2>(queries + t * p, p, panel, group_sums);
          break;
        case 1:
          SigmoidSumTile<1>(queries + t * p, p, panel, group_sums);
          break;
        default:
          break;
      }
    }
    for (int64_t j = 0; j < count; ++j) {
      scores_out[j0 + j] = static_cast<float>(sums[j] / static_cast<double>(nq));
    }
  }
}

template <typename Key>
using ScoreRangeFn = void (*)(const float*, int64_t, const Key*, int64_t, int64_t, int64_t, float*);

template <typename Key>
ScoreRangeFn<Key> BestScoreRange() {
  return HasAvx2Fma() ? ScoreRangeAvx2<Key> : ScoreRangeGeneric<Key>;
}

template <typename Key>
void ScoreAll(const float* queries, int64_t nq, const Key* keys, int64_t n, int64_t p,
              float* scores_out) {
  // Each key's score is computed the same way on any thread; large layers split across cores.
  constexpr int64_t kWorkPerThread = 1 << 24;  // multiply-adds; below this a thread costs more
  const ScoreRangeFn<Key> score_range = BestScoreRange<Key>();
  ParallelFor(n, std::max<int64_t>(1, kWorkPerThread / std::max<int64_t>(1, nq * p)),
              [&](int64_t begin, int64_t end) {
                score_range(queries, nq, keys, begin, end, p, scores_out);
              });
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

void MeanSigmoidScores(const float* queries, int64_t nq, const void* keys, engine::DType key_dtype,
                       int64_t n, int64_t p, float* scores_out) {
  if (key_dtype == engine::DType::kBF16) {
    ScoreAll(queries, nq, static_cast<const uint16_t*>(keys), n, p, scores_out);
  } else {
    ScoreAll(queries, nq, static_cast<const float*>(keys), n, p, scores_out);
  }
}

std::vector<int64_t> TopK(const float* scores, int64_t n, int64_t k) {
  if (k <= 0 || n <= 0) return {};
  std::vector<int64_t> idx;
  if (k >= n) {
    idx.resize(static_cast<size_t>(n));
    std::iota(idx.begin(), idx.end(), 0);
    return idx;
  }
  // Selecting among all n with nth_element mispredicts a branch per comparison. Instead the
  // scores are binned by value (higher scores in lower bins, ties in one bin): the bins before
  // the one holding the k-th best are taken whole, and only that bin is selected from.
  constexpr int kBins = 4096;
  const auto [lo, hi] = engine::RangeIgnoringNaN(scores, n);  // of the non-NaN scores
  const float range = hi - lo;
  const float scale = range > 0 && std::isfinite(range) ? kBins / range : 0.0f;
  // NaN scores (and everything when all are NaN) go in a last bin of their own; without a
  // finite positive range (one value, or infinities) every number shares bin 0.
  const auto bin_of = [&](float s) {
    if (std::isnan(s)) return kBins;
    if (scale == 0.0f) return 0;
    return std::min(kBins - 1, static_cast<int>((hi - s) * scale));
  };
  std::vector<uint16_t> bins(static_cast<size_t>(n));
  std::vector<int64_t> count(kBins + 1, 0);
  for (int64_t j = 0; j < n; ++j) ++count[bins[j] = static_cast<uint16_t>(bin_of(scores[j]))];
  int boundary = 0;
  for (int64_t before = 0; before + count[boundary] < k; ++boundary) before += count[boundary];
  std::vector<int64_t> tied;  // the boundary bin's members
  idx.reserve(static_cast<size_t>(k));
  for (int64_t j = 0; j < n; ++j) {
    const int b = bins[j];
    if (b < boundary) {
      idx.push_back(j);
    } else if (b == boundary) {
      tied.push_back(j);
    }
  }
  const auto rest = static_cast<std::ptrdiff_t>(k - static_cast<int64_t>(idx.size()));
  std::nth_element(tied.begin(), tied.begin() + (rest - 1), tied.end(), Better{scores});
  idx.insert(idx.end(), tied.begin(), tied.begin() + rest);
  std::sort(idx.begin(), idx.end());
  return idx;
}

}  // namespace mplus::memstore
