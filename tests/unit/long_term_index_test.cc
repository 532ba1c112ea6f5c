// LongTermMemory bookkeeping (MPLUS-DETAILS.md: ages, pending/merge cadence, eviction with the
// "> K_ltm" rule, retrieval order and wrap-around) and the retrieval scorer.
#include "memstore/long_term_index.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "engine/drop_slots.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "memstore/retrieval_scorer.h"

namespace mplus::memstore {
namespace {

using ::testing::ElementsAre;

LongTermParams Params(int64_t k, int64_t k_ltm, int64_t freq, double decay, double rf0) {
  LongTermParams p;
  p.tokens_per_inject = k;
  p.retrieved_tokens = k_ltm;
  p.key_dim = 1;
  p.update_ltm_frequency = freq;
  p.decay_frequency = decay;
  p.initial_recall_frequency = rf0;
  return p;
}

// `n` dropped tokens with ids first_id.., key = id (1-D keys), STM ages as given.
DroppedTokens Drop(uint64_t first_id, std::vector<int64_t> ages) {
  DroppedTokens d;
  for (size_t i = 0; i < ages.size(); ++i) {
    d.token_ids.push_back(first_id + i);
    d.keys.push_back(static_cast<float>(first_id + i));
  }
  d.stm_ages = std::move(ages);
  return d;
}

// The layer's keys widened to float32, in storage order.
std::vector<float> Keys(const LongTermLayer& layer) {
  std::vector<float> keys(static_cast<size_t>(layer.size() * layer.key_dim()));
  engine::DTypeToFloats(layer.keys(), layer.key_dtype(), static_cast<int64_t>(keys.size()),
                        keys.data());
  return keys;
}

std::vector<uint64_t> Ids(const LongTermLayer& layer) {
  std::vector<uint64_t> ids;
  for (const LongTermEntry& e : layer.entries()) ids.push_back(e.token_id);
  return ids;
}

TEST(LongTermMemoryTest, AgesByKThenAppendsPendingWithStmAges) {
  LongTermMemory ltm(Params(2, 1, 3, 1, 2), 1);
  ltm.layer(0).AddMerged(100, {0.5f}, 7, 5.0);
  ltm.ApplyInject({Drop(1, {0, 1})});
  const auto& e = ltm.layer(0).entries();
  ASSERT_EQ(e.size(), 3u);
  EXPECT_EQ(e[0].age, 9);  // aged by K = 2
  EXPECT_EQ(e[1].age, 0);  // dropped with their STM ages, not aged this inject
  EXPECT_EQ(e[2].age, 1);
  EXPECT_EQ(ltm.layer(0).merged_count(), 1);
  ltm.ApplyInject({Drop(3, {1, 1})});
  EXPECT_EQ(e[1].age, 2);  // pending entries age too
  EXPECT_EQ(e[3].age, 1);
  EXPECT_EQ(ltm.update_step(), 4);
}

TEST(LongTermMemoryTest, MergesEveryUpdateFrequencyInjectsIncludingTheCurrentDrops) {
  LongTermMemory ltm(Params(1, 1, 2, 0.5, 10), 1);
  ltm.layer(0).AddMerged(100, {0.f}, 0, 10);
  ltm.ApplyInject({Drop(1, {0})});
  EXPECT_EQ(ltm.layer(0).merged_count(), 1);
  ltm.ApplyInject({Drop(2, {0})});
  EXPECT_EQ(ltm.layer(0).merged_count(), 3);
  EXPECT_EQ(ltm.update_step(), 0);
  // Every merged entry decayed once, the new ones included.
  for (const LongTermEntry& e : ltm.layer(0).entries()) EXPECT_DOUBLE_EQ(e.recall_frequency, 9.5);
}

TEST(LongTermMemoryTest, EvictsAtOrBelowThresholdOnlyWhenMoreThanKltmRemain) {
  // K = 2, K_ltm = 2, merge every inject, rf0 = 2, decay 1.
  LongTermMemory ltm(Params(2, 2, 1, 1, 2), 1);
  auto rf = [&](int i) { return ltm.layer(0).entries()[i].recall_frequency; };
  // 1, 2 would keep rf 1, but 2 kept is not more than K_ltm: the decay is undone.
  EXPECT_TRUE(ltm.ApplyInject({Drop(1, {0, 1})})[0].empty());
  EXPECT_DOUBLE_EQ(rf(0), 2);
  // 4 kept > 2: decay applies, nothing at or below 0.01 yet.
  EXPECT_TRUE(ltm.ApplyInject({Drop(3, {0, 1})})[0].empty());
  EXPECT_DOUBLE_EQ(rf(0), 1);
  EXPECT_DOUBLE_EQ(rf(3), 1);
  // 1..4 would reach 0 and only 5, 6 remain: not more than K_ltm, undone again.
  EXPECT_TRUE(ltm.ApplyInject({Drop(5, {0, 0})})[0].empty());
  EXPECT_THAT(Ids(ltm.layer(0)), ElementsAre(1, 2, 3, 4, 5, 6));
  EXPECT_DOUBLE_EQ(rf(0), 1);
  EXPECT_DOUBLE_EQ(rf(4), 2);
  // Now 5..8 survive (4 > 2): 1..4 are evicted, storage order and keys preserved.
  EXPECT_THAT(ltm.ApplyInject({Drop(7, {0, 0})})[0], ElementsAre(1, 2, 3, 4));
  EXPECT_THAT(Ids(ltm.layer(0)), ElementsAre(5, 6, 7, 8));
  EXPECT_EQ(ltm.layer(0).merged_count(), 4);
  EXPECT_THAT(Keys(ltm.layer(0)), ElementsAre(5.f, 6.f, 7.f, 8.f));
  EXPECT_DOUBLE_EQ(rf(0), 1);
}

// bfloat16 checkpoints keep bfloat16 keys: rounded to nearest even as stored, two bytes each,
// and eviction's compaction moves whole keys.
TEST(LongTermMemoryTest, Bf16KeysAreRoundedOnceAndCompactedWhole) {
  engine::ModelConfig config;
  config.dtype = engine::DType::kBF16;
  EXPECT_EQ(LongTermParamsFor(config).key_dtype, engine::DType::kBF16);
  config.dtype = engine::DType::kF16;
  EXPECT_EQ(LongTermParamsFor(config).key_dtype, engine::DType::kF32);

  LongTermParams params = Params(2, 1, 1, 1, 1.5);
  params.key_dim = 2;
  params.key_dtype = engine::DType::kBF16;
  LongTermMemory ltm(params, 1);
  // 1 + 2^-8 is a tie between bf16 neighbours 1 and 1 + 2^-7: even wins (1).
  const float tie = 1.0f + 1.0f / 256, above = 1.0f + 3.0f / 512;
  ltm.layer(0).AddMerged(1, {tie, 3.0f}, 0, 1.0);  // rf 1.0: evicted by the first merge
  EXPECT_THAT(Keys(ltm.layer(0)), ElementsAre(1.0f, 3.0f));
  DroppedTokens d;
  d.token_ids = {2, 3};
  d.stm_ages = {0, 0};
  d.keys = {above, -2.0f, 0.1f, 5.0f};
  ltm.ApplyInject({d});  // merges (frequency 1); 2 entries survive > K_ltm 1: 1 is evicted
  EXPECT_THAT(Ids(ltm.layer(0)), ElementsAre(2, 3));
  EXPECT_EQ(ltm.layer(0).keys_bytes(), 2 * 2 * sizeof(uint16_t));
  EXPECT_THAT(
      Keys(ltm.layer(0)),
      ElementsAre(1.0f + 1.0f / 128, -2.0f, engine::BF16ToFloat(engine::FloatToBF16(0.1f)), 5.0f));
  EXPECT_NE(engine::BF16ToFloat(engine::FloatToBF16(0.1f)), 0.1f);
}

TEST(LongTermMemoryTest, WrapAroundRepeatsLastMergedEntriesAndIgnoresPending) {
  LongTermMemory ltm(Params(1, 8, 100, 1, 1), 1);
  for (uint64_t i = 0; i < 6; ++i) ltm.layer(0).AddMerged(i, {0.f}, 100 - i, 1);
  ltm.ApplyInject({Drop(50, {0})});  // one pending entry, never chosen by wrap-around
  const float query = 1.f;
  // 4,5,0,1,2,3,4,5 ordered by age, oldest first (copies of one entry adjacent).
  EXPECT_THAT(ltm.Select(0, &query, 1), ElementsAre(0, 1, 2, 3, 4, 4, 5, 5));
}

TEST(LongTermMemoryTest, SelectsTopKThenOrdersOldestFirstLaterStorageFirstOnTies) {
  LongTermMemory ltm(Params(1, 3, 100, 1, 1), 1);
  // Keys give scores increasing with the key value for a positive query.
  ltm.layer(0).AddMerged(0, {-5.f}, 10, 1);  // lowest score: not chosen
  ltm.layer(0).AddMerged(1, {1.f}, 3, 1);
  ltm.layer(0).AddMerged(2, {2.f}, 7, 1);
  ltm.layer(0).AddMerged(3, {3.f}, 3, 1);
  const float query = 1.f;
  // Chosen 1, 2, 3; age 7 first, then the tie at age 3 with the later entry (3) first.
  EXPECT_THAT(ltm.Select(0, &query, 1), ElementsAre(2, 3, 1));
}

TEST(LongTermMemoryTest, PendingEntriesCompeteWithMergedOnesWhenEnoughAreMerged) {
  LongTermMemory ltm(Params(1, 2, 100, 1, 1), 1);
  ltm.layer(0).AddMerged(10, {-3.f}, 0, 1);
  ltm.layer(0).AddMerged(11, {4.f}, 0, 1);
  ltm.ApplyInject({Drop(5, {0})});  // key 5: the best score; ages: merged 1, pending 0
  const float query = 1.f;
  EXPECT_THAT(ltm.Select(0, &query, 1), ElementsAre(1, 2));
}

// Shapes that reach every path of the vectorised scorer: partial 16-key groups and 64-key
// blocks, query tiles of 6 and their remainders, key dims below, at and past whole 8-dim chunks.
TEST(RetrievalScorerTest, MeanSigmoidMatchesDirectFormula) {
  struct Shape {
    int64_t nq, n, p;
  };
  for (const Shape& shape : {Shape{3, 70, 5}, Shape{8, 150, 21}, Shape{13, 33, 256}}) {
    SCOPED_TRACE(testing::Message() << "nq " << shape.nq << ", n " << shape.n << ", p " << shape.p);
    const int64_t nq = shape.nq, n = shape.n, p = shape.p;
    std::vector<float> q(nq * p), k(n * p), scores(n);
    // Dot products of a few units: sigmoids away from saturation.
    const double scale = 2.0 / std::sqrt(static_cast<double>(p));
    for (size_t i = 0; i < q.size(); ++i) q[i] = static_cast<float>(scale * std::sin(0.7 * i));
    for (size_t i = 0; i < k.size(); ++i) k[i] = std::cos(1.3 * i);
    MeanSigmoidScores(q.data(), nq, k.data(), engine::DType::kF32, n, p, scores.data());
    for (int64_t j = 0; j < n; ++j) {
      double want = 0;
      for (int64_t t = 0; t < nq; ++t) {
        double dot = 0;
        for (int64_t c = 0; c < p; ++c) dot += double{q[t * p + c]} * k[j * p + c];
        want += 1 / (1 + std::exp(-dot));
      }
      ASSERT_NEAR(scores[j], want / nq, 1e-6) << "key " << j;
    }
    // bfloat16 keys score exactly as their float32 values do.
    std::vector<uint16_t> k_bf16(k.size());
    engine::FloatsToDType(k.data(), n * p, engine::DType::kBF16, k_bf16.data());
    std::vector<float> k_rounded(k.size()), from_bf16(n), from_rounded(n);
    engine::DTypeToFloats(k_bf16.data(), engine::DType::kBF16, n * p, k_rounded.data());
    MeanSigmoidScores(q.data(), nq, k_bf16.data(), engine::DType::kBF16, n, p, from_bf16.data());
    MeanSigmoidScores(q.data(), nq, k_rounded.data(), engine::DType::kF32, n, p,
                      from_rounded.data());
    EXPECT_EQ(from_bf16, from_rounded);
  }
}

TEST(RetrievalScorerTest, TopKReturnsAscendingIndicesLowerIndexWinsTies) {
  const std::vector<float> s = {0.1f, 0.9f, 0.5f, 0.9f, 0.5f, NAN, 0.7f};
  EXPECT_THAT(TopK(s.data(), 7, 3), ElementsAre(1, 3, 6));
  EXPECT_THAT(TopK(s.data(), 7, 4), ElementsAre(1, 2, 3, 6));
  EXPECT_THAT(TopK(s.data(), 7, 0), ElementsAre());
  EXPECT_EQ(TopK(s.data(), 7, 10).size(), 7u);
}

// TopK selects inside value bins; the definition is a full sort by (score descending, NaN
// last, lower index first). Score sets: clustered like mean sigmoids, heavy ties, NaNs,
// infinities, all equal, all NaN.
TEST(RetrievalScorerTest, TopKMatchesFullSortReference) {
  std::mt19937 gen(5);
  std::normal_distribution<float> normal(0.5f, 0.01f);
  const float inf = std::numeric_limits<float>::infinity();
  for (int shape = 0; shape < 6; ++shape) {
    std::vector<float> s(3000);
    for (float& x : s) x = normal(gen);
    if (shape == 1) {
      for (float& x : s) x = std::round(x * 400) / 400;  // a few dozen distinct values
    }
    if (shape == 2) {
      for (size_t i = 0; i < s.size(); i += 7) s[i] = NAN;
    }
    if (shape == 3) {
      s[10] = inf;
      s[20] = -inf;
      s[30] = inf;
    }
    if (shape == 4) std::fill(s.begin(), s.end(), 0.25f);
    if (shape == 5) std::fill(s.begin(), s.end(), NAN);
    std::vector<int64_t> order(s.size());
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
      const bool na = std::isnan(s[a]), nb = std::isnan(s[b]);
      if (na != nb) return nb;
      if (!na && s[a] != s[b]) return s[a] > s[b];
      return a < b;
    });
    for (int64_t k : {1, 2, 17, 400, 2570, 2999}) {
      std::vector<int64_t> want(order.begin(), order.begin() + k);
      std::sort(want.begin(), want.end());
      EXPECT_EQ(TopK(s.data(), static_cast<int64_t>(s.size()), k), want)
          << "shape " << shape << ", k " << k;
    }
  }
}

TEST(DropSlotsTest, DistinctSortedDeterministicAndSeedDependent) {
  const auto a = engine::ChooseDropSlots(42, 3, 4, 100, 10);
  ASSERT_EQ(a.size(), 4u);
  for (const std::vector<int32_t>& layer : a) {
    ASSERT_EQ(layer.size(), 10u);
    for (size_t i = 1; i < layer.size(); ++i) EXPECT_LT(layer[i - 1], layer[i]);
    EXPECT_GE(layer.front(), 0);
    EXPECT_LT(layer.back(), 100);
  }
  EXPECT_EQ(a, engine::ChooseDropSlots(42, 3, 4, 100, 10));
  EXPECT_NE(a, engine::ChooseDropSlots(43, 3, 4, 100, 10));
  EXPECT_NE(a, engine::ChooseDropSlots(42, 4, 4, 100, 10));
  // drop_memory_per_layer = false: layer 0's slots everywhere.
  const auto shared = engine::ChooseDropSlots(42, 3, 4, 100, 10, /*per_layer=*/false);
  for (const auto& layer : shared) EXPECT_EQ(layer, a[0]);
  EXPECT_NE(a[0], a[1]);
  // Pinned values: the generator is part of the contract (bitwise stable everywhere).
  EXPECT_EQ(engine::ChooseDropSlots(1, 0, 1, 8, 8)[0],
            (std::vector<int32_t>{0, 1, 2, 3, 4, 5, 6, 7}));
}

}  // namespace
}  // namespace mplus::memstore
