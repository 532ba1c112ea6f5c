// Typed, validated views of every checkpoint tensor the model uses (official state-dict names).
#ifndef MPLUS_ENGINE_MODEL_WEIGHTS_H_
#define MPLUS_ENGINE_MODEL_WEIGHTS_H_

#include <vector>

#include "absl/status/statusor.h"
#include "engine/model_config.h"
#include "engine/safetensors.h"

namespace mplus::engine {

// peft adapter names: "default" is the encoder adapter (inject), "decoder_adapter" generates.
enum class Adapter : int { kEncoder = 0, kDecoder = 1 };
inline constexpr int kNumAdapters = 2;

// y = W x, plus (alpha/r) B (A x) for the active adapter when the module is LoRA-wrapped.
struct LinearWeights {
  TensorView weight;                // [out, in]: "<m>.base_layer.weight" or "<m>.weight"
  TensorView lora_a[kNumAdapters];  // [r, in]; data == nullptr when absent
  TensorView lora_b[kNumAdapters];  // [out, r]
  bool has_lora(Adapter a) const { return lora_a[static_cast<int>(a)].data != nullptr; }
};

// Retriever projector: 1 layer (Linear d->p) or 2 (Linear d->2p, act, Linear 2p->p); no bias.
struct ProjectorWeights {
  std::vector<TensorView> linears;
};

struct LayerWeights {
  TensorView input_layernorm, post_attention_layernorm;  // [d]
  LinearWeights q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj;
  ProjectorWeights query_proj, key_proj;  // M+ only
};

struct ModelWeights {
  TensorView embed_tokens;  // [V, d]
  TensorView final_norm;    // [d]
  TensorView lm_head;       // [V, d]; the embedding when tie_word_embeddings
  std::vector<LayerWeights> layers;

  // MemoryLLM / M+.
  TensorView memory;                     // [L, N, d] initial short-term memory
  TensorView bos_embedding;              // [L, 1, d]
  TensorView new_memory_positional_emb;  // [1, 1, d]

  // M+ initial long-term memory, per layer.
  std::vector<TensorView> ltm;                     // [n0, d]
  std::vector<TensorView> ltm_keys;                // [n0, p]
  std::vector<TensorView> ltm_ages;                // [n0] (read with truncation to integers)
  std::vector<TensorView> ltm_recall_frequencies;  // [n0]

  // Finds and validates every tensor the config implies (presence, float dtype, exact shape);
  // errors name the file, the tensor, and expected vs. found. Views stay valid while `store`
  // lives.
  static absl::StatusOr<ModelWeights> Load(const WeightStore& store, const ModelConfig& config);
};

}  // namespace mplus::engine

#endif  // MPLUS_ENGINE_MODEL_WEIGHTS_H_
