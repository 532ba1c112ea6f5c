// config.json of Llama, MemoryLLM and M+ checkpoints.
#ifndef MPLUS_ENGINE_MODEL_CONFIG_H_
#define MPLUS_ENGINE_MODEL_CONFIG_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/dtype.h"

namespace mplus::engine {

enum class ModelKind { kLlama, kMemoryLLM, kMPlus };

struct RopeScaling {
  std::string rope_type = "default";  // "default" (none) or "llama3"
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
};

struct LoraConfig {
  int64_t r = 0;
  double alpha = 0;
  std::vector<std::string>
      target_modules;  // subset of q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj
  bool Targets(const std::string& module) const;
  double scale() const { return r > 0 ? alpha / static_cast<double>(r) : 0.0; }
};

struct ModelConfig {
  ModelKind kind = ModelKind::kLlama;
  DType dtype = DType::kF32;  // torch_dtype

  // Llama.
  int64_t vocab_size = 0, hidden_size = 0, intermediate_size = 0, num_hidden_layers = 0;
  int64_t num_attention_heads = 0, num_key_value_heads = 0, head_dim = 0;
  double rms_norm_eps = 1e-5, rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  std::string hidden_act = "silu";
  int64_t max_position_embeddings = 0;
  int64_t bos_token_id = -1;
  std::vector<int64_t> eos_token_ids;

  // MemoryLLM / M+.
  int64_t num_tokens = 0;      // K
  int64_t num_blocks = 0;      // short- plus long-term blocks
  int64_t num_ltm_blocks = 0;  // 0 for MemoryLLM
  bool add_bos_embedding = false;
  // Each layer drops its own random K slots per inject; false: the same slots in every layer.
  bool drop_memory_per_layer = false;
  bool add_decoder_lora = false;
  bool add_encoder_retriever = false;  // M+: checkpoint also holds (unused) encoder_query_proj
  LoraConfig lora;

  // M+ long-term memory and retriever.
  int64_t selector_hidden_dim = 0;  // p
  int64_t num_selector_layers = 0;  // 1 or 2
  int64_t ltm_initial_size = 0;
  int64_t update_ltm_frequency = 0;
  double decay_frequency = 0;
  double initial_rf_when_moving_stm_to_ltm = 0;

  // Derived.
  int64_t stm_tokens() const { return num_tokens * (num_blocks - num_ltm_blocks); }  // N
  int64_t ltm_retrieved_tokens() const { return num_tokens * num_ltm_blocks; }       // K_ltm
  int64_t prefix_length() const { return 1 + num_tokens * num_blocks; }              // generate P
  bool has_memory() const { return kind != ModelKind::kLlama; }
  bool has_long_term() const { return kind == ModelKind::kMPlus; }
};

// Parses and validates config.json (missing or inconsistent fields are InvalidArgument naming
// the field and the file).
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& path);
// Same, from the text of a config.json; `origin` names it in errors.
absl::StatusOr<ModelConfig> ParseModelConfig(const std::string& json_text,
                                             const std::string& origin);
// Checks sizes and cross-field consistency (what LoadModelConfig enforces after parsing).
absl::Status ValidateModelConfig(const ModelConfig& config, const std::string& origin);
// config.json text with the official field names (as in tests/fixtures/tiny-mplus); loading it
// back gives an equal config.
std::string ModelConfigToJson(const ModelConfig& config);
// torch_dtype spelling: "float32", "bfloat16", "float16".
std::string_view TorchDTypeName(DType dtype);

}  // namespace mplus::engine

#endif  // MPLUS_ENGINE_MODEL_CONFIG_H_
