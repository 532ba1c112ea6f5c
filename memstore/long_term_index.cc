#include "memstore/long_term_index.h"

#include <algorithm>
#include <cstring>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "common/parallel_for.h"
#include "memstore/retrieval_scorer.h"

namespace mplus::memstore {

LongTermParams LongTermParamsFor(const engine::ModelConfig& config) {
  LongTermParams p;
  p.tokens_per_inject = config.num_tokens;
  p.retrieved_tokens = config.ltm_retrieved_tokens();
  p.key_dim = config.selector_hidden_dim;
  p.update_ltm_frequency = config.update_ltm_frequency;
  p.decay_frequency = config.decay_frequency;
  p.initial_recall_frequency = config.initial_rf_when_moving_stm_to_ltm;
  p.key_dtype = config.dtype == engine::DType::kBF16 ? engine::DType::kBF16 : engine::DType::kF32;
  return p;
}

void LongTermLayer::Narrow(absl::Span<const float> key, uint8_t* row) const {
  engine::FloatsToDType(key.data(), key_dim_, key_dtype_, row);
}

uint8_t* LongTermLayer::InsertMerged(uint64_t token_id, int64_t age, double recall_frequency) {
  // Merged entries precede pending ones in storage order.
  keys_unchanged_rows_ = std::min(keys_unchanged_rows_, merged_count_);
  entries_.insert(entries_.begin() + merged_count_, LongTermEntry{token_id, age, recall_frequency});
  keys_.insert(keys_.begin() + merged_count_ * key_bytes_, key_bytes_, 0);
  return keys_.data() + merged_count_++ * key_bytes_;
}

uint8_t* LongTermLayer::AppendPending(uint64_t token_id, int64_t age, double recall_frequency) {
  entries_.push_back(LongTermEntry{token_id, age, recall_frequency});
  keys_.resize(keys_.size() + key_bytes_);
  return keys_.data() + keys_.size() - key_bytes_;
}

void LongTermLayer::AddMerged(uint64_t token_id, absl::Span<const float> key, int64_t age,
                              double recall_frequency) {
  Narrow(key, InsertMerged(token_id, age, recall_frequency));
}

void LongTermLayer::AddMerged(uint64_t token_id, StoredKey key, int64_t age,
                              double recall_frequency) {
  std::memcpy(InsertMerged(token_id, age, recall_frequency), key.data, key_bytes_);
}

void LongTermLayer::AddPending(uint64_t token_id, absl::Span<const float> key, int64_t age,
                               double recall_frequency) {
  Narrow(key, AppendPending(token_id, age, recall_frequency));
}

void LongTermLayer::AddPending(uint64_t token_id, StoredKey key, int64_t age,
                               double recall_frequency) {
  std::memcpy(AppendPending(token_id, age, recall_frequency), key.data, key_bytes_);
}

LongTermMemory::LongTermMemory(const LongTermParams& params, int num_layers) : params_(params) {
  layers_.reserve(static_cast<size_t>(num_layers));
  for (int l = 0; l < num_layers; ++l) layers_.emplace_back(params.key_dim, params.key_dtype);
}

std::vector<std::vector<uint64_t>> LongTermMemory::ApplyInject(
    const std::vector<DroppedTokens>& per_layer) {
  const int64_t k = params_.tokens_per_inject;
  const int64_t num_layers = static_cast<int64_t>(layers_.size());
  // Layers on several threads: each touches only its own entries (mplus-8b: ~150k a layer).
  ParallelFor(num_layers, 1, [&](int64_t first, int64_t last) {
    for (int64_t l = first; l < last; ++l) {
      LongTermLayer& layer = layers_[l];
      // Existing entries (merged and pending) age before this inject's drops join.
      for (LongTermEntry& e : layer.entries_) e.age += k;
      if (l >= static_cast<int64_t>(per_layer.size())) continue;
      const DroppedTokens& d = per_layer[l];
      for (size_t i = 0; i < d.token_ids.size(); ++i) {
        layer.AddPending(d.token_ids[i],
                         absl::MakeConstSpan(d.keys).subspan(i * layer.key_dim_, layer.key_dim_),
                         d.stm_ages[i], params_.initial_recall_frequency);
      }
    }
  });
  std::vector<std::vector<uint64_t>> evicted(layers_.size());
  update_step_ += k;
  if (update_step_ < params_.update_ltm_frequency * k) return evicted;
  update_step_ = 0;
  ParallelFor(num_layers, 1, [&](int64_t first, int64_t last) {
    for (int64_t l = first; l < last; ++l) MergeAndEvict(layers_[l], &evicted[l]);
  });
  return evicted;
}

void LongTermMemory::MergeAndEvict(LongTermLayer& layer, std::vector<uint64_t>* evicted) const {
  layer.merged_count_ = layer.size();
  // Decay every recall frequency; evict those at or below 0.01 only if more than K_ltm entries
  // survive, otherwise undo the decay (the official rule, so retrieval never runs short).
  int64_t kept = 0;
  for (const LongTermEntry& e : layer.entries_) {
    if (e.recall_frequency - params_.decay_frequency > 0.01) ++kept;
  }
  if (kept <= params_.retrieved_tokens) return;
  const size_t key_bytes = layer.key_bytes_;
  int64_t out = 0;
  for (int64_t i = 0; i < layer.size(); ++i) {
    LongTermEntry e = layer.entries_[i];
    e.recall_frequency -= params_.decay_frequency;
    if (e.recall_frequency > 0.01) {
      layer.entries_[out] = e;
      std::copy_n(layer.keys_.begin() + i * key_bytes, key_bytes,
                  layer.keys_.begin() + out * key_bytes);
      ++out;
    } else {
      if (evicted->empty()) {
        layer.keys_unchanged_rows_ = std::min(layer.keys_unchanged_rows_, i);
      }
      evicted->push_back(e.token_id);
    }
  }
  layer.entries_.resize(static_cast<size_t>(out));
  layer.keys_.resize(static_cast<size_t>(out) * key_bytes);
  layer.merged_count_ = out;
}

std::vector<int64_t> LongTermMemory::Select(int l, const float* queries,
                                            int64_t num_queries) const {
  const LongTermLayer& layer = layers_[l];
  // Host scoring cannot fail.
  return *Select(l, [&](int64_t k) -> absl::StatusOr<std::vector<int64_t>> {
    std::vector<float> scores(static_cast<size_t>(layer.size()));
    MeanSigmoidScores(queries, num_queries, layer.keys(), layer.key_dtype(), layer.size(),
                      layer.key_dim(), scores.data());
    return TopK(scores.data(), layer.size(), k);
  });
}

absl::StatusOr<std::vector<int64_t>> LongTermMemory::Select(int l, const TopKFn& top_k) const {
  const LongTermLayer& layer = layers_[l];
  const int64_t want = params_.retrieved_tokens;
  const int64_t merged = layer.merged_count();
  std::vector<int64_t> chosen;
  if (merged == 0 || want <= 0) return chosen;
  if (merged < want) {
    // Wrap-around: the last `want` of [0..merged-1] repeated; pending entries are ignored.
    const int64_t reps = (want + merged - 1) / merged;
    for (int64_t i = reps * merged - want; i < reps * merged; ++i) chosen.push_back(i % merged);
  } else {
    absl::StatusOr<std::vector<int64_t>> best = top_k(want);
    if (!best.ok()) return best.status();
    chosen = std::move(*best);
    if (static_cast<int64_t>(chosen.size()) != want) {
      return absl::InternalError(
          absl::StrCat("retrieval scoring returned ", chosen.size(), " entries, expected ", want));
    }
    for (int64_t i : chosen) {
      if (i < 0 || i >= layer.size()) {
        return absl::InternalError(
            absl::StrCat("retrieval scoring returned entry ", i, " of ", layer.size()));
      }
    }
  }
  // Oldest first; among equal ages the later list position first (upstream's
  // np.argsort(ages)[::-1] with a stable sort).
  std::vector<int64_t> order(chosen.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    const int64_t age_a = layer.entries()[chosen[a]].age, age_b = layer.entries()[chosen[b]].age;
    if (age_a != age_b) return age_a > age_b;
    return a > b;
  });
  std::vector<int64_t> result(chosen.size());
  for (size_t i = 0; i < order.size(); ++i) result[i] = chosen[order[i]];
  return result;
}

}  // namespace mplus::memstore
