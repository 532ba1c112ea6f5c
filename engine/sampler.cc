#include "engine/sampler.h"

#include <immintrin.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <functional>
#include <limits>

#include "absl/strings/str_cat.h"
#include "common/cpu_features.h"
#include "engine/fast_exp.h"
#include "engine/float_range.h"

namespace mplus::engine {

namespace {

// How many more of the best candidates top-p sorts when the binned head falls short.
constexpr size_t kTopPFirstSort = 1024;

// Argmax over non-NaN scores, lowest id on ties; 0 when every score is NaN. Two passes: the
// maximum (vectorised), then its first occurrence.
int32_t Argmax(const float* scores, size_t n) {
  const float best = RangeIgnoringNaN(scores, static_cast<int64_t>(n)).hi;
  const __m128 b = _mm_set1_ps(best);
  size_t k = 0;
  for (; k + 8 <= n; k += 8) {  // eight compares a step, not a branch per score
    const int hits = _mm_movemask_ps(_mm_cmpeq_ps(_mm_loadu_ps(scores + k), b)) |
                     _mm_movemask_ps(_mm_cmpeq_ps(_mm_loadu_ps(scores + k + 4), b)) << 4;
    if (hits != 0) return static_cast<int32_t>(k + std::countr_zero(static_cast<unsigned>(hits)));
  }
  for (; k < n; ++k) {
    if (scores[k] == best) return static_cast<int32_t>(k);
  }
  return 0;  // every score NaN
}

// Candidates are binned by how far their score lies below the best one; top-p sorts only the
// bins that hold its mass (plus one for rounding) instead of selecting heads from the whole
// vocabulary.
constexpr int kScoreBins = 256;
constexpr float kBinsPerScoreUnit = 8;  // bins cover 32 units: weights down to e^-32

int ScoreBin(float score, float max_score) {
  const float below = (max_score - score) * kBinsPerScoreUnit;
  return below < static_cast<float>(kScoreBins - 1) ? static_cast<int>(below) : kScoreBins - 1;
}

// The AVX2 halves of Divide and Weigh: the leading multiple of eight elements; they return
// how many they did.
MPLUS_TARGET_AVX2_FMA size_t DivideAvx2(const float* scores, size_t n, float temperature,
                                        float* scaled) {
  const __m256 t = _mm256_set1_ps(temperature);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(scaled + i, _mm256_div_ps(_mm256_loadu_ps(scores + i), t));
  }
  return i;
}

MPLUS_TARGET_AVX2_FMA size_t WeighAvx2(const float* scaled, size_t n, float max_score,
                                       float* weights) {
  const __m256 m = _mm256_set1_ps(max_score);
  const __m256 minus_inf = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 s = _mm256_loadu_ps(scaled + i);
    const __m256 candidate = _mm256_cmp_ps(s, minus_inf, _CMP_GT_OQ);  // false for NaN
    _mm256_storeu_ps(weights + i, _mm256_and_ps(candidate, FastExp8(_mm256_sub_ps(s, m))));
  }
  return i;
}

// scaled[i] = scores[i] / temperature, as transformers divides (not a multiply by 1/t).
void Divide(const float* scores, size_t n, float temperature, float* scaled) {
  for (size_t i = HasAvx2Fma() ? DivideAvx2(scores, n, temperature, scaled) : 0; i < n; ++i) {
    scaled[i] = scores[i] / temperature;
  }
}

// weights[i] = e^(scaled[i] - max_score) (at least e^-87), and 0 for the NaN and -inf scores
// that are never drawn; vectorised: libm's expf per token was a third of plain sampling.
// FastExp8 and FastExp give the same bits, so CPUs without AVX2 draw the same tokens.
void Weigh(const float* scaled, size_t n, float max_score, float* weights) {
  for (size_t i = HasAvx2Fma() ? WeighAvx2(scaled, n, max_score, weights) : 0; i < n; ++i) {
    weights[i] =
        scaled[i] > -std::numeric_limits<float>::infinity() ? FastExp(scaled[i] - max_score) : 0;
  }
}

}  // namespace

absl::Status ValidateSamplingOptions(const SamplingOptions& o) {
  if (o.max_new_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_new_tokens must be at least 1, got ", o.max_new_tokens));
  }
  if (!std::isfinite(o.temperature) || o.temperature < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("temperature must be a finite number >= 0, got ", o.temperature));
  }
  if (!(o.top_p >= 0 && o.top_p <= 1)) {
    return absl::InvalidArgumentError(absl::StrCat("top_p must be in [0, 1], got ", o.top_p));
  }
  if (o.top_k < 0) {
    return absl::InvalidArgumentError(absl::StrCat("top_k must be >= 0, got ", o.top_k));
  }
  if (!(o.min_p >= 0 && o.min_p <= 1)) {
    return absl::InvalidArgumentError(absl::StrCat("min_p must be in [0, 1], got ", o.min_p));
  }
  if (!std::isfinite(o.repetition_penalty) || o.repetition_penalty < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "repetition_penalty must be a finite number >= 0, got ", o.repetition_penalty));
  }
  return absl::OkStatus();
}

Sampler::Sampler(const SamplingOptions& options) : options_(options), rng_(options.seed) {}

double Sampler::NextUniform() { return static_cast<double>(rng_() >> 11) * 0x1.0p-53; }

int32_t Sampler::Sample(absl::Span<const float> logits, absl::Span<const int32_t> history) {
  const auto n = static_cast<int32_t>(logits.size());
  // The logits as penalised; without a penalty, the caller's logits themselves (no copy). A
  // plain pointer: Span's checked operator[] keeps loops from vectorising.
  const float* scores = logits.data();
  const float penalty = options_.repetition_penalty;
  if (penalty != 0.0f && penalty != 1.0f) {
    scores_.assign(logits.begin(), logits.end());
    scores = scores_.data();
    penalized_.clear();
    for (int32_t id : history) {
      if (id >= 0 && id < n) penalized_.push_back(id);
    }
    std::sort(penalized_.begin(), penalized_.end());
    penalized_.erase(std::unique(penalized_.begin(), penalized_.end()), penalized_.end());
    for (int32_t id : penalized_) {
      float& s = scores_[id];
      s = s < 0 ? s * penalty : s / penalty;
    }
  }
  if (options_.temperature == 0.0f) return Argmax(scores, logits.size());

  // Every token's score and weight, vectorised. A weight is 0 exactly for the tokens that
  // are never candidates (NaN or -inf scores) and at least e^-87 for the others.
  scaled_.resize(logits.size());
  Divide(scores, logits.size(), options_.temperature, scaled_.data());
  const float max_score = RangeIgnoringNaN(scaled_.data(), n).hi;
  constexpr float kInf = std::numeric_limits<float>::infinity();
  if (max_score == -kInf) return Argmax(scores, logits.size());  // no candidates
  if (max_score == kInf) {
    // +inf logits: only they can be drawn, uniformly (top-k keeps them all).
    ids_.clear();
    for (int32_t i = 0; i < n; ++i) {
      if (scaled_[i] == kInf) ids_.push_back(i);
    }
    return ids_[static_cast<size_t>(NextUniform() * ids_.size())];
  }
  weights_.resize(logits.size());
  Weigh(scaled_.data(), logits.size(), max_score, weights_.data());

  // Top-k keeps every token tied with the k-th best score, as transformers does. The k-th best
  // is selected among the scores of the bins that hold the best k (a handful of candidates
  // usually; selecting over the whole vocabulary mispredicts a branch per comparison).
  const int top_k = options_.top_k;
  if (top_k > 0) {
    int bin_count[kScoreBins] = {};
    int candidates = 0;
    for (int32_t i = 0; i < n; ++i) {
      if (weights_[i] > 0) {
        ++bin_count[ScoreBin(scaled_[i], max_score)];
        ++candidates;
      }
    }
    if (top_k < candidates) {
      int last_bin = 0;
      for (int counted = bin_count[0]; counted < top_k;) counted += bin_count[++last_bin];
      kth_scores_.clear();
      for (int32_t i = 0; i < n; ++i) {
        if (weights_[i] > 0 && ScoreBin(scaled_[i], max_score) <= last_bin) {
          kth_scores_.push_back(scaled_[i]);
        }
      }
      std::nth_element(kth_scores_.begin(), kth_scores_.begin() + (top_k - 1), kth_scores_.end(),
                       std::greater<float>());
      const float kth = kth_scores_[top_k - 1];
      ids_.clear();
      for (int32_t i = 0; i < n; ++i) {
        if (weights_[i] > 0 && scaled_[i] >= kth) ids_.push_back(i);
      }
      return SampleAmong(IdList{ids_.data(), ids_.size()}, max_score);
    }
  }
  return SampleAmong(AllIds{logits.size()}, max_score);
}

template <typename Ids>
int32_t Sampler::SampleAmong(Ids ids, float max_score) {
  // Top-p: the smallest best-first prefix whose mass reaches top_p (at least one token).
  // Sorting a growing head first keeps peaked distributions cheap.
  const float top_p = options_.top_p;
  if (top_p > 0.0f && top_p < 1.0f) {
    double total = 0;  // in id order; non-candidates add 0
    for (size_t k = 0; k < ids.size(); ++k) total += weights_[ids[k]];
    const double target = static_cast<double>(top_p) * total;
    // The first head: every candidate in the bins that reach the target mass and one more. A
    // bin holds a range of scores, so the head is exactly a best-first prefix.
    double bin_mass[kScoreBins] = {};
    for (size_t k = 0; k < ids.size(); ++k) {
      const int32_t id = ids[k];
      bin_mass[ScoreBin(scaled_[id], max_score)] += weights_[id];
    }
    int last_bin = 0;
    for (double binned = bin_mass[0]; binned < target && last_bin < kScoreBins - 1;) {
      binned += bin_mass[++last_bin];
    }
    last_bin = std::min(last_bin + 1, kScoreBins - 1);
    // Candidates in id order, then best first once sorted, so that the draw does not depend on
    // the standard library's partitioning algorithms.
    const auto add_candidates = [&](bool head) {
      for (size_t k = 0; k < ids.size(); ++k) {
        const int32_t id = ids[k];
        if (weights_[id] > 0 && (ScoreBin(scaled_[id], max_score) <= last_bin) == head) {
          candidates_.push_back({scaled_[id], id, weights_[id]});
        }
      }
    };
    const auto better = [](const Candidate& a, const Candidate& b) {
      return a.score > b.score || (a.score == b.score && a.id < b.id);
    };
    candidates_.clear();
    add_candidates(true);
    std::sort(candidates_.begin(), candidates_.end(), better);
    double mass = 0;
    size_t keep = 0, sorted = candidates_.size();
    bool tail_added = false;
    while (mass < target) {
      if (keep == sorted) {  // the binned sums rounded differently: sort further heads
        if (!tail_added) add_candidates(false);
        tail_added = true;
        if (sorted == candidates_.size()) break;
        const auto first = candidates_.begin() + sorted;
        const size_t head =
            std::min(sorted + std::max(kTopPFirstSort, 8 * sorted), candidates_.size());
        std::nth_element(first, candidates_.begin() + (head - 1), candidates_.end(), better);
        std::sort(first, candidates_.begin() + head, better);
        sorted = head;
      }
      mass += candidates_[keep++].weight;
    }
    candidates_.resize(std::max<size_t>(keep, 1));
    return DrawInOrder(
        candidates_.size(), [&](size_t k) { return candidates_[k].weight; },
        [&](size_t k) { return candidates_[k].id; });
  }
  return DrawInOrder(
      ids.size(), [&](size_t k) { return weights_[ids[k]]; }, [&](size_t k) { return ids[k]; });
}

template <typename WeightAt, typename IdAt>
int32_t Sampler::DrawInOrder(size_t count, WeightAt weight_at, IdAt id_at) {
  // Min-p drops tokens less likely than min_p times the most likely one (weight 1).
  const double min_p = options_.min_p;
  const auto drawn = [&](float w) { return w > 0 && !(w < min_p); };
  double total = 0;
  for (size_t k = 0; k < count; ++k) {
    if (const float w = weight_at(k); drawn(w)) total += w;
  }
  const double u = NextUniform() * total;
  double cumulative = 0;
  int32_t last = 0;
  for (size_t k = 0; k < count; ++k) {
    const float w = weight_at(k);
    if (!drawn(w)) continue;
    cumulative += w;
    last = id_at(k);
    if (u < cumulative) return last;
  }
  return last;  // u rounded up to the total
}

}  // namespace mplus::engine
