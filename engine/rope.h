// Rotary-embedding frequencies exactly as Hugging Face computes them (float32), with the
// llama3 scaling rule.
#ifndef MPLUS_ENGINE_ROPE_H_
#define MPLUS_ENGINE_ROPE_H_

#include <vector>

#include "engine/model_config.h"

namespace mplus::engine {

// inv_freq[j] = 1 / theta^(2j / head_dim) in float32, then llama3 scaling when configured
// (MPLUS-DETAILS.md "RoPE"). With round_to_bf16 every value is rounded to bfloat16, as the
// official bf16 recipe does by casting the whole model (buffers included).
std::vector<float> RopeInvFreq(const ModelConfig& config, bool round_to_bf16);

}  // namespace mplus::engine

#endif  // MPLUS_ENGINE_ROPE_H_
