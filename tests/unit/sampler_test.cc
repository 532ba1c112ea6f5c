#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <random>
#include <vector>

#include "engine/fast_exp.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace mplus::engine {
namespace {

SamplingOptions Sampling(float temperature, uint64_t seed = 0) {
  SamplingOptions o;
  o.temperature = temperature;
  o.seed = seed;
  return o;
}

// Draw counts per id over `draws` samples.
std::vector<int> Histogram(const SamplingOptions& o, const std::vector<float>& logits,
                           int draws = 20000) {
  Sampler sampler(o);
  std::vector<int> counts(logits.size());
  for (int i = 0; i < draws; ++i) ++counts[sampler.Sample(logits, {})];
  return counts;
}

TEST(SamplerTest, GreedyPicksLowestIdOnTies) {
  Sampler sampler(Sampling(0));
  EXPECT_EQ(sampler.Sample({1.0f, 3.0f, 2.0f, 3.0f}, {}), 1);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(sampler.Sample({nan, -1.0f, nan, 0.5f}, {}), 3);
  EXPECT_EQ(sampler.Sample({nan, nan}, {}), 0);
}

TEST(SamplerTest, TopKOneEqualsGreedy) {
  SamplingOptions o = Sampling(1.5f, 42);
  o.top_k = 1;
  Sampler sampler(o);
  const std::vector<float> logits = {0.1f, 2.0f, 1.9f, -3.0f};
  for (int i = 0; i < 100; ++i) EXPECT_EQ(sampler.Sample(logits, {}), 1);
}

TEST(SamplerTest, SeedsAreReproducible) {
  std::vector<float> logits(1000);
  for (size_t i = 0; i < logits.size(); ++i) logits[i] = std::sin(i * 0.37f) * 3;
  SamplingOptions o = Sampling(1.0f, 1234);
  o.top_p = 0.9f;
  o.top_k = 500;
  o.min_p = 0.01f;
  const auto run = [&](const SamplingOptions& opts) {
    Sampler s(opts);
    std::vector<int32_t> out;
    for (int i = 0; i < 64; ++i) out.push_back(s.Sample(logits, out));
    return out;
  };
  EXPECT_EQ(run(o), run(o));
  SamplingOptions other = o;
  other.seed = 1235;
  EXPECT_NE(run(o), run(other));
}

TEST(SamplerTest, DistributionMatchesSoftmax) {
  const std::vector<float> logits = {0.0f, std::log(2.0f), std::log(7.0f)};  // 1:2:7
  const auto counts = Histogram(Sampling(1.0f, 7), logits);
  EXPECT_NEAR(counts[0] / 20000.0, 0.1, 0.01);
  EXPECT_NEAR(counts[1] / 20000.0, 0.2, 0.015);
  EXPECT_NEAR(counts[2] / 20000.0, 0.7, 0.015);
  // Temperature 2 flattens to sqrt weights 1 : 1.41 : 2.65.
  const auto flat = Histogram(Sampling(2.0f, 7), logits);
  EXPECT_NEAR(flat[0] / 20000.0, 1 / (1 + std::sqrt(2.0) + std::sqrt(7.0)), 0.015);
}

TEST(SamplerTest, TopPKeepsSmallestPrefixReachingMass) {
  // Probabilities 0.5, 0.3, 0.15, 0.05.
  const std::vector<float> logits = {std::log(0.15f), std::log(0.5f), std::log(0.05f),
                                     std::log(0.3f)};
  SamplingOptions o = Sampling(1.0f, 3);
  o.top_p = 0.75f;  // 0.5 + 0.3 reaches it: ids 1 and 3
  auto counts = Histogram(o, logits);
  EXPECT_EQ(counts[0] + counts[2], 0);
  EXPECT_NEAR(counts[1] / 20000.0, 0.5 / 0.8, 0.015);
  o.top_p = 0.85f;  // needs the third token too
  counts = Histogram(o, logits);
  EXPECT_GT(counts[0], 0);
  EXPECT_EQ(counts[2], 0);
  o.top_p = 0.1f;  // at least one token
  counts = Histogram(o, logits, 100);
  EXPECT_EQ(counts[1], 100);
}

TEST(SamplerTest, TopKKeepsTies) {
  SamplingOptions o = Sampling(1.0f, 5);
  o.top_k = 2;
  const auto counts = Histogram(o, {1.0f, 2.0f, 1.0f, 0.0f}, 3000);
  EXPECT_GT(counts[0], 0);
  EXPECT_GT(counts[2], 0);
  EXPECT_EQ(counts[3], 0);
}

TEST(SamplerTest, MinPDropsUnlikelyTokens) {
  SamplingOptions o = Sampling(1.0f, 9);
  o.min_p = 0.3f;  // relative probabilities 1, 0.5, 0.2
  const auto counts = Histogram(o, {0.0f, std::log(0.5f), std::log(0.2f)}, 3000);
  EXPECT_GT(counts[1], 0);
  EXPECT_EQ(counts[2], 0);
}

TEST(SamplerTest, RepetitionPenaltyDividesPositiveAndMultipliesNegative) {
  SamplingOptions o = Sampling(0);
  o.repetition_penalty = 2.0f;
  Sampler sampler(o);
  // Token 0: 3 -> 1.5 loses to token 1's 2. Applied once even if repeated in the history.
  EXPECT_EQ(sampler.Sample({3.0f, 2.0f}, {0, 0, 0}), 1);
  EXPECT_EQ(sampler.Sample({4.5f, 2.0f}, {0, 0}), 0);  // 2.25 > 2
  // Negative: -1 -> -2 loses to -1.5; out-of-range history ids are ignored.
  EXPECT_EQ(sampler.Sample({-1.0f, -1.5f}, {0, 7, -3}), 1);
  // Penalty 0 and 1 disable it.
  o.repetition_penalty = 0.0f;
  EXPECT_EQ(Sampler(o).Sample({3.0f, 2.0f}, {0}), 0);
}

TEST(SamplerTest, PicksArgmaxOnlyForGreedyWithoutPenalty) {
  SamplingOptions o = Sampling(0);
  EXPECT_TRUE(Sampler::PicksArgmax(o));
  o.repetition_penalty = 0.0f;  // disabled too
  EXPECT_TRUE(Sampler::PicksArgmax(o));
  o.repetition_penalty = 1.2f;
  EXPECT_FALSE(Sampler::PicksArgmax(o));
  EXPECT_FALSE(Sampler::PicksArgmax(Sampling(0.5f)));
}

TEST(SamplerTest, RepetitionPenaltyFollowsAGrowingHistory) {
  // A generation passes its history grown by one token a call; the penalised ids must be those
  // of a fresh sampler given the whole history.
  std::mt19937 gen(4);
  std::normal_distribution<float> normal(0.f, 3.f);
  std::vector<float> logits(300);
  for (float& x : logits) x = normal(gen);
  SamplingOptions o = Sampling(0);
  o.repetition_penalty = 1.8f;
  Sampler growing(o);
  std::vector<int32_t> history = {5, 9, 5};
  for (int step = 0; step < 120; ++step) {
    const int32_t token = growing.Sample(logits, history);
    ASSERT_EQ(token, Sampler(o).Sample(logits, history)) << "step " << step;
    history.push_back(token);
    if (step == 60) history = {token};  // a history that does not extend the last one
  }
}

// The sampler's selections without sorting the vocabulary (thresholded heads for top-p and
// top-k, a two-pass argmax) against the definitions with full sorts: the same draws, bit for bit.
// The sampler's rule for the mass of a list of weights: blocks of eight positions, each summed
// in double as ((w0 + w4) + (w2 + w6)) + ((w1 + w5) + (w3 + w7)) (zero-padded), blocks in order.
struct Item {
  int32_t id;
  float weight;
};
std::vector<double> BlockMasses(const std::vector<Item>& items) {
  std::vector<double> blocks;
  for (size_t b = 0; b < items.size(); b += 8) {
    double w[8] = {};
    for (size_t j = 0; j < 8 && b + j < items.size(); ++j) w[j] = items[b + j].weight;
    blocks.push_back(((w[0] + w[4]) + (w[2] + w[6])) + ((w[1] + w[5]) + (w[3] + w[7])));
  }
  return blocks;
}
double Mass(const std::vector<Item>& items) {
  double total = 0;
  for (double m : BlockMasses(items)) total += m;
  return total;
}

// The first item whose running mass exceeds u: its block by the running block sums, then the
// item by a running sum inside the block (its last positive item if that rounds short).
int32_t DrawByBlocks(const std::vector<Item>& items, double u01) {
  const std::vector<double> blocks = BlockMasses(items);
  const double u = u01 * Mass(items);
  double before = 0;
  for (size_t b = 0; b < blocks.size(); ++b) {
    const double after = before + blocks[b];
    if (u < after) {
      double cumulative = before;
      int32_t last = -1;
      for (size_t k = 8 * b; k < std::min(items.size(), 8 * b + 8); ++k) {
        if (items[k].weight == 0) continue;
        cumulative += items[k].weight;
        last = items[k].id;
        if (u < cumulative) return last;
      }
      return last;
    }
    before = after;
  }
  for (size_t k = items.size(); k-- > 0;) {
    if (items[k].weight > 0) return items[k].id;
  }
  return -1;
}

// The sampler's documented behaviour by full sorts: transformers' processors (top-k, top-p,
// min-p) over the candidates, then a draw over the list the sampler walks (the vocabulary with
// non-candidates weighing 0, top-k's survivors in id order, or top-p's best-first prefix).
int32_t ReferenceSample(const SamplingOptions& o, const std::vector<float>& logits,
                        std::mt19937_64& rng) {
  const auto argmax = [&] {
    int32_t best = -1;
    for (size_t i = 0; i < logits.size(); ++i) {
      if (std::isnan(logits[i])) continue;
      if (best < 0 || logits[i] > logits[best]) best = static_cast<int32_t>(i);
    }
    return best < 0 ? 0 : best;
  };
  if (o.temperature == 0) return argmax();
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<float> scaled(logits.size());
  float max_score = -inf;
  for (size_t i = 0; i < logits.size(); ++i) {
    scaled[i] = logits[i] / o.temperature;
    if (!std::isnan(scaled[i])) max_score = std::max(max_score, scaled[i]);
  }
  if (max_score == -inf) return argmax();
  const auto uniform = [&] { return static_cast<double>(rng() >> 11) * 0x1.0p-53; };
  if (max_score == inf) {
    std::vector<int32_t> infinite;
    for (size_t i = 0; i < scaled.size(); ++i) {
      if (scaled[i] == inf) infinite.push_back(static_cast<int32_t>(i));
    }
    return infinite[static_cast<size_t>(uniform() * infinite.size())];
  }
  const auto candidate = [&](float s) { return !std::isnan(s) && s != -inf; };
  std::vector<Item> items;
  for (size_t i = 0; i < scaled.size(); ++i) {
    items.push_back(
        {static_cast<int32_t>(i), candidate(scaled[i]) ? FastExp(scaled[i] - max_score) : 0.0f});
  }
  std::vector<float> sorted;
  for (float s : scaled) {
    if (candidate(s)) sorted.push_back(s);
  }
  std::sort(sorted.begin(), sorted.end(), std::greater<float>());
  if (o.top_k > 0 && static_cast<size_t>(o.top_k) < sorted.size()) {
    const float kth = sorted[o.top_k - 1];
    std::erase_if(items,
                  [&](const Item& x) { return !candidate(scaled[x.id]) || scaled[x.id] < kth; });
  }
  if (o.top_p > 0 && o.top_p < 1) {
    const double target = static_cast<double>(o.top_p) * Mass(items);
    std::erase_if(items, [](const Item& x) { return x.weight == 0; });
    std::sort(items.begin(), items.end(), [&](const Item& a, const Item& b) {
      return scaled[a.id] > scaled[b.id] || (scaled[a.id] == scaled[b.id] && a.id < b.id);
    });
    double mass = 0;
    size_t keep = 0;
    while (keep < items.size() && mass < target) mass += items[keep++].weight;
    items.resize(std::max<size_t>(keep, 1));
  }
  if (o.min_p > 0) {
    for (Item& x : items) x.weight = x.weight < o.min_p ? 0 : x.weight;
  }
  return DrawByBlocks(items, uniform());
}

TEST(SamplerTest, TopKDropsEverythingBelowTheKthBest) {
  // Exactly k tokens near the best: the others must go although none of them is near.
  std::vector<float> logits(64, 0.0f);
  for (int i : {3, 17, 40, 41}) logits[i] = 5.0f;
  SamplingOptions o = Sampling(1.0f, 7);
  o.top_k = 4;
  Sampler sampler(o);
  for (int draw = 0; draw < 2000; ++draw) {
    const int32_t id = sampler.Sample(logits, {});
    ASSERT_TRUE(id == 3 || id == 17 || id == 40 || id == 41) << id;
  }
}

TEST(SamplerTest, MatchesFullSortReference) {
  std::mt19937 gen(11);
  const float inf = std::numeric_limits<float>::infinity();
  int cases = 0;
  for (float spread : {0.05f, 1.0f, 4.0f, 40.0f, 1e30f, 1e38f}) {
    for (bool ties_and_specials : {false, true}) {
      // Logits spread like a model's (and wider and narrower, up to magnitudes whose scaling by
      // the temperature overflows to infinities); some quantised into ties, with NaN and -inf
      // entries, which are never candidates.
      std::normal_distribution<float> normal(0.f, spread);
      std::vector<float> logits(2003);  // not a multiple of the 8 lanes: a scalar tail too
      for (float& x : logits) x = normal(gen);
      if (ties_and_specials) {
        for (float& x : logits) x = std::round(x * 4) / 4;
        for (size_t i = 0; i < logits.size(); i += 97) logits[i] = NAN;
        for (size_t i = 5; i < logits.size(); i += 89) logits[i] = -inf;
        logits[2001] = NAN;
        logits[2002] = -inf;
      }
      for (float temperature : {0.0f, 0.3f, 1.0f, 1.7f}) {
        for (float top_p : {1.0f, 0.2f, 0.9f, 0.999f}) {
          for (int top_k : {0, 1, 40, 1990}) {
            for (float min_p : {0.0f, 0.05f}) {
              SamplingOptions o = Sampling(temperature, 100 + cases++);
              o.top_p = top_p;
              o.top_k = top_k;
              o.min_p = min_p;
              Sampler sampler(o);
              std::mt19937_64 rng(o.seed);
              for (int draw = 0; draw < 4; ++draw) {
                ASSERT_EQ(sampler.Sample(logits, {}), ReferenceSample(o, logits, rng))
                    << "spread " << spread << " ties " << ties_and_specials << " temperature "
                    << temperature << " top_p " << top_p << " top_k " << top_k << " min_p " << min_p
                    << " draw " << draw;
              }
            }
          }
        }
      }
    }
  }
}

TEST(SamplerTest, Validation) {
  SamplingOptions o;
  EXPECT_TRUE(ValidateSamplingOptions(o).ok());
  const auto message = [](SamplingOptions bad) {
    return std::string(ValidateSamplingOptions(bad).message());
  };
  using ::testing::HasSubstr;
  SamplingOptions bad = o;
  bad.temperature = -1;
  EXPECT_THAT(message(bad), HasSubstr("temperature"));
  bad.temperature = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THAT(message(bad), HasSubstr("temperature"));
  bad = o;
  bad.top_p = 1.5f;
  EXPECT_THAT(message(bad), HasSubstr("top_p"));
  bad.top_p = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THAT(message(bad), HasSubstr("top_p"));
  bad = o;
  bad.top_k = -1;
  EXPECT_THAT(message(bad), HasSubstr("top_k"));
  bad = o;
  bad.min_p = -0.1f;
  EXPECT_THAT(message(bad), HasSubstr("min_p"));
  bad = o;
  bad.repetition_penalty = -1;
  EXPECT_THAT(message(bad), HasSubstr("repetition_penalty"));
  bad = o;
  bad.max_new_tokens = 0;
  EXPECT_THAT(message(bad), HasSubstr("max_new_tokens"));
  EXPECT_EQ(ValidateSamplingOptions(bad).code(), absl::StatusCode::kInvalidArgument);
}

TEST(SamplerTest, LargeVocabularyIsFast) {
  std::vector<float> logits(128256);
  for (size_t i = 0; i < logits.size(); ++i) logits[i] = std::sin(i * 0.001f) * 8;
  SamplingOptions o = Sampling(0.8f, 1);
  o.top_p = 0.95f;
  o.top_k = 0;
  o.repetition_penalty = 1.1f;
  Sampler sampler(o);
  std::vector<int32_t> history(4000, 5);
  for (int i = 0; i < 50; ++i) {
    const int32_t id = sampler.Sample(logits, history);
    ASSERT_GE(id, 0);
    ASSERT_LT(id, 128256);
  }
}

}  // namespace
}  // namespace mplus::engine
