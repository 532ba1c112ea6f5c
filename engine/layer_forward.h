// One decoder layer over [prefix ; x] on a Backend, plus the device copies of the weights it
// reads. Internal to the model (engine/model.cc); shapes follow MPLUS-DETAILS.md.
#ifndef MPLUS_ENGINE_LAYER_FORWARD_H_
#define MPLUS_ENGINE_LAYER_FORWARD_H_

#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/backend.h"
#include "engine/model_config.h"
#include "engine/model_weights.h"

namespace mplus::engine {

struct DeviceLinear {
  Tensor weight;                // [out, in]
  Tensor lora_a[kNumAdapters];  // [r, in]; empty when the adapter does not wrap this module
  Tensor lora_b[kNumAdapters];  // [out, r]
};

struct DeviceProjector {
  std::vector<Tensor> linears;  // 1: d->p; 2: d->2p, silu, 2p->p
};

struct DeviceLayer {
  Tensor input_layernorm, post_attention_layernorm;
  DeviceLinear q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj;
  DeviceProjector query_proj, key_proj;
};

// Sizes every layer shares.
struct LayerDims {
  int64_t hidden = 0, heads = 0, kv_heads = 0, head_dim = 0, intermediate = 0;
  float rms_eps = 1e-5f;
  float lora_scale = 0;  // alpha / r
  // Rows of a layer's MLP computed at once (ModelOptions::mlp_chunk_rows).
  int64_t mlp_chunk_rows = 512;
  int64_t kv_cols() const { return kv_heads * head_dim; }
};

absl::StatusOr<DeviceLayer> UploadLayer(Backend& backend, const LayerWeights& weights);

// out = x W^T (+ lora_scale * (x A^T) B^T when `adapter` wraps the module), or with accumulate
// out += that (a residual add: Backend::LoraMatMul).
absl::Status Linear(Backend& backend, const Tensor& x, const DeviceLinear& linear, Adapter adapter,
                    float lora_scale, const Tensor& out, bool accumulate = false);

// The retriever projector on already-normalised rows: returns [rows, p].
absl::StatusOr<Tensor> Project(Backend& backend, const Tensor& normed,
                               const DeviceProjector& projector);

// Keys (before RoPE) and values of already-normalised rows: k_out / v_out [rows, kv_cols].
// Each row's result depends on that row only, up to how the backend's MatMul rounds a call of
// that many rows (the CPU's is row-count independent above kGemvMaxRows rows).
absl::Status KeysValues(Backend& backend, const LayerDims& dims, const DeviceLayer& layer,
                        Adapter adapter, const Tensor& normed, const Tensor& k_out,
                        const Tensor& v_out);

// Stores float32 keys k (before RoPE, rotated at `positions`) and values v into the KV cache
// rows first_row.. in the caches' dtype (Backend::StoreKeysValues; k is scratch afterwards). With
// a bfloat16 cache the keys are rounded to bfloat16 before RoPE too (the official bf16 model
// projects and rotates in bf16); k and v already rounded to the cache dtype give bitwise the
// same result.
absl::Status StoreKeysValues(Backend& backend, const LayerDims& dims, const Tensor& k,
                             const Tensor& v, absl::Span<const int64_t> positions,
                             const Tensor& inv_freq, const Tensor& k_cache, const Tensor& v_cache,
                             int64_t first_row);

// A run of `seq` rows and where it sits in the sequence: rows [seq_begin, seq_begin + rows) of
// seq are at positions (= KV cache rows) cache_row .. cache_row + rows - 1.
struct SeqSegment {
  int64_t seq_begin = 0, rows = 0, cache_row = 0;
};

// Runs one layer. `seq` holds the rows of `segments` (in seq order, ascending positions, none
// empty); their keys and values are written to the k_cache / v_cache ([capacity, kv_cols]) rows
// of their positions. Cache rows below the end of the last segment that no segment covers must
// already hold their (rotated) keys and values. The last `num_queries` rows of seq, all in the
// last segment, are the queries, attending to all cached keys up to their own position. The
// layer's output replaces them (the residual stream is updated in place, so the residual adds
// ride in the o_proj and down_proj epilogues); returns that view of seq [num_queries, hidden].
// Each segment's keys and values come from their own MatMul calls, so they do not depend on the
// other segments.
absl::StatusOr<Tensor> LayerForward(Backend& backend, const LayerDims& dims,
                                    const DeviceLayer& layer, Adapter adapter, const Tensor& seq,
                                    int64_t num_queries, const Tensor& k_cache,
                                    const Tensor& v_cache, absl::Span<const SeqSegment> segments,
                                    const Tensor& inv_freq);

// One decode step's layer: seq is the one row of the token at `position` (an int64 [1] tensor on
// the backend, read by the ops: Backend::StoreKeysValuesAt etc.), whose key and value go to that
// row of k_cache / v_cache and which attends to rows [0, position]. As LayerForward otherwise, so
// a recorded step (Backend::Record) replays at whatever position the tensor then holds.
absl::StatusOr<Tensor> LayerForwardAt(Backend& backend, const LayerDims& dims,
                                      const DeviceLayer& layer, Adapter adapter, const Tensor& seq,
                                      const Tensor& k_cache, const Tensor& v_cache,
                                      const Tensor& position, const Tensor& inv_freq);

// The same with all of seq at positions cache_len .. cache_len + S - 1.
absl::StatusOr<Tensor> LayerForward(Backend& backend, const LayerDims& dims,
                                    const DeviceLayer& layer, Adapter adapter, const Tensor& seq,
                                    int64_t num_queries, const Tensor& k_cache,
                                    const Tensor& v_cache, int64_t cache_len,
                                    const Tensor& inv_freq);

}  // namespace mplus::engine

#endif  // MPLUS_ENGINE_LAYER_FORWARD_H_
