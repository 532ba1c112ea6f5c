// Long-term memory bookkeeping of one session, exactly as the official M+ code keeps it
// (MPLUS-DETAILS.md: ages, pending list and merge cadence, recall-frequency eviction, retrieval
// with the wrap-around rule and age order). Pure and in RAM: vectors are referenced by token id,
// persistence is the caller's job.
#ifndef MPLUS_MEMSTORE_LONG_TERM_INDEX_H_
#define MPLUS_MEMSTORE_LONG_TERM_INDEX_H_

#include <algorithm>
#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/dtype.h"
#include "engine/model_config.h"

namespace mplus::memstore {

struct LongTermParams {
  int64_t tokens_per_inject = 0;     // K (config num_tokens)
  int64_t retrieved_tokens = 0;      // K_ltm
  int64_t key_dim = 0;               // p (selector_hidden_dim)
  int64_t update_ltm_frequency = 1;  // merge every this many injects
  double decay_frequency = 1.0;
  double initial_recall_frequency = 1.0;  // initial_rf_when_moving_stm_to_ltm
  // How keys are kept (kF32 or kBF16): bfloat16 for bfloat16 checkpoints, whose official model
  // computes and scores its keys in bfloat16 (half the memory and scoring bandwidth of float32),
  // float32 otherwise.
  engine::DType key_dtype = engine::DType::kF32;
};

// The M+ checkpoint's long-term parameters (K, K_ltm, p, merge cadence, decay, initial rf).
LongTermParams LongTermParamsFor(const engine::ModelConfig& config);

// One long-term entry. Storage order (merged entries, then pending ones) is semantics: it
// breaks age ties.
struct LongTermEntry {
  uint64_t token_id = 0;
  int64_t age = 0;
  double recall_frequency = 0;
};

// Tokens one inject dropped from one layer's short-term memory.
struct DroppedTokens {
  std::vector<uint64_t> token_ids;  // in dropped-slot order (ascending slots)
  std::vector<float> keys;          // [n * key_dim] float32 (stored as the layer's key dtype)
  std::vector<int64_t> stm_ages;    // their short-term ages
};

// One layer: keys contiguous in storage order for fast scoring.
class LongTermLayer {
 public:
  LongTermLayer(int64_t key_dim, engine::DType key_dtype)
      : key_dim_(key_dim),
        key_dtype_(key_dtype),
        key_bytes_(static_cast<size_t>(key_dim) * engine::DTypeSize(key_dtype)) {}

  int64_t key_dim() const { return key_dim_; }
  engine::DType key_dtype() const { return key_dtype_; }
  int64_t merged_count() const { return merged_count_; }
  int64_t size() const { return static_cast<int64_t>(entries_.size()); }
  const std::vector<LongTermEntry>& entries() const { return entries_; }  // merged, then pending
  // [size, key_dim] of key_dtype(), row-major.
  const void* keys() const { return keys_.data(); }
  size_t keys_bytes() const { return keys_.size(); }
  size_t key_bytes() const { return key_bytes_; }  // one key as stored
  const void* key(int64_t i) const { return keys_.data() + i * key_bytes_; }
  // Leading rows of keys() unchanged since the last MarkKeysSynced() (appending changes none),
  // so that a copy of the keys elsewhere (a GPU) is refreshed by copying only the rest.
  // One such copy per layer: the watermark is the layer's.
  int64_t keys_unchanged_rows() const { return std::min(keys_unchanged_rows_, size()); }
  void MarkKeysSynced() { keys_unchanged_rows_ = size(); }

  // A key as the layer stores it (key_dim elements of key_dtype()): another layer's key(i), or
  // a persisted record's.
  struct StoredKey {
    const void* data;
  };

  // Room for `entries` entries and their keys (a restore knows about how many it adds).
  void Reserve(int64_t entries) {
    entries_.reserve(static_cast<size_t>(entries));
    keys_.reserve(static_cast<size_t>(entries) * key_bytes_);
  }
  // Appends a merged entry (checkpoint LTM, or restoring persisted state); a float32 key
  // (key_dim floats) is stored as key_dtype().
  void AddMerged(uint64_t token_id, absl::Span<const float> key, int64_t age,
                 double recall_frequency);
  void AddMerged(uint64_t token_id, StoredKey key, int64_t age, double recall_frequency);
  // Appends a pending entry (restoring persisted state).
  void AddPending(uint64_t token_id, absl::Span<const float> key, int64_t age,
                  double recall_frequency);
  void AddPending(uint64_t token_id, StoredKey key, int64_t age, double recall_frequency);

 private:
  friend class LongTermMemory;
  // Adds the entry and returns its key's row, to be filled by the caller.
  uint8_t* InsertMerged(uint64_t token_id, int64_t age, double recall_frequency);
  uint8_t* AppendPending(uint64_t token_id, int64_t age, double recall_frequency);
  void Narrow(absl::Span<const float> key, uint8_t* row) const;

  int64_t key_dim_;
  engine::DType key_dtype_;
  size_t key_bytes_;  // one key as stored
  int64_t merged_count_ = 0;
  int64_t keys_unchanged_rows_ = 0;
  std::vector<LongTermEntry> entries_;
  std::vector<uint8_t> keys_;
};

// All layers of one session plus the inject cadence counter.
class LongTermMemory {
 public:
  LongTermMemory(const LongTermParams& params, int num_layers);

  const LongTermParams& params() const { return params_; }
  int num_layers() const { return static_cast<int>(layers_.size()); }
  LongTermLayer& layer(int l) { return layers_[l]; }
  const LongTermLayer& layer(int l) const { return layers_[l]; }
  int64_t update_step() const { return update_step_; }
  void set_update_step(int64_t step) { update_step_ = step; }

  // One inject: every entry (merged or pending) ages by K, then each layer's dropped tokens join
  // its pending list with their STM ages; every update_ltm_frequency injects the pending lists
  // merge (recall frequency = initial) and eviction runs. Returns, per layer, the token ids that
  // eviction removed (their vectors may be deleted).
  std::vector<std::vector<uint64_t>> ApplyInject(const std::vector<DroppedTokens>& per_layer);

  // Indices (ascending) of the k best-scoring entries of a layer, all of entries() scored.
  using TopKFn = std::function<absl::StatusOr<std::vector<int64_t>>(int64_t k)>;

  // Retrieval for layer `l`: the K_ltm chosen entries' indices into entries(), in prefix order
  // (oldest first, ties: later storage position first); wrap-around when fewer than K_ltm
  // merged entries, otherwise the best by `top_k` (called only then).
  absl::StatusOr<std::vector<int64_t>> Select(int l, const TopKFn& top_k) const;
  // The same, scored on the host keys: float32-or-better mean sigmoid over `queries`
  // [num_queries, p].
  std::vector<int64_t> Select(int l, const float* queries, int64_t num_queries) const;

 private:
  // A merge of one layer: its pending entries join the merged ones, every recall frequency
  // decays and the entries it takes to 0.01 or below go (their ids appended to `evicted`); when
  // no more than K_ltm entries would be left, nothing decays (the official rule).
  void MergeAndEvict(LongTermLayer& layer, std::vector<uint64_t>* evicted) const;

  LongTermParams params_;
  std::vector<LongTermLayer> layers_;
  int64_t update_step_ = 0;
};

}  // namespace mplus::memstore

#endif  // MPLUS_MEMSTORE_LONG_TERM_INDEX_H_
