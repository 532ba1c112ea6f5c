// Folding the decoder LoRA into the base weights at load (ModelOptions::merge_decoder_lora), so
// that generation's linears are plain products: on a GPU a decode step then reads no LoRA
// matrices and launches no LoRA GEMVs. Inject keeps its sums: the encoder adapter gains the
// decoder's A and -B, which take the folded term back out.
#ifndef MPLUS_ENGINE_LORA_MERGE_H_
#define MPLUS_ENGINE_LORA_MERGE_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "common/thread_pool.h"
#include "engine/model_weights.h"

namespace mplus::engine {

// A linear with its decoder LoRA folded in, owning the bytes its views point to (moving it keeps
// them valid: std::vector moves its buffer).
struct MergedLinear {
  // weight: W + scale * B_d A_d, computed in float32 and rounded once to W's dtype; the decoder
  // adapter absent; the encoder adapter, if W has one, [A_e; A_d] ([2r, in]) and [B_e, -B_d]
  // ([out, 2r]), else A_d and -B_d: x (W' + scale (B_e A_e - B_d A_d))^T is the encoder's
  // x (W + scale B_e A_e)^T up to W's rounding.
  LinearWeights views;
  std::vector<uint8_t> weight, encoder_a, encoder_b;
};

// Folds `w`'s decoder LoRA (which it must have) at `scale` (alpha / r), parallel over `pool`.
// Errors (not silently different results) for adapters whose shapes do not match W's or whose
// dtype is not a float storage type.
absl::StatusOr<MergedLinear> MergeDecoderLora(const LinearWeights& w, float scale,
                                              ThreadPool& pool);

}  // namespace mplus::engine

#endif  // MPLUS_ENGINE_LORA_MERGE_H_
