#include "memstore/base_memory.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/dtype.h"

namespace mplus::memstore {
namespace {

using engine::DType;

bool IsFloat(DType d) { return d == DType::kF32 || d == DType::kBF16 || d == DType::kF16; }

absl::Status CheckTensor(const engine::TensorView& t, const std::vector<int64_t>& shape) {
  if (t.data == nullptr) return absl::InvalidArgumentError(absl::StrCat("missing tensor ", t.name));
  if (!IsFloat(t.dtype)) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor ", t.name, ": dtype ", engine::DTypeName(t.dtype), " is not float"));
  }
  if (t.shape != shape) {
    return absl::InvalidArgumentError(absl::StrCat("tensor ", t.name, ": shape [",
                                                   absl::StrJoin(t.shape, ","), "], expected [",
                                                   absl::StrJoin(shape, ","), "]"));
  }
  return absl::OkStatus();
}

float ElementAsFloat(const engine::TensorView& t, int64_t i) {
  float f;
  engine::DTypeToFloats(static_cast<const uint8_t*>(t.data) + i * engine::DTypeSize(t.dtype),
                        t.dtype, 1, &f);
  return f;
}

}  // namespace

BaseMemory::BaseMemory(const engine::ModelConfig& config, const engine::ModelWeights& weights)
    : config_(config),
      weights_(weights),
      dtype_(config.dtype),
      row_bytes_(config.hidden_size * engine::DTypeSize(config.dtype)) {
  if (!config.has_long_term()) return;
  const LongTermParams params = long_term_params();
  key_bytes_ = static_cast<size_t>(params.key_dim) * engine::DTypeSize(params.key_dtype);
  converted_keys_.resize(num_layers());
  for (int l = 0; l < num_layers(); ++l) {
    const engine::TensorView& keys = weights.ltm_keys[l];
    if (keys.dtype == params.key_dtype) continue;
    const int64_t n = long_term_size(l) * params.key_dim;
    std::vector<float> widened(static_cast<size_t>(n));
    engine::DTypeToFloats(keys.data, keys.dtype, n, widened.data());
    converted_keys_[l].resize(static_cast<size_t>(long_term_size(l)) * key_bytes_);
    engine::FloatsToDType(widened.data(), n, params.key_dtype, converted_keys_[l].data());
  }
}

absl::StatusOr<std::unique_ptr<BaseMemory>> BaseMemory::Create(
    const engine::ModelConfig& config, const engine::ModelWeights& weights) {
  if (!IsFloat(config.dtype)) {
    return absl::InvalidArgumentError(
        absl::StrCat("checkpoint dtype ", engine::DTypeName(config.dtype), " is not float"));
  }
  const int64_t L = config.num_hidden_layers, d = config.hidden_size;
  // Plain Llama checkpoints have no memory: their sessions hold only metadata.
  if (config.has_memory()) {
    absl::Status s = CheckTensor(weights.memory, {L, config.stm_tokens(), d});
    if (!s.ok()) return s;
  }
  if (config.has_long_term()) {
    if (static_cast<int64_t>(weights.ltm.size()) != L ||
        weights.ltm_keys.size() != weights.ltm.size() ||
        weights.ltm_ages.size() != weights.ltm.size() ||
        weights.ltm_recall_frequencies.size() != weights.ltm.size()) {
      return absl::InvalidArgumentError("initial long-term memory must have one entry per layer");
    }
    for (int64_t l = 0; l < L; ++l) {
      const int64_t n0 = weights.ltm[l].shape.empty() ? 0 : weights.ltm[l].shape[0];
      if (n0 >= (int64_t{1} << 32)) return absl::InvalidArgumentError("initial LTM too large");
      for (absl::Status c : {CheckTensor(weights.ltm[l], {n0, d}),
                             CheckTensor(weights.ltm_keys[l], {n0, config.selector_hidden_dim}),
                             CheckTensor(weights.ltm_ages[l], {n0}),
                             CheckTensor(weights.ltm_recall_frequencies[l], {n0})}) {
        if (!c.ok()) return c;
      }
    }
  }
  return std::unique_ptr<BaseMemory>(new BaseMemory(config, weights));
}

int64_t BaseMemory::long_term_size(int layer) const {
  if (!config_.has_long_term()) return 0;
  return weights_.ltm[layer].shape[0];
}

const engine::TensorView& BaseMemory::RowSource(uint64_t id, int64_t* row) const {
  const int layer = static_cast<int>((id >> 32) & 0xffff);
  const int64_t index = static_cast<int64_t>(id & 0xffffffffu);
  if (id & kBaseLongTermBit) {
    *row = index;
    return weights_.ltm[layer];
  }
  *row = layer * config_.stm_tokens() + index;
  return weights_.memory;
}

void BaseMemory::CopyRow(uint64_t id, void* out) const {
  int64_t row;
  const engine::TensorView& t = RowSource(id, &row);
  const int64_t d = config_.hidden_size;
  const uint8_t* src = static_cast<const uint8_t*>(t.data) + row * d * engine::DTypeSize(t.dtype);
  if (t.dtype == dtype_) {
    std::memcpy(out, src, row_bytes_);
    return;
  }
  std::vector<float> tmp(d);
  engine::DTypeToFloats(src, t.dtype, d, tmp.data());
  engine::FloatsToDType(tmp.data(), d, dtype_, out);
}

void BaseMemory::RowToFloats(uint64_t id, float* out) const {
  int64_t row;
  const engine::TensorView& t = RowSource(id, &row);
  const int64_t d = config_.hidden_size;
  engine::DTypeToFloats(static_cast<const uint8_t*>(t.data) + row * d * engine::DTypeSize(t.dtype),
                        t.dtype, d, out);
}

LongTermParams BaseMemory::long_term_params() const { return LongTermParamsFor(config_); }

int64_t BaseMemory::InitialAge(int layer, int64_t index) const {
  return static_cast<int64_t>(ElementAsFloat(weights_.ltm_ages[layer], index));  // truncates
}

double BaseMemory::InitialRecallFrequency(int layer, int64_t index) const {
  return ElementAsFloat(weights_.ltm_recall_frequencies[layer], index);
}

LongTermLayer::StoredKey BaseMemory::LongTermKey(int layer, int64_t index) const {
  const std::vector<uint8_t>& converted = converted_keys_[layer];
  const void* keys = converted.empty() ? weights_.ltm_keys[layer].data : converted.data();
  return {static_cast<const uint8_t*>(keys) + index * key_bytes_};
}

}  // namespace mplus::memstore
