#include "memstore/in_memory_session.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/parallel_for.h"
#include "memstore/base_memory.h"

namespace mplus::memstore {
absl::StatusOr<std::unique_ptr<InMemorySession>> InMemorySession::Create(const engine::Model& model,
                                                                         LongTermMode mode,
                                                                         bool prefix_cache) {
  const engine::ModelConfig& c = model.config();
  if (!c.has_memory()) {
    return absl::FailedPreconditionError("session memory needs a MemoryLLM or M+ checkpoint");
  }
  const engine::ModelWeights& w = model.weights();
  std::unique_ptr<InMemorySession> s(new InMemorySession());
  s->use_prefix_cache_ = prefix_cache;
  s->num_layers_ = static_cast<int>(c.num_hidden_layers);
  s->n_ = c.stm_tokens();
  s->d_ = c.hidden_size;
  s->k_ = c.num_tokens;
  s->dtype_ = w.memory.dtype;
  const size_t row_bytes = static_cast<size_t>(s->d_) * engine::DTypeSize(s->dtype_);
  const size_t layer_bytes = static_cast<size_t>(s->n_) * row_bytes;
  for (int l = 0; l < s->num_layers_; ++l) {
    const uint8_t* src = static_cast<const uint8_t*>(w.memory.data) + l * layer_bytes;
    std::memcpy(s->stm_.emplace_back(s->n_, row_bytes).initial_rows(), src, layer_bytes);
    s->stm_ages_.emplace_back(static_cast<size_t>(s->n_), 0);  // not in the checkpoint
  }
  if (!c.has_long_term()) return s;

  const LongTermParams params = LongTermParamsFor(c);
  s->ltm_ = std::make_unique<LongTermMemory>(params, s->num_layers_);
  s->retriever_ = std::make_unique<LongTermRetriever>(mode, /*offload_device_min_queries=*/0);
  std::vector<float> key(static_cast<size_t>(params.key_dim));
  std::vector<float> row(static_cast<size_t>(s->d_));
  for (int l = 0; l < s->num_layers_; ++l) {
    const engine::TensorView& vecs = w.ltm[l];
    const engine::TensorView& keys = w.ltm_keys[l];
    const int64_t count = vecs.shape.empty() ? 0 : vecs.shape[0];
    for (int64_t i = 0; i < count; ++i) {
      for (int64_t j = 0; j < s->d_; ++j) row[j] = vecs.GetFloat(i * s->d_ + j);
      for (int64_t j = 0; j < params.key_dim; ++j) key[j] = keys.GetFloat(i * params.key_dim + j);
      const uint64_t id = s->next_token_id_++;
      std::vector<uint8_t>& stored = s->vectors_[id];
      stored.resize(row_bytes);
      engine::FloatsToDType(row.data(), s->d_, s->dtype_, stored.data());
      // The official code reads ages with .int(): truncation.
      s->ltm_->layer(l).AddMerged(id, key, static_cast<int64_t>(w.ltm_ages[l].GetFloat(i)),
                                  w.ltm_recall_frequencies[l].GetFloat(i));
    }
  }
  return s;
}

engine::ShortTermRows InMemorySession::ShortTerm(int layer) const {
  return stm_[layer].View(dtype_, d_);
}

absl::StatusOr<std::vector<uint64_t>> InMemorySession::SelectLongTerm(
    int layer, engine::RetrievalQueries& queries) {
  if (ltm_ == nullptr) return absl::FailedPreconditionError("no long-term memory");
  return retriever_->SelectTokenIds(*ltm_, layer, queries);
}

absl::Status InMemorySession::ReadLongTerm(absl::Span<const uint64_t> ids, void* out) {
  for (size_t i = 0; i < ids.size(); ++i) {
    auto it = vectors_.find(ids[i]);
    if (it == vectors_.end()) return absl::InternalError("long-term token vector missing");
    std::memcpy(static_cast<char*>(out) + i * it->second.size(), it->second.data(),
                it->second.size());
  }
  return absl::OkStatus();
}

absl::Status InMemorySession::ApplyInject(const engine::InjectResult& inject) {
  const size_t layers = static_cast<size_t>(num_layers_);
  if (inject.delta.size() != layers || inject.dropped.size() != layers ||
      (ltm_ != nullptr && inject.dropped_keys.size() != layers)) {
    return absl::InvalidArgumentError("ApplyInject: result does not cover every layer");
  }
  const size_t row_bytes = static_cast<size_t>(d_) * engine::DTypeSize(dtype_);
  const int64_t p = ltm_ != nullptr ? ltm_->params().key_dim : 0;
  for (size_t l = 0; l < layers; ++l) {
    if (static_cast<int64_t>(inject.delta[l].size()) != k_ * d_ ||
        static_cast<int64_t>(inject.dropped[l].size()) != k_ ||
        (ltm_ != nullptr && static_cast<int64_t>(inject.dropped_keys[l].size()) != k_ * p)) {
      return absl::InvalidArgumentError(absl::StrCat("ApplyInject: bad sizes for layer ", l));
    }
    if (absl::Status st = CheckDroppedSlots(inject.dropped[l], n_, k_); !st.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("ApplyInject: layer ", l, ": ", st.message()));
    }
  }
  prefix_cache_.OnInject(inject.dropped);  // the short-term memory is about to change
  std::vector<DroppedTokens> dropped(layers);
  std::vector<std::vector<uint8_t>> dropped_rows(layers);  // [K * row_bytes] per layer, slot order
  // Layers on several threads: the new tokens' rows take the dropped ones' places in the pools.
  ParallelFor(static_cast<int64_t>(layers), 1, [&](int64_t first, int64_t last) {
    std::vector<int64_t> new_ages(static_cast<size_t>(k_));
    for (int64_t i = 0; i < k_; ++i) new_ages[i] = k_ - 1 - i;  // first new token oldest
    for (int64_t l = first; l < last; ++l) {
      if (ltm_ != nullptr) {
        for (int32_t slot : inject.dropped[l]) {
          const uint8_t* row = stm_[l].row(slot);
          dropped_rows[l].insert(dropped_rows[l].end(), row, row + row_bytes);
          dropped[l].stm_ages.push_back(stm_ages_[l][slot]);
        }
        dropped[l].keys = inject.dropped_keys[l];
      }
      ReplaceSlots<int64_t>(stm_ages_[l], inject.dropped[l], new_ages);
      stm_[l].Replace(inject.dropped[l], inject.delta[l].data(), dtype_);
    }
  });
  if (ltm_ == nullptr) return absl::OkStatus();
  for (size_t l = 0; l < layers; ++l) {  // token ids in layer, then slot order
    for (size_t i = 0; i < dropped[l].stm_ages.size(); ++i) {
      const uint64_t id = next_token_id_++;
      const uint8_t* row = dropped_rows[l].data() + i * row_bytes;
      vectors_[id].assign(row, row + row_bytes);
      dropped[l].token_ids.push_back(id);
    }
  }
  for (const std::vector<uint64_t>& evicted : ltm_->ApplyInject(dropped)) {
    for (uint64_t id : evicted) vectors_.erase(id);
  }
  return absl::OkStatus();
}

int64_t InMemorySession::ltm_count(int layer) const {
  return ltm_ == nullptr ? 0 : ltm_->layer(layer).size();
}

}  // namespace mplus::memstore
