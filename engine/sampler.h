// Next-token selection from logits: greedy or seeded sampling with the Hugging Face
// transformers processors (repetition penalty, temperature, top-k, top-p, min-p, in that order).
#ifndef MPLUS_ENGINE_SAMPLER_H_
#define MPLUS_ENGINE_SAMPLER_H_

#include <cstdint>
#include <random>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"

namespace mplus::engine {

struct SamplingOptions {
  int max_new_tokens = 256;         // >= 1; enforced by the caller's generation loop
  float temperature = 0.0f;         // 0: greedy (argmax, lowest id on ties)
  float top_p = 1.0f;               // nucleus mass; 0 or 1 disables
  int top_k = 0;                    // 0 disables
  float min_p = 0.0f;               // 0 disables
  float repetition_penalty = 1.0f;  // 0 or 1 disables
  uint64_t seed = 0;
};

// InvalidArgument naming the first bad field: max_new_tokens < 1, temperature negative or not
// finite, top_p or min_p outside [0, 1] (or NaN), top_k < 0, repetition_penalty negative or not
// finite.
absl::Status ValidateSamplingOptions(const SamplingOptions& options);

// Not thread-safe: one Sampler per generation. The same options (seed included), logits and
// history give the same tokens on every run and platform (the weights come from FastExp, whose
// bits do not depend on the CPU).
class Sampler {
 public:
  // `options` must pass ValidateSamplingOptions.
  explicit Sampler(const SamplingOptions& options);

  // Picks the next token from `logits` (non-empty, one per vocabulary id). `history` is the
  // prompt plus the tokens generated so far; the repetition penalty applies once to each
  // distinct id in it (also when greedy, as in transformers). NaN logits are never picked
  // (id 0 when all are NaN); when no logit is finite the result is the greedy one.
  int32_t Sample(absl::Span<const float> logits, absl::Span<const int32_t> history);

 private:
  // A uniform double in [0, 1) from the 53 high bits of one 64-bit draw.
  double NextUniform();

  struct Candidate {
    float score;  // logit after penalty and temperature
    int32_t id;
    float weight;  // FastExp(score - best score)
  };

  // The token ids a draw is among: all of them, or a list (in ascending order).
  struct AllIds {
    size_t count;
    size_t size() const { return count; }
    int32_t operator[](size_t k) const { return static_cast<int32_t>(k); }
  };
  struct IdList {
    const int32_t* ids;
    size_t count;
    size_t size() const { return count; }
    int32_t operator[](size_t k) const { return ids[k]; }
  };

  // Top-p (when set), then min-p and the draw, among `ids` (scaled_ and weights_ filled).
  template <typename Ids>
  int32_t SampleAmong(Ids ids, float max_score);
  // Min-p (when set) and a draw with probability proportional to weight among items 0..count-1
  // in their order: the first whose running weight exceeds a uniform fraction of the total.
  template <typename WeightAt, typename IdAt>
  int32_t DrawInOrder(size_t count, WeightAt weight_at, IdAt id_at);

  SamplingOptions options_;
  std::mt19937_64 rng_;         // fully specified by the C++ standard, so portable
  std::vector<float> scores_;   // logits after the repetition penalty
  std::vector<float> scaled_;   // scores divided by the temperature
  std::vector<float> weights_;  // FastExp(scaled - best scaled); 0 for NaN and -inf scores
  std::vector<Candidate> candidates_;
  std::vector<float> kth_scores_;  // top-k's selection scratch
  std::vector<int32_t> ids_;       // the tokens top-k keeps, or the +inf ones
  std::vector<int32_t> penalized_;
};

}  // namespace mplus::engine

#endif  // MPLUS_ENGINE_SAMPLER_H_
