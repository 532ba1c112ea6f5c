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

// The same 8 accumulators and reduction order as Dot (multiply, then add: no FMA), so scores
// are bit-identical whichever path runs.
__attribute__((target("avx2"))) float DotAvx2(const float* a, const float* b, int64_t n) {
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i)));
  }
  alignas(32) float l[8];
  _mm256_store_ps(l, acc);
  float sum = ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

using DotFn = float (*)(const float*, const float*, int64_t);

DotFn BestDot() {
  static const DotFn dot = __builtin_cpu_supports("avx2") ? DotAvx2 : Dot;
  return dot;
}

// Scores keys [j_begin, j_end).
void ScoreRange(const float* queries, int64_t nq, const float* keys, int64_t j_begin, int64_t j_end,
                int64_t p, float* scores_out) {
  // Blocks of keys stay in cache while every query passes over them.
  constexpr int64_t kBlock = 64;
  const DotFn dot = BestDot();
  double sums[kBlock];
  for (int64_t j0 = j_begin; j0 < j_end; j0 += kBlock) {
    const int64_t j1 = std::min(j_end, j0 + kBlock);
    std::fill(sums, sums + (j1 - j0), 0.0);
    for (int64_t t = 0; t < nq; ++t) {
      const float* q = queries + t * p;
      for (int64_t j = j0; j < j1; ++j) {
        const double logit = dot(q, keys + j * p, p);
        sums[j - j0] += 1.0 / (1.0 + std::exp(-logit));
      }
    }
    for (int64_t j = j0; j < j1; ++j) {
      scores_out[j] = static_cast<float>(sums[j - j0] / static_cast<double>(nq));
    }
  }
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
  if (threads == 1) {
    ScoreRange(queries, nq, keys, 0, n, p, scores_out);
    return;
  }
  std::vector<std::thread> pool;
  const int64_t per = (n + threads - 1) / threads;
  for (int64_t t = 1; t < threads; ++t) {
    const int64_t b = std::min(n, t * per), e = std::min(n, (t + 1) * per);
    pool.emplace_back(ScoreRange, queries, nq, keys, b, e, p, scores_out);
  }
  ScoreRange(queries, nq, keys, 0, std::min(n, per), p, scores_out);
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
