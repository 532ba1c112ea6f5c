#include "engine/rope.h"

#include <cmath>

namespace mplus::engine {

std::vector<float> RopeInvFreq(const ModelConfig& config, bool round_to_bf16) {
  const int64_t dim = config.head_dim;
  std::vector<float> inv_freq(static_cast<size_t>(dim / 2));
  const float base = static_cast<float>(config.rope_theta);
  for (int64_t j = 0; j < dim / 2; ++j) {
    const float exponent = static_cast<float>(2 * j) / static_cast<float>(dim);
    inv_freq[j] = 1.0f / std::pow(base, exponent);
  }
  const RopeScaling& rs = config.rope_scaling;
  if (rs.rope_type == "llama3") {
    // Every step in float32, like HF's _compute_llama3_parameters on a float32 tensor.
    const float factor = static_cast<float>(rs.factor);
    const float low = static_cast<float>(rs.low_freq_factor);
    const float high = static_cast<float>(rs.high_freq_factor);
    const float old_len = static_cast<float>(rs.original_max_position_embeddings);
    const float low_freq_wavelen = old_len / low;
    const float high_freq_wavelen = old_len / high;
    const float two_pi = static_cast<float>(2.0 * M_PI);
    for (float& f : inv_freq) {
      const float wavelen = two_pi / f;
      const float llama = wavelen > low_freq_wavelen ? f / factor : f;
      const bool medium = !(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen);
      if (medium) {
        const float smooth = (old_len / wavelen - low) / (high - low);
        f = (1.0f - smooth) * llama / factor + smooth * llama;
      } else {
        f = llama;
      }
    }
  }
  if (round_to_bf16) {
    for (float& f : inv_freq) f = BF16ToFloat(FloatToBF16(f));
  }
  return inv_freq;
}

}  // namespace mplus::engine
