// The checkpoint's memory as the shared, read-only base of every session (copy-on-write): base
// tokens have reserved ids and their vectors are read from the mapped checkpoint, never copied
// into RocksDB.
#ifndef MPLUS_MEMSTORE_BASE_MEMORY_H_
#define MPLUS_MEMSTORE_BASE_MEMORY_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model_config.h"
#include "engine/model_weights.h"
#include "memstore/long_term_index.h"

namespace mplus::memstore {

// Token ids: session tokens count up from 1 within their session; base tokens set the top bit,
// bit 62 tells the initial long-term memory from the initial short-term memory, bits 32..47 hold
// the layer and bits 0..31 the slot / long-term index.
inline constexpr uint64_t kBaseTokenBit = uint64_t{1} << 63;
inline constexpr uint64_t kBaseLongTermBit = uint64_t{1} << 62;
inline uint64_t BaseShortTermId(int layer, int64_t slot) {
  return kBaseTokenBit | (static_cast<uint64_t>(layer) << 32) | static_cast<uint64_t>(slot);
}
inline uint64_t BaseLongTermId(int layer, int64_t index) {
  return kBaseTokenBit | kBaseLongTermBit | (static_cast<uint64_t>(layer) << 32) |
         static_cast<uint64_t>(index);
}
inline bool IsBaseToken(uint64_t id) { return (id & kBaseTokenBit) != 0; }

class BaseMemory {
 public:
  // Validates the base tensors against `config` (shapes, float dtypes). Views must outlive this.
  static absl::StatusOr<std::unique_ptr<BaseMemory>> Create(const engine::ModelConfig& config,
                                                            const engine::ModelWeights& weights);

  const engine::ModelConfig& config() const { return config_; }
  int num_layers() const { return static_cast<int>(config_.num_hidden_layers); }
  int64_t hidden() const { return config_.hidden_size; }
  // Memory tokens are stored in the checkpoint dtype.
  engine::DType storage_dtype() const { return dtype_; }
  size_t row_bytes() const { return row_bytes_; }
  int64_t long_term_size(int layer) const;  // n0 of layer

  // A base token's vector, in storage dtype / as float32. `id` must be a valid base id.
  void CopyRow(uint64_t id, void* out) const;
  void RowToFloats(uint64_t id, float* out) const;

  LongTermParams long_term_params() const;
  // A session's long-term memory at creation is the checkpoint's entries, all merged, with ages
  // read with truncation and recall frequencies widened from the checkpoint dtype.
  int64_t InitialAge(int layer, int64_t index) const;
  double InitialRecallFrequency(int layer, int64_t index) const;
  // The checkpoint's long-term key `index` of `layer` as a session's layer stores it
  // (long_term_params().key_dtype): in the mapped checkpoint, or converted once at creation when
  // the checkpoint holds keys in another dtype.
  LongTermLayer::StoredKey LongTermKey(int layer, int64_t index) const;

 private:
  BaseMemory(const engine::ModelConfig& config, const engine::ModelWeights& weights);
  const engine::TensorView& RowSource(uint64_t id, int64_t* row) const;

  engine::ModelConfig config_;
  const engine::ModelWeights& weights_;
  engine::DType dtype_;
  size_t row_bytes_;
  size_t key_bytes_ = 0;                              // one long-term key as sessions store it
  std::vector<std::vector<uint8_t>> converted_keys_;  // [layer], empty where the checkpoint's fit
};

}  // namespace mplus::memstore

#endif  // MPLUS_MEMSTORE_BASE_MEMORY_H_
