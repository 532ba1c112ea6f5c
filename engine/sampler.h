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

  // True when these options pick the logits' argmax and nothing else (greedy, no repetition
  // penalty): a device may pick the token itself (Model::DecodeGreedy).
  static bool PicksArgmax(const SamplingOptions& options) {
    return options.temperature == 0.0f &&
           (options.repetition_penalty == 0.0f || options.repetition_penalty == 1.0f);
  }

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

  // Brings penalized_ up to `history`: in a generation each call's history extends the last
  // one, so only its new tokens are looked at (any other history starts afresh).
  void TrackHistory(absl::Span<const int32_t> history, int32_t vocabulary);
  // Top-p (when set), then min-p and the draw, among `count` tokens: their scores and
  // weights, and their ids (nullptr: ids 0..count-1).
  int32_t SampleAmong(const float* scaled, const float* weights, size_t count, const int32_t* ids,
                      float max_score);
  // Min-p (when set) and a draw with probability proportional to weight among a list of items
  // in its order (ids as above): the first whose running mass (see Mass) exceeds a uniform
  // fraction of the whole.
  int32_t DrawInOrder(const float* weights, size_t count, const int32_t* ids);
  // The mass of a list of weights, summed in blocks of eight (block sums left in block_mass_).
  double Mass(const float* weights, size_t count);

  SamplingOptions options_;
  std::mt19937_64 rng_;         // fully specified by the C++ standard, so portable
  std::vector<float> scores_;   // logits after the repetition penalty
  std::vector<float> scaled_;   // scores divided by the temperature
  std::vector<float> weights_;  // FastExp(scaled - best scaled); 0 for NaN and -inf scores
  // The repetition penalty's distinct history ids, which ids they are, and the history so far.
  std::vector<int32_t> penalized_;
  std::vector<bool> seen_;
  std::vector<int32_t> history_;
  // Top-k: the k-th best score's selection, and the surviving ids with their scores and weights.
  std::vector<float> kth_scores_;
  std::vector<int32_t> ids_;
  std::vector<float> kept_scaled_, kept_weights_;
  // Top-p: the head's positions, candidates best first, and the kept prefix.
  std::vector<int32_t> positions_;
  std::vector<Candidate> candidates_;
  std::vector<float> prefix_weights_;
  std::vector<int32_t> prefix_ids_;
  // The draw: weights after min-p, and block sums.
  std::vector<float> drawn_weights_;
  std::vector<double> block_mass_;
};

}  // namespace mplus::engine

#endif  // MPLUS_ENGINE_SAMPLER_H_
