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

// How many more of the best candidates top-p sorts when its first head falls short.
constexpr size_t kTopPFirstSort = 1024;

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

// Candidates scoring at least a threshold: how many, and their total weight (in lane order,
// for choosing a threshold only).
struct AtLeast {
  int64_t count = 0;
  double mass = 0;
};

MPLUS_TARGET_AVX2_FMA size_t CountAtLeastAvx2(const float* scaled, const float* weights, size_t n,
                                              float threshold, AtLeast& out) {
  const __m256 t = _mm256_set1_ps(threshold);
  // Two blocks of eight a step: four independent double accumulators and the counts as
  // subtracted all-ones masks.
  __m256d mass[4] = {_mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd(),
                     _mm256_setzero_pd()};
  __m256i minus_count = _mm256_setzero_si256();
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {
      const __m256 in = _mm256_cmp_ps(_mm256_loadu_ps(scaled + i + 8 * h), t, _CMP_GE_OQ);
      const __m256 w = _mm256_and_ps(in, _mm256_loadu_ps(weights + i + 8 * h));
      minus_count = _mm256_add_epi32(minus_count, _mm256_castps_si256(in));
      mass[2 * h] = _mm256_add_pd(mass[2 * h], _mm256_cvtps_pd(_mm256_castps256_ps128(w)));
      mass[2 * h + 1] =
          _mm256_add_pd(mass[2 * h + 1], _mm256_cvtps_pd(_mm256_extractf128_ps(w, 1)));
    }
  }
  alignas(32) double lanes[4];
  _mm256_store_pd(lanes,
                  _mm256_add_pd(_mm256_add_pd(mass[0], mass[1]), _mm256_add_pd(mass[2], mass[3])));
  alignas(32) int32_t counts[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(counts), minus_count);
  for (int32_t c : counts) out.count -= c;
  out.mass += (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
  return i;
}

// NaN and -inf scores are never counted (the threshold is finite).
AtLeast CountAtLeast(const float* scaled, const float* weights, size_t n, float threshold) {
  AtLeast out;
  for (size_t i = HasAvx2Fma() ? CountAtLeastAvx2(scaled, weights, n, threshold, out) : 0; i < n;
       ++i) {
    if (scaled[i] >= threshold) {
      ++out.count;
      out.mass += weights[i];
    }
  }
  return out;
}

// A threshold max_score - d at which `enough` holds for the candidates scoring at least it:
// the first d of 1, 2, 4, ... (relative to max_score's size) that is enough, then narrowed by
// `bisections` halvings of the step before it; the lowest float (every candidate) if none.
// A few vectorised passes instead of binning or selecting over all tokens.
template <typename Enough>
float ChooseThreshold(const float* scaled, const float* weights, size_t n, float max_score,
                      int bisections, Enough enough) {
  constexpr float kLowest = std::numeric_limits<float>::lowest();
  const auto enough_at = [&](float d) {
    const float threshold = std::max(max_score - d, kLowest);
    return threshold == kLowest || enough(CountAtLeast(scaled, weights, n, threshold));
  };
  const float unit = std::max(1.0f, std::fabs(max_score) * 0x1p-20f);
  float d = unit;
  while (!enough_at(d)) d *= 2;
  if (d > unit) {  // not enough at d / 2
    float short_d = d / 2;
    for (int step = 0; step < bisections; ++step) {
      const float mid = (short_d + d) / 2;
      (enough_at(mid) ? d : short_d) = mid;
    }
  }
  return std::max(max_score - d, kLowest);
}

// Positions i (ascending) whose score is at least `threshold` (false for NaN).
MPLUS_TARGET_AVX2_FMA size_t CollectAtLeastAvx2(const float* scaled, size_t n, float threshold,
                                                std::vector<int32_t>& positions) {
  const __m256 t = _mm256_set1_ps(threshold);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    auto hits = static_cast<unsigned>(
        _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(scaled + i), t, _CMP_GE_OQ)));
    for (; hits != 0; hits &= hits - 1) {
      positions.push_back(static_cast<int32_t>(i + std::countr_zero(hits)));
    }
  }
  return i;
}

void CollectAtLeast(const float* scaled, size_t n, float threshold,
                    std::vector<int32_t>& positions) {
  positions.clear();
  for (size_t i = HasAvx2Fma() ? CollectAtLeastAvx2(scaled, n, threshold, positions) : 0; i < n;
       ++i) {
    if (scaled[i] >= threshold) positions.push_back(static_cast<int32_t>(i));
  }
}

// The mass of a list of weights: blocks of eight positions, each summed in double as
// ((w0 + w4) + (w2 + w6)) + ((w1 + w5) + (w3 + w7)) (a short block padded with zeros), and
// the blocks in order. Independent blocks keep the adds off one long dependency chain; both
// forms below give the same bits.
double BlockSum(const float* w) {
  const double p0 = double{w[0]} + w[4], p1 = double{w[1]} + w[5], p2 = double{w[2]} + w[6],
               p3 = double{w[3]} + w[7];
  return (p0 + p2) + (p1 + p3);
}

MPLUS_TARGET_AVX2_FMA size_t BlockSumsAvx2(const float* w, size_t n, double* sums) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 x = _mm256_loadu_ps(w + i);
    const __m256d p = _mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(x)),
                                    _mm256_cvtps_pd(_mm256_extractf128_ps(x, 1)));
    const __m128d q = _mm_add_pd(_mm256_castpd256_pd128(p), _mm256_extractf128_pd(p, 1));
    sums[i / 8] = _mm_cvtsd_f64(_mm_add_sd(q, _mm_unpackhi_pd(q, q)));
  }
  return i;
}

// sums[b] = BlockSum of w[8b, 8b + 8); returns the number of blocks.
size_t BlockSums(const float* w, size_t n, double* sums) {
  size_t i = HasAvx2Fma() ? BlockSumsAvx2(w, n, sums) : 0;
  for (; i + 8 <= n; i += 8) sums[i / 8] = BlockSum(w + i);
  if (i < n) {
    float last[8] = {};
    std::copy(w + i, w + n, last);
    sums[i / 8] = BlockSum(last);
  }
  return (n + 7) / 8;
}

// The id of item k of a list whose ids are `ids`, or k itself when there is no list.
int32_t IdAt(const int32_t* ids, size_t k) {
  return ids != nullptr ? ids[k] : static_cast<int32_t>(k);
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
    TrackHistory(history, n);
    for (int32_t id : penalized_) {
      float& s = scores_[id];
      s = s < 0 ? s * penalty : s / penalty;
    }
  }
  if (options_.temperature == 0.0f) return static_cast<int32_t>(ArgmaxIgnoringNaN(scores, n));

  // Every token's score and weight, vectorised. A weight is 0 exactly for the tokens that
  // are never candidates (NaN or -inf scores) and at least e^-87 for the others.
  scaled_.resize(logits.size());
  Divide(scores, logits.size(), options_.temperature, scaled_.data());
  const float max_score = RangeIgnoringNaN(scaled_.data(), n).hi;
  constexpr float kInf = std::numeric_limits<float>::infinity();
  if (max_score == -kInf)
    return static_cast<int32_t>(ArgmaxIgnoringNaN(scores, n));  // no candidates
  if (max_score == kInf) {
    // +inf logits: only they can be drawn, uniformly (top-k keeps them all).
    CollectAtLeast(scaled_.data(), logits.size(), kInf, ids_);
    return ids_[static_cast<size_t>(NextUniform() * ids_.size())];
  }
  weights_.resize(logits.size());
  Weigh(scaled_.data(), logits.size(), max_score, weights_.data());

  // Top-k keeps every token tied with the k-th best score, as transformers does. The k-th best
  // is selected among the few candidates above a threshold that at least k reach.
  const auto top_k = static_cast<int64_t>(options_.top_k);
  constexpr float kLowest = std::numeric_limits<float>::lowest();  // every candidate is above
  if (top_k > 0 &&
      top_k < CountAtLeast(scaled_.data(), weights_.data(), logits.size(), kLowest).count) {
    const float threshold = ChooseThreshold(
        scaled_.data(), weights_.data(), logits.size(), max_score,
        /*bisections=*/0, [&](const AtLeast& above) { return above.count >= top_k; });
    CollectAtLeast(scaled_.data(), logits.size(), threshold, ids_);
    kth_scores_.clear();
    for (int32_t id : ids_) kth_scores_.push_back(scaled_[id]);
    std::nth_element(kth_scores_.begin(), kth_scores_.begin() + (top_k - 1), kth_scores_.end(),
                     std::greater<float>());
    const float kth = kth_scores_[top_k - 1];
    std::erase_if(ids_, [&](int32_t id) { return scaled_[id] < kth; });  // id order
    // The survivors' scores and weights side by side, as for the whole vocabulary.
    kept_scaled_.clear();
    kept_weights_.clear();
    for (int32_t id : ids_) {
      kept_scaled_.push_back(scaled_[id]);
      kept_weights_.push_back(weights_[id]);
    }
    return SampleAmong(kept_scaled_.data(), kept_weights_.data(), ids_.size(), ids_.data(),
                       max_score);
  }
  return SampleAmong(scaled_.data(), weights_.data(), logits.size(), nullptr, max_score);
}

void Sampler::TrackHistory(absl::Span<const int32_t> history, int32_t vocabulary) {
  const bool extends = seen_.size() == static_cast<size_t>(vocabulary) &&
                       history.size() >= history_.size() &&
                       std::equal(history_.begin(), history_.end(), history.begin());
  if (!extends) {
    seen_.assign(static_cast<size_t>(vocabulary), false);
    penalized_.clear();
    history_.clear();
  }
  for (size_t i = history_.size(); i < history.size(); ++i) {
    const int32_t id = history[i];
    if (id >= 0 && id < vocabulary && !seen_[id]) {
      seen_[id] = true;
      penalized_.push_back(id);
    }
  }
  history_.insert(history_.end(), history.begin() + history_.size(), history.end());
}

int32_t Sampler::SampleAmong(const float* scaled, const float* weights, size_t count,
                             const int32_t* ids, float max_score) {
  const auto id_of = [&](size_t k) { return IdAt(ids, k); };
  // Top-p: the smallest best-first prefix whose mass reaches top_p (at least one token).
  const float top_p = options_.top_p;
  if (!(top_p > 0.0f && top_p < 1.0f)) return DrawInOrder(weights, count, ids);
  const double target = static_cast<double>(top_p) * Mass(weights, count);
  // The first head: the candidates above a threshold whose mass (summed in another order, so
  // with a margin) reaches the target; sorting a head keeps peaked distributions cheap, and
  // narrowing the threshold pays (a head grows fast with d).
  const float threshold =
      ChooseThreshold(scaled, weights, count, max_score, /*bisections=*/4,
                      [&](const AtLeast& above) { return above.mass >= target * (1 + 1e-6); });
  // Candidates best first once sorted (by score, then id), so that the draw does not depend on
  // the standard library's sorting and selection algorithms.
  const auto better = [](const Candidate& a, const Candidate& b) {
    return a.score > b.score || (a.score == b.score && a.id < b.id);
  };
  candidates_.clear();
  CollectAtLeast(scaled, count, threshold, positions_);
  for (int32_t k : positions_) candidates_.push_back({scaled[k], id_of(k), weights[k]});
  std::sort(candidates_.begin(), candidates_.end(), better);
  double mass = 0;
  size_t keep = 0, sorted = candidates_.size();
  bool tail_added = false;
  while (mass < target) {
    if (keep == sorted) {  // the sums rounded differently: sort further heads
      if (!tail_added) {
        for (size_t k = 0; k < count; ++k) {
          if (weights[k] > 0 && scaled[k] < threshold) {
            candidates_.push_back({scaled[k], id_of(k), weights[k]});
          }
        }
      }
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
  keep = std::max<size_t>(keep, 1);
  prefix_weights_.resize(keep);
  prefix_ids_.resize(keep);
  for (size_t j = 0; j < keep; ++j) {
    prefix_weights_[j] = candidates_[j].weight;
    prefix_ids_[j] = candidates_[j].id;
  }
  return DrawInOrder(prefix_weights_.data(), keep, prefix_ids_.data());
}

double Sampler::Mass(const float* weights, size_t count) {
  block_mass_.resize((count + 7) / 8);
  const size_t blocks = BlockSums(weights, count, block_mass_.data());
  double total = 0;
  for (size_t b = 0; b < blocks; ++b) total += block_mass_[b];
  return total;
}

int32_t Sampler::DrawInOrder(const float* weights, size_t count, const int32_t* ids) {
  // Min-p drops tokens less likely than min_p times the most likely one (weight 1).
  const float min_p = options_.min_p;
  if (min_p > 0) {
    drawn_weights_.resize(count);
    for (size_t k = 0; k < count; ++k) drawn_weights_[k] = weights[k] < min_p ? 0 : weights[k];
    weights = drawn_weights_.data();
  }
  // The first item whose running mass exceeds u: the block first (by the block sums Mass
  // added), then the item inside it.
  const double u = NextUniform() * Mass(weights, count);
  const auto id_of = [&](size_t k) { return IdAt(ids, k); };
  double before = 0;
  for (size_t b = 0; b < block_mass_.size(); ++b) {
    const double after = before + block_mass_[b];
    if (u < after) {
      const size_t end = std::min(count, 8 * b + 8);
      double cumulative = before;
      size_t last = 8 * b;
      for (size_t k = 8 * b; k < end; ++k) {
        if (weights[k] == 0) continue;
        cumulative += weights[k];
        last = k;
        if (u < cumulative) return id_of(k);
      }
      return id_of(last);  // the items' running sum rounded below the block's
    }
    before = after;
  }
  // u rounded up to the total: the last item that can be drawn.
  size_t k = count;
  while (k > 1 && weights[k - 1] == 0) --k;
  return id_of(k - 1);
}

}  // namespace mplus::engine
