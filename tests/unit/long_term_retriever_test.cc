// LongTermRetriever: resident mode scores on keys mirrored by the backend (refreshed by copying
// only rows past the layer's unchanged prefix) and must choose exactly what host scoring
// chooses; offload mode scores on the host, or for long prompts on a copy of the layer's keys
// on the backend; backends that keep no keys score on the host.
#include "memstore/long_term_retriever.h"

#include <random>
#include <vector>

#include "engine/cpu/cpu_backend.h"
#include "gtest/gtest.h"
#include "tests/unit/key_keeping_backend.h"

namespace mplus::memstore {
namespace {

using engine::DType;
using engine::Tensor;
using testing::KeyKeepingBackend;

constexpr int64_t kKeyDim = 8, kK = 4, kKltm = 6;

LongTermMemory MakeMemory(DType key_dtype = DType::kF32) {
  LongTermParams p;
  p.key_dtype = key_dtype;
  p.tokens_per_inject = kK;
  p.retrieved_tokens = kKltm;
  p.key_dim = kKeyDim;
  p.update_ltm_frequency = 2;
  p.decay_frequency = 1;
  p.initial_recall_frequency = 2;  // entries live two merges: evictions start early
  return LongTermMemory(p, 2);
}

// One inject's drops on both layers with random keys.
std::vector<DroppedTokens> RandomDrops(std::mt19937& rng, uint64_t* next_id) {
  std::normal_distribution<float> normal;
  std::vector<DroppedTokens> drops(2);
  for (DroppedTokens& d : drops) {
    for (int64_t i = 0; i < kK; ++i) {
      d.token_ids.push_back((*next_id)++);
      d.stm_ages.push_back(i);
      for (int64_t j = 0; j < kKeyDim; ++j) d.keys.push_back(normal(rng));
    }
  }
  return drops;
}

absl::StatusOr<Tensor> DeviceQueries(engine::Backend& backend, const std::vector<float>& q) {
  return testing::DeviceQueries(backend, q, kKeyDim);
}

class ResidentMirror : public ::testing::TestWithParam<DType> {};

TEST_P(ResidentMirror, ChoosesWhatHostScoringChooses) {
  KeyKeepingBackend backend;
  LongTermMemory ltm = MakeMemory(GetParam());
  LongTermRetriever retriever(LongTermMode::kResident, 0);
  std::mt19937 rng(5);
  std::normal_distribution<float> normal;
  uint64_t next_id = 1;
  int64_t evictions = 0, rows_scored = 0;
  for (int inject = 0; inject < 40; ++inject) {
    for (const auto& ids : ltm.ApplyInject(RandomDrops(rng, &next_id))) {
      evictions += static_cast<int64_t>(ids.size());
    }
    for (int l = 0; l < 2; ++l) {
      std::vector<float> q(3 * kKeyDim);
      for (float& x : q) x = normal(rng);
      absl::StatusOr<Tensor> device = DeviceQueries(backend, q);
      ASSERT_TRUE(device.ok());
      engine::RetrievalQueries queries(backend, *device);
      const int scorings = backend.device_scorings;
      absl::StatusOr<std::vector<int64_t>> got = retriever.Select(ltm, l, queries);
      const std::vector<int64_t> want = ltm.Select(l, q.data(), 3);
      if (want.empty()) {  // nothing merged yet: no K_ltm rows to give
        EXPECT_EQ(got.status().code(), absl::StatusCode::kFailedPrecondition) << got.status();
        continue;
      }
      ASSERT_TRUE(got.ok()) << got.status();
      EXPECT_EQ(*got, want) << "inject " << inject << " layer " << l;
      if (backend.device_scorings > scorings) rows_scored += ltm.layer(l).size();
    }
  }
  EXPECT_GT(evictions, 0);  // compaction rewrote rows: the watermark was exercised
  EXPECT_GT(backend.device_scorings, 40);
  // Refreshes copied the changed tails only, well under a full copy per scoring.
  EXPECT_LT(backend.rows_copied, rows_scored * 3 / 4);
  EXPECT_GT(retriever.device_bytes(), 0u);
}

// bfloat16 checkpoints keep bfloat16 keys, mirrored as they are.
INSTANTIATE_TEST_SUITE_P(KeyDTypes, ResidentMirror, ::testing::Values(DType::kF32, DType::kBF16),
                         [](const auto& info) { return engine::DTypeName(info.param); });

TEST(LongTermRetrieverTest, OffloadAndKeylessBackendsScoreOnTheHost) {
  KeyKeepingBackend keeping;
  engine::cpu::CpuBackend keyless(1);
  std::mt19937 rng(9);
  uint64_t next_id = 1;
  LongTermMemory ltm = MakeMemory();
  for (int inject = 0; inject < 6; ++inject) ltm.ApplyInject(RandomDrops(rng, &next_id));
  const std::vector<float> q(2 * kKeyDim, 0.25f);
  const std::vector<int64_t> want = ltm.Select(0, q.data(), 2);
  ASSERT_EQ(static_cast<int64_t>(want.size()), kKltm);
  for (auto [backend, mode] :
       {std::pair<engine::Backend*, LongTermMode>{&keeping, LongTermMode::kOffload},
        {&keyless, LongTermMode::kResident}}) {
    LongTermRetriever retriever(mode, /*offload_device_min_queries=*/3);
    absl::StatusOr<Tensor> device = DeviceQueries(*backend, q);
    ASSERT_TRUE(device.ok());
    engine::RetrievalQueries queries(*backend, *device);
    absl::StatusOr<std::vector<int64_t>> got = retriever.Select(ltm, 0, queries);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(*got, want);
    EXPECT_EQ(retriever.device_bytes(), 0u);
  }
  EXPECT_EQ(keeping.device_scorings, 0);
}

TEST(LongTermRetrieverTest, OffloadScoresLongPromptsOnACopyOfTheLayersKeys) {
  KeyKeepingBackend backend;
  std::mt19937 rng(13);
  std::normal_distribution<float> normal;
  uint64_t next_id = 1;
  LongTermMemory ltm = MakeMemory(DType::kBF16);
  LongTermRetriever retriever(LongTermMode::kOffload, /*offload_device_min_queries=*/4);
  int64_t scored = 0;
  for (int inject = 0; inject < 12; ++inject) {
    ltm.ApplyInject(RandomDrops(rng, &next_id));
    for (int64_t nq : {3, 4, 9}) {
      std::vector<float> q(static_cast<size_t>(nq * kKeyDim));
      for (float& x : q) x = normal(rng);
      absl::StatusOr<Tensor> device = DeviceQueries(backend, q);
      ASSERT_TRUE(device.ok());
      engine::RetrievalQueries queries(backend, *device);
      const int scorings = backend.device_scorings;
      const int64_t copied = backend.rows_copied;
      const std::vector<int64_t> want = ltm.Select(1, q.data(), nq);
      absl::StatusOr<std::vector<int64_t>> got = retriever.Select(ltm, 1, queries);
      if (want.empty()) continue;  // nothing merged yet
      ASSERT_TRUE(got.ok()) << got.status();
      EXPECT_EQ(*got, want) << "inject " << inject << ", " << nq << " queries";
      // Shorter prompts score on the host; longer ones on a whole fresh copy of the layer.
      EXPECT_EQ(backend.device_scorings - scorings, nq >= 4 ? 1 : 0);
      EXPECT_EQ(backend.rows_copied - copied, nq >= 4 ? ltm.layer(1).size() : 0);
      scored += nq >= 4;
      EXPECT_EQ(retriever.device_bytes(), 0u);  // the copy lives only while scored
    }
  }
  EXPECT_GT(scored, 10);
}

TEST(LongTermRetrieverTest, RejectsBadLayerQueryShapeAndEmptyLayer) {
  LongTermMemory ltm = MakeMemory();
  LongTermRetriever retriever(LongTermMode::kResident, 0);
  const std::vector<float> q(kKeyDim, 1.0f);
  engine::RetrievalQueries ok(q.data(), 1, kKeyDim);
  EXPECT_EQ(retriever.Select(ltm, 2, ok).status().code(), absl::StatusCode::kInvalidArgument);
  // Nothing merged: every session type fails the same way instead of returning fewer rows.
  ASSERT_EQ(ltm.layer(0).size(), 0);
  EXPECT_EQ(retriever.Select(ltm, 0, ok).status().code(), absl::StatusCode::kFailedPrecondition);
  engine::RetrievalQueries narrow(q.data(), 2, kKeyDim / 2);
  EXPECT_EQ(retriever.Select(ltm, 0, narrow).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseLongTermMode("offload").value(), LongTermMode::kOffload);
  EXPECT_FALSE(ParseLongTermMode("gpu").ok());
}

}  // namespace
}  // namespace mplus::memstore
