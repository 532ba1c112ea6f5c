// The M+ / MemoryLLM / Llama forward: inject (write a chunk into memory), prefill with
// long-term retrieval, and KV-cached decoding, all through one Backend. Plain Llama checkpoints
// have an empty memory prefix; MemoryLLM has [bos ; STM]; M+ has [bos ; retrieved LTM ; STM].
// The model never changes memory itself: Inject returns what the session must commit.
#ifndef MPLUS_ENGINE_MODEL_H_
#define MPLUS_ENGINE_MODEL_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/backend.h"
#include "engine/drop_slots.h"
#include "engine/layer_forward.h"
#include "engine/lora_merge.h"
#include "engine/model_config.h"
#include "engine/model_weights.h"
#include "engine/prefix_cache.h"
#include "engine/safetensors.h"
#include "engine/session_memory.h"

namespace mplus::engine {

// Chunks of at least this many rows keep the CPU's MatMul on its GEMM path (> kGemvMaxRows),
// so results do not depend on the chunking.
inline constexpr int64_t kMinPrefixChunkRows = 16;

struct ModelOptions {
  // CPU backend threads (<= 0: one per CPU the process may use); ignored when `backend` is given.
  int num_threads = 0;
  // bf16 checkpoints only: round RoPE inv_freq to bf16 as the official bf16 recipe does
  // (MPLUS.md); false keeps the float32 frequencies. float32 checkpoints always use float32.
  bool bf16_rope_inv_freq = true;
  // Longest sequence one forward may hold (prefix + prompt + generated tokens);
  // 0: config max_position_embeddings (no limit if that is 0).
  int64_t max_context = 0;
  // Rows of the memory prefix projected at once (at least kMinPrefixChunkRows): bounds the
  // float32 transients of a generation's prefix (hidden states, keys, values) per layer.
  int64_t prefix_chunk_rows = 1024;
  // Rows of a layer's MLP computed at once (at least kMinPrefixChunkRows): bounds its two float32
  // [rows, intermediate] transients for long prompts (mplus-8b: 2 x 512 x 14336 x 4 bytes) at
  // little cost to GEMM efficiency.
  int64_t mlp_chunk_rows = 512;
  // Decode steps replay the first step's recorded ops (Backend::Record: one CUDA graph launch
  // instead of ~500 kernel launches) where the backend can record them; false: every step
  // enqueues its ops one by one.
  bool replay_decode = true;
  // Element type of a generation's KV cache and of the sessions' prefix caches: null (auto) is
  // the official model's (bf16 for bf16 checkpoints, else float32); kF8E4M3 halves their bytes
  // against bf16 (GPU memory, and what every decode step reads) at float8 precision. Inject
  // always runs at the automatic type: its outputs become memory.
  std::optional<DType> kv_cache_dtype;
  // Fold the decoder LoRA into the base weights at load (engine/lora_merge.h): generation's
  // linears become plain products (a GPU's decode step reads no LoRA matrices and launches no
  // LoRA GEMVs), and the encoder adapter gains the decoder's rank to take the term back out for
  // inject. Results move by one rounding of each merged weight to the checkpoint's dtype. null
  // (auto): where the backend copies weights (a GPU); on the CPU the merged weights would be a
  // second host copy of every adapted weight.
  std::optional<bool> merge_decoder_lora;
  // Backend to run on; null: a CPU backend.
  std::shared_ptr<Backend> backend;
};

// --kv_cache_dtype spellings: "auto" (null), "f32", "bf16", "fp8".
absl::StatusOr<std::optional<DType>> ParseKvCacheDType(std::string_view name);
// --merge_decoder_lora spellings: "auto" (null), "true", "false".
absl::StatusOr<std::optional<bool>> ParseMergeDecoderLora(std::string_view name);

// Chooses the next token from the logits of the last position (greedy, sampling, ...).
using TokenPicker = std::function<int32_t(absl::Span<const float> logits)>;
// Receives each generated token; returning false stops generation.
using TokenCallback = std::function<bool(int32_t token)>;

// The KV cache of one generation (prefix + prompt + decoded tokens), on the model's device, and
// the buffers of its decode steps.
class DecodeState {
 public:
  int64_t length() const { return length_; }
  int64_t capacity() const { return capacity_; }
  // Whether decode steps replay a recording (Backend::Record) rather than enqueue op by op; if
  // not, why (OK: not tried yet, or off).
  bool replaying() const { return step_ != nullptr; }
  const absl::Status& recording_status() const { return recording_status_; }
  // Overrides ModelOptions::replay_decode for this generation's steps to come (false drops a
  // recording made).
  void set_replay_decode(bool replay) {
    if (!replay) step_.reset();
    try_recording_ = replay;
  }

 private:
  friend class Model;
  std::vector<Tensor> k_cache_, v_cache_;  // per layer [capacity, kv_heads * head_dim], kv_dtype
  int64_t length_ = 0;
  int64_t capacity_ = 0;
  // A decode step reads its token's position (int64 [1]) and embedding ([1, hidden], then the
  // residual stream) from, and writes its logits ([1, vocab]) to, the same tensors every time.
  Tensor position_, hidden_, logits_;
  std::unique_ptr<Recording> step_;  // the step's ops as recorded, once recorded
  bool try_recording_ = false;       // ModelOptions::replay_decode; false once recording failed
  absl::Status recording_status_;
};

struct PrefillOutput {
  std::vector<float> logits;                  // [vocab] at the last prompt position
  std::vector<std::vector<float>> retrieved;  // [L][K_ltm * hidden] in prefix order, if asked
};

class Model {
 public:
  // Opens `checkpoint_dir` (config.json + safetensors), validates every tensor, and makes the
  // weights usable by the backend.
  static absl::StatusOr<std::unique_ptr<Model>> Load(const std::string& checkpoint_dir,
                                                     const ModelOptions& options);

  const ModelConfig& config() const { return config_; }
  // Host views of every checkpoint tensor (initial memory for sessions); valid while the model
  // lives.
  const ModelWeights& weights() const { return weights_; }
  Backend& backend() const { return *backend_; }
  int64_t max_context() const { return max_context_; }
  // Whether the decoder LoRA was folded into the base weights (ModelOptions::merge_decoder_lora).
  bool decoder_lora_merged() const { return decoder_lora_merged_; }
  // Element type of KV caches and prefix caches: bfloat16 for bf16 checkpoints (as the official
  // bf16 model keeps K and V), float32 otherwise.
  DType kv_dtype() const { return kv_dtype_; }
  // Rows before the prompt in a generate forward: bos + K_ltm + N (0 for plain Llama).
  int64_t prefix_length() const;

  // Writes the chunk `ids` (no BOS added) against `mem`'s current short-term memory and returns
  // the new memory tokens, the dropped slots (`drops[l]`: K distinct slots of [0, N) per layer,
  // any order) and, for M+, their retrieval keys. Encoder LoRA. Memory checkpoints only.
  absl::StatusOr<InjectResult> Inject(const SessionMemory& mem, absl::Span<const int32_t> ids,
                                      const std::vector<std::vector<int32_t>>& drops) const;

  // First forward of a generation over `prompt` with retrieval (decoder LoRA). Room is kept in
  // the cache for `max_new_tokens` more tokens. Fills `out` (retrieved only when
  // `want_retrieved`). When `mem` keeps a prefix cache, the bos and STM rows it holds are copied
  // instead of projected, the others (all at first, the new tokens after an inject) are
  // projected and stored: the results are bitwise those of an uncached prefill whenever the
  // backend's MatMul rounds each row independently of the call's row count (the CPU backend
  // when the new rows are more than kGemvMaxRows), otherwise equal up to summation order.
  absl::StatusOr<std::unique_ptr<DecodeState>> Prefill(SessionMemory& mem,
                                                       absl::Span<const int32_t> prompt,
                                                       int64_t max_new_tokens, bool want_retrieved,
                                                       PrefillOutput* out) const;
  // Appends `token` and returns the logits of its position.
  absl::StatusOr<std::vector<float>> Decode(DecodeState& state, int32_t token) const;
  // Appends `token` and returns the greedy next token: the argmax of the logits Decode would
  // return (NaN never, the lowest id on ties), taken on the backend's device, so a GPU sends back
  // one index instead of the vocabulary's logits.
  absl::StatusOr<int32_t> DecodeGreedy(DecodeState& state, int32_t token) const;

  // Prefill, then up to max_new_tokens tokens chosen by `pick`, each passed to `on_token`
  // (which may stop early by returning false). Returns the generated tokens.
  absl::StatusOr<std::vector<int32_t>> Generate(SessionMemory& mem,
                                                absl::Span<const int32_t> prompt,
                                                int64_t max_new_tokens, const TokenPicker& pick,
                                                const TokenCallback& on_token) const;

 private:
  Model() = default;
  absl::Status CheckIds(absl::Span<const int32_t> ids, const char* what) const;
  absl::StatusOr<ShortTermRows> CheckedShortTerm(const SessionMemory& mem, int layer) const;
  // Slots [first, first + dst.rows()) of `stm` to `dst`: straight from the pool when their rows
  // are one run, else gathered on the host first.
  absl::Status UploadSlots(const ShortTermRows& stm, int64_t first, const Tensor& dst) const;
  absl::Status CopyBos(int layer, const Tensor& row) const;
  // out[i] = the embedding of ids[i] (in range), float32.
  absl::Status Embed(absl::Span<const int32_t> ids, const Tensor& out) const;
  // 1 when the memory prefix starts with the bos embedding, else 0.
  int64_t bos_rows() const;
  // Writes layer `layer`'s bos and STM keys (rotated) and values into a generation's KV cache
  // rows 0 and bos + K_ltm .., taking the rows `cache` holds and projecting the others from the
  // short-term memory; refreshes `cache` (when not null) to hold all of them.
  absl::Status MemoryPrefix(SessionMemory& mem, PrefixCache* cache, int layer, const Tensor& kc,
                            const Tensor& vc) const;
  // logits [1, vocab] of the last hidden row.
  absl::Status LogitsOnDevice(const Tensor& last_hidden, const Tensor& logits) const;
  absl::StatusOr<std::vector<float>> Logits(const Tensor& last_hidden) const;
  // Appends `token`, leaving its position's logits in state.logits_ on the device.
  absl::Status DecodeOnDevice(DecodeState& state, int32_t token) const;
  // Enqueues the ops of one decode step over `state`'s step tensors.
  absl::Status DecodeStep(DecodeState& state) const;
  absl::StatusOr<std::vector<float>> DroppedKeys(int layer, const ShortTermRows& stm,
                                                 absl::Span<const int32_t> slots) const;

  uint64_t id_ = 0;  // unique per loaded model: tags the prefix caches it fills
  ModelConfig config_;
  std::unique_ptr<WeightStore> store_;
  ModelWeights weights_;
  std::shared_ptr<Backend> backend_;
  LayerDims dims_;
  std::vector<DeviceLayer> layers_;
  bool decoder_lora_merged_ = false;
  // The merged weights' host bytes, kept only where the backend borrows them (the CPU).
  std::vector<MergedLinear> merged_host_;
  Tensor embed_tokens_;  // empty on a GPU: Embed gathers rows on the host
  Tensor final_norm_, lm_head_, new_memory_positional_emb_, inv_freq_;
  int64_t max_context_ = 0;
  int64_t prefix_chunk_rows_ = 1024;
  bool replay_decode_ = true;
  DType kv_dtype_ = DType::kF32;         // generations' KV and prefix caches (kv_cache_dtype)
  DType inject_kv_dtype_ = DType::kF32;  // an inject's transient KV cache
};

}  // namespace mplus::engine

#endif  // MPLUS_ENGINE_MODEL_H_
