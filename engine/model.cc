#include "engine/model.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <limits>
#include <numeric>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/cpu/cpu_backend.h"
#include "engine/rope.h"
#include "engine/status_macros.h"

namespace mplus::engine {
namespace {

absl::StatusOr<Tensor> Alloc(Backend& backend, int64_t rows, int64_t cols) {
  return backend.Allocate(DType::kF32, {rows, cols});
}

// Row `row` of a host [rows, cols] float-typed view, as a pointer.
const void* HostRow(const TensorView& view, int64_t row, int64_t cols) {
  return static_cast<const char*>(view.data) +
         static_cast<size_t>(row * cols) * DTypeSize(view.dtype);
}

// The end of the chunk of [begin, end) that starts at begin: `chunk` rows, or all that is left
// when less than 1.5 chunks are. Chunks thus never go below half of `chunk` (nor below
// kMinPrefixChunkRows / 2 > kGemvMaxRows rows), unless the whole range is that small.
int64_t ChunkEnd(int64_t begin, int64_t end, int64_t chunk) {
  return end - begin < chunk + chunk / 2 ? end : begin + chunk;
}

}  // namespace

absl::StatusOr<std::optional<DType>> ParseKvCacheDType(std::string_view name) {
  if (name == "auto") return std::optional<DType>();
  if (name == "f32") return DType::kF32;
  if (name == "bf16") return DType::kBF16;
  if (name == "fp8") return DType::kF8E4M3;
  return absl::InvalidArgumentError(absl::StrCat("kv cache dtype \"", std::string(name),
                                                 "\" is not one of auto, f32, bf16, fp8"));
}

absl::StatusOr<std::optional<bool>> ParseMergeDecoderLora(std::string_view name) {
  if (name == "auto") return std::optional<bool>();
  if (name == "true") return true;
  if (name == "false") return false;
  return absl::InvalidArgumentError(absl::StrCat("merge_decoder_lora \"", std::string(name),
                                                 "\" is not one of auto, true, false"));
}

absl::StatusOr<std::unique_ptr<Model>> Model::Load(const std::string& checkpoint_dir,
                                                   const ModelOptions& options) {
  static std::atomic<uint64_t> next_id{1};
  for (const auto& [name, rows] : {std::pair{"prefix_chunk_rows", options.prefix_chunk_rows},
                                   std::pair{"mlp_chunk_rows", options.mlp_chunk_rows}}) {
    if (rows < kMinPrefixChunkRows) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, " ", rows, " is below ", kMinPrefixChunkRows));
    }
  }
  std::unique_ptr<Model> m(new Model());
  m->id_ = next_id.fetch_add(1);
  MPLUS_ASSIGN_OR_RETURN(m->config_, LoadModelConfig(checkpoint_dir + "/config.json"));
  const ModelConfig& c = m->config_;
  if (c.hidden_act != "silu") {
    return absl::UnimplementedError(absl::StrCat(checkpoint_dir, "/config.json: hidden_act \"",
                                                 c.hidden_act, "\" is not supported (only silu)"));
  }
  MPLUS_ASSIGN_OR_RETURN(m->store_, WeightStore::OpenDirectory(checkpoint_dir));
  MPLUS_ASSIGN_OR_RETURN(m->weights_, ModelWeights::Load(*m->store_, c));
  m->backend_ =
      options.backend ? options.backend : std::make_shared<cpu::CpuBackend>(options.num_threads);
  Backend& b = *m->backend_;

  m->dims_ = LayerDims{c.hidden_size,
                       c.num_attention_heads,
                       c.num_key_value_heads,
                       c.head_dim,
                       c.intermediate_size,
                       static_cast<float>(c.rms_norm_eps),
                       static_cast<float>(c.lora.scale()),
                       options.mlp_chunk_rows};
  m->decoder_lora_merged_ =
      c.add_decoder_lora && options.merge_decoder_lora.value_or(b.CopiesWeights());
  std::optional<ThreadPool> merge_pool;
  if (m->decoder_lora_merged_) merge_pool.emplace(options.num_threads);
  for (const LayerWeights& lw : m->weights_.layers) {
    LayerWeights upload = lw;
    std::vector<MergedLinear> merged;
    for (LinearWeights* linear : {&upload.q_proj, &upload.k_proj, &upload.v_proj, &upload.o_proj,
                                  &upload.gate_proj, &upload.up_proj, &upload.down_proj}) {
      if (!merge_pool || !linear->has_lora(Adapter::kDecoder)) continue;
      MPLUS_ASSIGN_OR_RETURN(MergedLinear one,
                             MergeDecoderLora(*linear, m->dims_.lora_scale, *merge_pool));
      *linear = one.views;
      merged.push_back(std::move(one));
    }
    MPLUS_ASSIGN_OR_RETURN(DeviceLayer layer, UploadLayer(b, upload));
    m->layers_.push_back(std::move(layer));
    if (!b.CopiesWeights()) {
      for (MergedLinear& one : merged) m->merged_host_.push_back(std::move(one));
    }
  }
  MPLUS_ASSIGN_OR_RETURN(m->final_norm_, b.UploadWeight(m->weights_.final_norm));
  MPLUS_ASSIGN_OR_RETURN(m->lm_head_, b.UploadWeight(m->weights_.lm_head));
  // A forward reads only its tokens' rows of the embedding table, so a GPU gathers them from
  // host memory rather than holding the table (~1 GB of an 8B model), unless lm_head is it.
  if (m->weights_.lm_head.data == m->weights_.embed_tokens.data) {
    m->embed_tokens_ = m->lm_head_;
  } else if (b.device() == Device::kCpu) {
    MPLUS_ASSIGN_OR_RETURN(m->embed_tokens_, b.UploadWeight(m->weights_.embed_tokens));
  }
  if (c.has_memory()) {
    MPLUS_ASSIGN_OR_RETURN(m->new_memory_positional_emb_,
                           b.UploadWeight(m->weights_.new_memory_positional_emb));
  }
  const std::vector<float> inv_freq =
      RopeInvFreq(c, options.bf16_rope_inv_freq && c.dtype == DType::kBF16);
  MPLUS_ASSIGN_OR_RETURN(m->inv_freq_,
                         b.Allocate(DType::kF32, {static_cast<int64_t>(inv_freq.size())}));
  MPLUS_RETURN_IF_ERROR(b.CopyFromHost(inv_freq.data(), DType::kF32, m->inv_freq_));
  m->inject_kv_dtype_ = c.dtype == DType::kBF16 ? DType::kBF16 : DType::kF32;
  m->kv_dtype_ = options.kv_cache_dtype.value_or(m->inject_kv_dtype_);
  if (m->kv_dtype_ != DType::kF32 && m->kv_dtype_ != DType::kBF16 &&
      m->kv_dtype_ != DType::kF8E4M3) {
    return absl::InvalidArgumentError(
        absl::StrCat("kv_cache_dtype must be F32, BF16 or F8_E4M3, not ", DTypeName(m->kv_dtype_)));
  }
  if (m->kv_dtype_ != m->inject_kv_dtype_) {  // refuse at load what the backend cannot store
    MPLUS_ASSIGN_OR_RETURN(Tensor wide, b.Allocate(DType::kF32, {1, 8}));
    MPLUS_ASSIGN_OR_RETURN(Tensor narrow, b.Allocate(m->kv_dtype_, {1, 8}));
    if (absl::Status s = b.Copy(wide, narrow); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("kv_cache_dtype ", DTypeName(m->kv_dtype_),
                                                     ": backend ", b.name(),
                                                     " cannot store it: ", s.message()));
    }
  }
  m->prefix_chunk_rows_ = options.prefix_chunk_rows;
  m->replay_decode_ = options.replay_decode;
  m->max_context_ = options.max_context > 0         ? options.max_context
                    : c.max_position_embeddings > 0 ? c.max_position_embeddings
                                                    : std::numeric_limits<int64_t>::max() / 2;
  return m;
}

int64_t Model::bos_rows() const {
  return config_.has_memory() && weights_.bos_embedding.data != nullptr ? 1 : 0;
}

int64_t Model::prefix_length() const {
  if (!config_.has_memory()) return 0;
  return bos_rows() + config_.ltm_retrieved_tokens() + config_.stm_tokens();
}

absl::Status Model::CheckIds(absl::Span<const int32_t> ids, const char* what) const {
  if (ids.empty()) return absl::InvalidArgumentError(absl::StrCat(what, ": no tokens"));
  for (int32_t id : ids) {
    if (id < 0 || id >= config_.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, ": token id ", id, " is out of range for vocabulary size ", config_.vocab_size));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<ShortTermRows> Model::CheckedShortTerm(const SessionMemory& mem, int layer) const {
  const ShortTermRows v = mem.ShortTerm(layer);
  const int64_t n = config_.stm_tokens(), d = config_.hidden_size;
  const DType dtype = v.pool.dtype;
  const bool float_type = dtype == DType::kF32 || dtype == DType::kBF16 || dtype == DType::kF16;
  bool valid = v.pool.data != nullptr && float_type && v.pool.shape.size() == 2 &&
               v.pool.shape[1] == d && v.slots() == n;
  for (int64_t slot = 0; valid && slot < n; ++slot) {
    valid = v.slot_rows[slot] >= 0 && v.slot_rows[slot] < v.pool.shape[0];
  }
  if (!valid) {
    return absl::InternalError(absl::StrCat("session short-term memory of layer ", layer,
                                            " is not ", n, " rows of ", d, " floats"));
  }
  return v;
}

absl::Status Model::UploadSlots(const ShortTermRows& stm, int64_t first, const Tensor& dst) const {
  const int64_t count = dst.rows();
  if (const void* run = stm.Contiguous(first, count); run != nullptr) {
    return backend_->CopyFromHost(run, stm.pool.dtype, dst);
  }
  // Gathered by the backend's copy (into its pinned staging on a GPU), not into a buffer first.
  return backend_->CopyRowsFromHost(
      count, stm.row_bytes(), stm.pool.dtype,
      [&](int64_t row, int64_t rows, void* out) { stm.CopySlots(first + row, rows, out); }, dst);
}

absl::Status Model::Embed(absl::Span<const int32_t> ids, const Tensor& out) const {
  if (!embed_tokens_.empty()) return backend_->Embedding(embed_tokens_, ids, out);
  // A host gather (ids were checked by the caller) within one widening upload.
  const TensorView& table = weights_.embed_tokens;
  const size_t row_bytes = static_cast<size_t>(config_.hidden_size) * DTypeSize(table.dtype);
  return backend_->CopyRowsFromHost(
      static_cast<int64_t>(ids.size()), row_bytes, table.dtype,
      [&](int64_t first, int64_t count, void* out) {
        for (int64_t i = 0; i < count; ++i) {
          std::memcpy(static_cast<char*>(out) + i * row_bytes,
                      HostRow(table, ids[first + i], config_.hidden_size), row_bytes);
        }
      },
      out);
}

absl::Status Model::CopyBos(int layer, const Tensor& row) const {
  const TensorView& bos = weights_.bos_embedding;
  return backend_->CopyFromHost(HostRow(bos, layer, config_.hidden_size), bos.dtype, row);
}

absl::Status Model::LogitsOnDevice(const Tensor& last_hidden, const Tensor& logits) const {
  Backend& b = *backend_;
  MPLUS_ASSIGN_OR_RETURN(Tensor normed, Alloc(b, 1, config_.hidden_size));
  MPLUS_RETURN_IF_ERROR(b.RmsNorm(last_hidden, final_norm_, dims_.rms_eps, normed));
  return b.MatMul(normed, lm_head_, logits);
}

absl::StatusOr<std::vector<float>> Model::Logits(const Tensor& last_hidden) const {
  MPLUS_ASSIGN_OR_RETURN(Tensor logits, Alloc(*backend_, 1, lm_head_.rows()));
  MPLUS_RETURN_IF_ERROR(LogitsOnDevice(last_hidden, logits));
  std::vector<float> out(static_cast<size_t>(lm_head_.rows()));
  MPLUS_RETURN_IF_ERROR(backend_->CopyToHost(logits, out.data()));
  return out;
}

absl::StatusOr<std::vector<float>> Model::DroppedKeys(int layer, const ShortTermRows& stm,
                                                      absl::Span<const int32_t> slots) const {
  Backend& b = *backend_;
  const int64_t d = config_.hidden_size, k = static_cast<int64_t>(slots.size());
  const size_t row_bytes = stm.row_bytes();
  std::vector<char> rows(static_cast<size_t>(k) * row_bytes);
  for (int64_t i = 0; i < k; ++i) {
    std::memcpy(rows.data() + i * row_bytes, stm.Row(slots[i]), row_bytes);
  }
  MPLUS_ASSIGN_OR_RETURN(Tensor tokens, Alloc(b, k, d));
  MPLUS_RETURN_IF_ERROR(b.CopyFromHost(rows.data(), stm.pool.dtype, tokens));
  // key = key_proj(input_layernorm(token)), from the token as stored when it is dropped.
  MPLUS_RETURN_IF_ERROR(b.RmsNorm(tokens, layers_[layer].input_layernorm, dims_.rms_eps, tokens));
  MPLUS_ASSIGN_OR_RETURN(Tensor keys, Project(b, tokens, layers_[layer].key_proj));
  std::vector<float> out(static_cast<size_t>(keys.numel()));
  MPLUS_RETURN_IF_ERROR(b.CopyToHost(keys, out.data()));
  return out;
}

absl::StatusOr<InjectResult> Model::Inject(const SessionMemory& mem, absl::Span<const int32_t> ids,
                                           const std::vector<std::vector<int32_t>>& drops) const {
  if (!config_.has_memory()) {
    return absl::FailedPreconditionError("inject: this checkpoint has no memory (plain Llama)");
  }
  MPLUS_RETURN_IF_ERROR(CheckIds(ids, "inject"));
  const int num_layers = static_cast<int>(layers_.size());
  const int64_t t = static_cast<int64_t>(ids.size()), k = config_.num_tokens;
  const int64_t n = config_.stm_tokens(), d = config_.hidden_size;
  const int64_t bos = bos_rows();
  const int64_t s = bos + k + t;  // [bos ; STM[N-K:] ; chunk]
  if (s > max_context_) {
    return absl::InvalidArgumentError(absl::StrCat(
        "inject: chunk of ", t, " tokens exceeds the context limit ", max_context_ - bos - k));
  }
  if (static_cast<int>(drops.size()) != num_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("inject: drop lists for ", drops.size(), " layers, expected ", num_layers));
  }
  InjectResult result;
  result.delta.resize(num_layers);
  result.dropped.resize(num_layers);
  for (int l = 0; l < num_layers; ++l) {
    std::vector<int32_t> slots = drops[l];
    std::sort(slots.begin(), slots.end());
    const bool in_range = slots.empty() || (slots.front() >= 0 && slots.back() < n);
    if (static_cast<int64_t>(slots.size()) != k || !in_range ||
        std::adjacent_find(slots.begin(), slots.end()) != slots.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("inject: layer ", l, " must drop ", k, " distinct slots of [0, ", n, ")"));
    }
    result.dropped[l] = std::move(slots);
  }

  Backend& b = *backend_;
  const int64_t nq = std::max(t, k);  // if T < K the last K - T STM tokens are queries too
  // seq = [bos ; STM tail ; context]; the context rows are the residual stream, which
  // LayerForward updates in place (with the STM tail too when T < K).
  MPLUS_ASSIGN_OR_RETURN(Tensor seq, Alloc(b, s, d));
  MPLUS_RETURN_IF_ERROR(Embed(ids, seq.Rows(bos + k, s)));
  MPLUS_ASSIGN_OR_RETURN(Tensor k_cache, b.Allocate(inject_kv_dtype_, {s, dims_.kv_cols()}));
  MPLUS_ASSIGN_OR_RETURN(Tensor v_cache, b.Allocate(inject_kv_dtype_, {s, dims_.kv_cols()}));
  for (int l = 0; l < num_layers; ++l) {
    MPLUS_ASSIGN_OR_RETURN(ShortTermRows stm, CheckedShortTerm(mem, l));
    if (bos) MPLUS_RETURN_IF_ERROR(CopyBos(l, seq.Rows(0, 1)));
    MPLUS_RETURN_IF_ERROR(UploadSlots(stm, n - k, seq.Rows(bos, bos + k)));
    MPLUS_RETURN_IF_ERROR(b.AddRow(seq.Rows(s - k, s), new_memory_positional_emb_));
    MPLUS_ASSIGN_OR_RETURN(Tensor out, LayerForward(b, dims_, layers_[l], Adapter::kEncoder, seq,
                                                    nq, k_cache, v_cache, 0, inv_freq_));
    result.delta[l].resize(static_cast<size_t>(k * d));
    MPLUS_RETURN_IF_ERROR(b.CopyToHost(out.Rows(nq - k, nq), result.delta[l].data()));
  }
  if (config_.has_long_term()) {
    result.dropped_keys.resize(num_layers);
    for (int l = 0; l < num_layers; ++l) {
      MPLUS_ASSIGN_OR_RETURN(ShortTermRows stm, CheckedShortTerm(mem, l));
      MPLUS_ASSIGN_OR_RETURN(result.dropped_keys[l], DroppedKeys(l, stm, result.dropped[l]));
    }
  }
  return result;
}

absl::Status Model::MemoryPrefix(SessionMemory& mem, PrefixCache* cache, int layer,
                                 const Tensor& kc, const Tensor& vc) const {
  Backend& b = *backend_;
  const DeviceLayer& lw = layers_[layer];
  const int64_t n = config_.stm_tokens(), d = config_.hidden_size, kv = dims_.kv_cols();
  const int64_t bos = bos_rows(), stm_begin = bos + config_.ltm_retrieved_tokens();
  const int64_t rows = bos + n;  // cache order: bos, then the STM slots
  const bool filled = cache != nullptr && static_cast<int>(cache->keys_.size()) > layer;

  // Leading rows the cache holds (bos and a prefix of the slots), as cache rows in slot order.
  std::vector<int32_t> gather;
  bool in_order = true;
  if (filled) {
    const std::vector<int32_t>& slot_rows = cache->slot_rows_[layer];
    gather.assign(static_cast<size_t>(bos), 0);
    for (int64_t slot = 0; slot < n && slot_rows[slot] >= 0; ++slot) {
      in_order = in_order && slot_rows[slot] == bos + slot;
      gather.push_back(slot_rows[slot]);
    }
  }
  const int64_t have = static_cast<int64_t>(gather.size());
  // The cache ends up with every row in slot order. In order, it is completed in place; else
  // the rows go to new tensors (the gathers still read the old ones) that replace it at the end.
  const bool rewrite = cache != nullptr && (!filled || have < rows || !in_order);
  const bool in_place = rewrite && filled && in_order;
  Tensor cache_keys, cache_values;
  if (in_place) {
    cache_keys = cache->keys_[layer];
    cache_values = cache->values_[layer];
  } else if (rewrite) {
    MPLUS_ASSIGN_OR_RETURN(cache_keys, b.Allocate(kv_dtype_, {rows, kv}));
    MPLUS_ASSIGN_OR_RETURN(cache_values, b.Allocate(kv_dtype_, {rows, kv}));
  }
  ShortTermRows stm;
  if (have < rows) {
    MPLUS_ASSIGN_OR_RETURN(stm, CheckedShortTerm(mem, layer));
  }

  // The prefix goes in chunks of prefix_chunk_rows_ (ModelOptions): the float32 transients of a
  // whole short-term memory would be large (mplus-8b: 12.8k rows x 4096 = 210 MB per layer).
  // Rows [r0, r1): gathered from the cache (r1 <= have) or projected from memory (r0 >= have);
  // keys before RoPE and values in float32, then rotated into the KV cache at their positions
  // in this generation (bos at 0, STM slots from stm_begin).
  auto chunk = [&](int64_t r0, int64_t r1) -> absl::Status {
    MPLUS_ASSIGN_OR_RETURN(Tensor keys, Alloc(b, r1 - r0, kv));
    MPLUS_ASSIGN_OR_RETURN(Tensor values, Alloc(b, r1 - r0, kv));
    if (r1 <= have) {  // Embedding is a row gather: out[i] = table[ids[i]], widened
      const auto ids = absl::MakeConstSpan(gather).subspan(static_cast<size_t>(r0),
                                                           static_cast<size_t>(r1 - r0));
      MPLUS_RETURN_IF_ERROR(b.Embedding(cache->keys_[layer], ids, keys));
      MPLUS_RETURN_IF_ERROR(b.Embedding(cache->values_[layer], ids, values));
    } else {
      MPLUS_ASSIGN_OR_RETURN(Tensor x, Alloc(b, r1 - r0, d));
      if (r0 < bos) MPLUS_RETURN_IF_ERROR(CopyBos(layer, x.Rows(0, bos - r0)));
      if (const int64_t s0 = std::max(r0, bos); s0 < r1) {
        MPLUS_RETURN_IF_ERROR(UploadSlots(stm, s0 - bos, x.Rows(s0 - r0, r1 - r0)));
      }
      MPLUS_RETURN_IF_ERROR(b.RmsNorm(x, lw.input_layernorm, dims_.rms_eps, x));
      MPLUS_RETURN_IF_ERROR(KeysValues(b, dims_, lw, Adapter::kDecoder, x, keys, values));
    }
    if (rewrite && !(in_place && r1 <= have)) {  // rows the cache does not hold yet
      MPLUS_RETURN_IF_ERROR(b.Copy(keys, cache_keys.Rows(r0, r1)));
      MPLUS_RETURN_IF_ERROR(b.Copy(values, cache_values.Rows(r0, r1)));
    }
    if (r0 < bos) {
      const int64_t zero = 0;
      MPLUS_RETURN_IF_ERROR(StoreKeysValues(b, dims_, keys.Rows(0, bos), values.Rows(0, bos),
                                            absl::MakeConstSpan(&zero, 1), inv_freq_, kc, vc, 0));
    }
    const int64_t s0 = std::max(r0, bos);
    if (s0 == r1) return absl::OkStatus();
    std::vector<int64_t> positions(static_cast<size_t>(r1 - s0));
    std::iota(positions.begin(), positions.end(), stm_begin + (s0 - bos));
    return StoreKeysValues(b, dims_, keys.Rows(s0 - r0, r1 - r0), values.Rows(s0 - r0, r1 - r0),
                           positions, inv_freq_, kc, vc, stm_begin + (s0 - bos));
  };
  // Gathered rows [0, have), then projected rows [have, rows): no chunk mixes the two.
  for (const auto& [begin, end] : {std::pair<int64_t, int64_t>{0, have}, {have, rows}}) {
    for (int64_t r0 = begin; r0 < end;) {
      const int64_t r1 = ChunkEnd(r0, end, prefix_chunk_rows_);
      MPLUS_RETURN_IF_ERROR(chunk(r0, r1));
      r0 = r1;
    }
  }

  if (!rewrite) return absl::OkStatus();
  if (!filled) {
    cache->keys_.push_back(std::move(cache_keys));
    cache->values_.push_back(std::move(cache_values));
    cache->slot_rows_.emplace_back();
  } else if (!in_place) {
    cache->keys_[layer] = std::move(cache_keys);
    cache->values_[layer] = std::move(cache_values);
  }
  std::vector<int32_t>& slot_rows = cache->slot_rows_[layer];
  slot_rows.resize(static_cast<size_t>(n));
  for (int64_t slot = 0; slot < n; ++slot) slot_rows[slot] = static_cast<int32_t>(bos + slot);
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<DecodeState>> Model::Prefill(SessionMemory& mem,
                                                            absl::Span<const int32_t> prompt,
                                                            int64_t max_new_tokens,
                                                            bool want_retrieved,
                                                            PrefillOutput* out) const {
  MPLUS_RETURN_IF_ERROR(CheckIds(prompt, "generate"));
  if (max_new_tokens < 0) {
    return absl::InvalidArgumentError("generate: max_new_tokens must not be negative");
  }
  const int num_layers = static_cast<int>(layers_.size());
  const int64_t t = static_cast<int64_t>(prompt.size()), d = config_.hidden_size;
  const int64_t p = prefix_length(), k_ltm = config_.ltm_retrieved_tokens();
  const int64_t bos = bos_rows();
  if (p + t + max_new_tokens > max_context_) {
    return absl::InvalidArgumentError(
        absl::StrCat("generate: prompt of ", t, " tokens plus ", max_new_tokens,
                     " new tokens exceeds the context limit ", max_context_ - p));
  }
  Backend& b = *backend_;
  auto state = std::make_unique<DecodeState>();
  state->capacity_ = p + t + max_new_tokens;
  state->try_recording_ = replay_decode_;
  for (int l = 0; l < num_layers; ++l) {
    MPLUS_ASSIGN_OR_RETURN(Tensor kc, b.Allocate(kv_dtype_, {state->capacity_, dims_.kv_cols()}));
    MPLUS_ASSIGN_OR_RETURN(Tensor vc, b.Allocate(kv_dtype_, {state->capacity_, dims_.kv_cols()}));
    state->k_cache_.push_back(std::move(kc));
    state->v_cache_.push_back(std::move(vc));
  }
  if (want_retrieved) out->retrieved.assign(num_layers, {});

  // The memory prefix's bos and STM rows (positions 0 and stm_begin..p-1 in every generate) come
  // from MemoryPrefix; seq holds the rows projected by LayerForward: [retrieved ; prompt].
  PrefixCache* cache = config_.has_memory() ? mem.prefix_cache() : nullptr;
  if (cache != nullptr && cache->model_id_ != id_) {
    cache->Clear();  // empty, or another model's
    cache->model_id_ = id_;
  }
  std::vector<SeqSegment> segments;
  if (k_ltm > 0) segments.push_back({0, k_ltm, bos});
  segments.push_back({k_ltm, t, p});

  // seq = [retrieved ; prompt]; the prompt rows h are the residual stream, which LayerForward
  // updates in place.
  MPLUS_ASSIGN_OR_RETURN(Tensor seq, Alloc(b, k_ltm + t, d));
  const Tensor h = seq.Rows(k_ltm, k_ltm + t);
  MPLUS_RETURN_IF_ERROR(Embed(prompt, h));
  std::vector<char> retrieved;  // K_ltm rows in the session's storage dtype
  for (int l = 0; l < num_layers; ++l) {
    const Tensor& kc = state->k_cache_[l];
    const Tensor& vc = state->v_cache_[l];
    if (config_.has_long_term()) {
      // Retrieval scores with this layer's input hidden states of the prompt.
      MPLUS_ASSIGN_OR_RETURN(Tensor normed, Alloc(b, t, d));
      MPLUS_RETURN_IF_ERROR(b.RmsNorm(h, layers_[l].input_layernorm, dims_.rms_eps, normed));
      MPLUS_ASSIGN_OR_RETURN(Tensor queries, Project(b, normed, layers_[l].query_proj));
      RetrievalQueries layer_queries(b, std::move(queries));
      MPLUS_ASSIGN_OR_RETURN(ShortTermRows stm, CheckedShortTerm(mem, l));
      const DType dtype = stm.pool.dtype;
      MPLUS_ASSIGN_OR_RETURN(const std::vector<uint64_t> ids, mem.SelectLongTerm(l, layer_queries));
      if (static_cast<int64_t>(ids.size()) != k_ltm) {
        return absl::InternalError(
            absl::StrCat("layer ", l, " retrieved ", ids.size(), " long-term tokens, not ", k_ltm));
      }
      if (want_retrieved) {  // the rows are wanted on the host too
        retrieved.resize(static_cast<size_t>(k_ltm * d) * DTypeSize(dtype));
        MPLUS_RETURN_IF_ERROR(mem.ReadLongTerm(ids, retrieved.data()));
        MPLUS_RETURN_IF_ERROR(b.CopyFromHost(retrieved.data(), dtype, seq.Rows(0, k_ltm)));
        const TensorView rows{"retrieved", dtype, {k_ltm, d}, retrieved.data(), retrieved.size()};
        out->retrieved[l].resize(static_cast<size_t>(k_ltm * d));
        for (int64_t i = 0; i < k_ltm * d; ++i) out->retrieved[l][i] = rows.GetFloat(i);
      } else {
        // Read by the backend's copy (into its pinned staging on a GPU), not into a buffer first.
        absl::Status read;
        MPLUS_RETURN_IF_ERROR(b.CopyRowsFromHost(
            k_ltm, stm.row_bytes(), dtype,
            [&](int64_t first, int64_t count, void* rows) {
              if (read.ok()) {
                read = mem.ReadLongTerm(absl::MakeConstSpan(ids).subspan(first, count), rows);
              }
            },
            seq.Rows(0, k_ltm)));
        MPLUS_RETURN_IF_ERROR(read);
      }
    }
    if (config_.has_memory()) MPLUS_RETURN_IF_ERROR(MemoryPrefix(mem, cache, l, kc, vc));
    MPLUS_RETURN_IF_ERROR(
        LayerForward(b, dims_, layers_[l], Adapter::kDecoder, seq, t, kc, vc, segments, inv_freq_)
            .status());
  }
  state->length_ = p + t;
  MPLUS_ASSIGN_OR_RETURN(out->logits, Logits(h.Rows(t - 1, t)));
  return state;
}

absl::StatusOr<std::vector<float>> Model::Decode(DecodeState& state, int32_t token) const {
  MPLUS_RETURN_IF_ERROR(DecodeOnDevice(state, token));
  std::vector<float> logits(static_cast<size_t>(lm_head_.rows()));
  MPLUS_RETURN_IF_ERROR(backend_->CopyToHost(state.logits_, logits.data()));
  return logits;
}

absl::StatusOr<int32_t> Model::DecodeGreedy(DecodeState& state, int32_t token) const {
  MPLUS_RETURN_IF_ERROR(DecodeOnDevice(state, token));
  MPLUS_ASSIGN_OR_RETURN(const int64_t next, backend_->Argmax(state.logits_));
  return static_cast<int32_t>(next);
}

absl::Status Model::DecodeOnDevice(DecodeState& state, int32_t token) const {
  MPLUS_RETURN_IF_ERROR(CheckIds(absl::MakeConstSpan(&token, 1), "decode"));
  if (state.length_ >= state.capacity_) {
    return absl::OutOfRangeError(
        absl::StrCat("decode: the cache is full (", state.capacity_, " positions)"));
  }
  Backend& b = *backend_;
  if (state.hidden_.empty()) {
    MPLUS_ASSIGN_OR_RETURN(state.position_, b.Allocate(DType::kI64, {1}));
    MPLUS_ASSIGN_OR_RETURN(state.hidden_, Alloc(b, 1, config_.hidden_size));
    MPLUS_ASSIGN_OR_RETURN(state.logits_, Alloc(b, 1, lm_head_.rows()));
  }
  MPLUS_RETURN_IF_ERROR(Embed(absl::MakeConstSpan(&token, 1), state.hidden_));
  MPLUS_RETURN_IF_ERROR(b.CopyFromHost(&state.length_, DType::kI64, state.position_));
  // Recording costs about one step; it pays off over the steps left.
  constexpr int64_t kMinStepsToRecord = 4;
  if (state.step_ == nullptr && state.try_recording_ &&
      state.capacity_ - state.length_ >= kMinStepsToRecord) {
    absl::StatusOr<std::unique_ptr<Recording>> step =
        b.Record([this, &state] { return DecodeStep(state); });
    if (step.ok()) {
      state.step_ = *std::move(step);
    } else {
      // Not recordable here (the CPU, or an op that cannot be recorded): step by step.
      state.try_recording_ = false;
      state.recording_status_ = step.status();
    }
  }
  MPLUS_RETURN_IF_ERROR(state.step_ != nullptr ? state.step_->Replay() : DecodeStep(state));
  ++state.length_;
  return absl::OkStatus();
}

absl::Status Model::DecodeStep(DecodeState& state) const {
  Backend& b = *backend_;
  Tensor h = state.hidden_;
  for (size_t l = 0; l < layers_.size(); ++l) {
    MPLUS_ASSIGN_OR_RETURN(
        h, LayerForwardAt(b, dims_, layers_[l], Adapter::kDecoder, h, state.k_cache_[l],
                          state.v_cache_[l], state.position_, inv_freq_));
  }
  return LogitsOnDevice(h, state.logits_);
}

absl::StatusOr<std::vector<int32_t>> Model::Generate(SessionMemory& mem,
                                                     absl::Span<const int32_t> prompt,
                                                     int64_t max_new_tokens,
                                                     const TokenPicker& pick,
                                                     const TokenCallback& on_token) const {
  std::vector<int32_t> tokens;
  MPLUS_RETURN_IF_ERROR(CheckIds(prompt, "generate"));
  if (max_new_tokens == 0) return tokens;
  PrefillOutput first;
  MPLUS_ASSIGN_OR_RETURN(std::unique_ptr<DecodeState> state,
                         Prefill(mem, prompt, max_new_tokens, false, &first));
  std::vector<float> logits = std::move(first.logits);
  while (true) {
    const int32_t token = pick(logits);
    tokens.push_back(token);
    if ((on_token && !on_token(token)) || static_cast<int64_t>(tokens.size()) == max_new_tokens) {
      return tokens;
    }
    MPLUS_ASSIGN_OR_RETURN(logits, Decode(*state, token));
  }
}

}  // namespace mplus::engine
