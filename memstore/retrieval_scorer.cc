#include "memstore/retrieval_scorer.h"

#include <algorithm>
#include <cmath>
#include <numeric>

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
  // Blocks of keys stay in cache while every query passes over them.
  constexpr int64_t kBlock = 64;
  double sums[kBlock];
  for (int64_t j0 = 0; j0 < n; j0 += kBlock) {
    const int64_t j1 = std::min(n, j0 + kBlock);
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
