// Synthetic checkpoints in the official layout (config.json, safetensors, tokenizer.json) with
// seeded random weights: for tests, benchmarks and mplus-make-checkpoint. Large checkpoints are
// streamed tensor by tensor, chunk by chunk, so memory use stays bounded.
#ifndef MPLUS_ENGINE_CHECKPOINT_WRITER_H_
#define MPLUS_ENGINE_CHECKPOINT_WRITER_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "engine/model_config.h"
#include "engine/safetensors.h"

namespace mplus::engine {

struct CheckpointOptions {
  uint64_t seed = 0;
  // A checkpoint larger than this is split into model-0000i-of-0000n.safetensors shards plus
  // model.safetensors.index.json.
  uint64_t shard_bytes = 4ull << 30;
  // Standard deviation of the random weights (norm weights are 1 + N(0, init_std)).
  double init_std = 0.02;
  // tokenizer.json to copy (its sibling tokenizer_config.json too, if present); empty: write a
  // minimal byte-level BPE tokenizer sized to the vocabulary.
  std::string tokenizer_path;
  int threads = 0;  // 0: all hardware threads
  // Progress lines (may be empty).
  std::function<void(const std::string&)> log;
};

// The shapes of tests/fixtures/tiny-mplus (float32): L3 d64 I160 H4/2 hd16 V384, K8, 6 blocks of
// which 2 long-term, p12, 40 initial long-term entries per layer.
ModelConfig TinyMplusConfig();
// The shapes of mplus-8b (Llama-3.1-8B + M+, bfloat16, ~16.7 GB): L32 d4096 I14336 H32/8 hd128
// V128256, K256, 50 blocks of which 10 long-term, p256, 2560 initial long-term entries per layer.
ModelConfig Mplus8bConfig();

// Every tensor of a checkpoint for `config` in the official state-dict layout (including the
// unused encoder_query_proj when add_encoder_retriever), in write order. The initial long-term
// memory has config.ltm_initial_size entries per layer.
std::vector<TensorSpec> CheckpointTensorSpecs(const ModelConfig& config);

// Writes config.json, the safetensors file(s) and the tokenizer into `dir` (created if needed).
// The same config, options.seed and shard layout give byte-identical files whatever the thread
// count.
absl::Status WriteRandomCheckpoint(const ModelConfig& config, const CheckpointOptions& options,
                                   const std::string& dir);

// tokenizer.json + tokenizer_config.json: byte-level BPE, the 256 byte tokens, no merges, the
// config's BOS/EOS as special tokens and unused filler entries up to vocab_size.
absl::Status WriteByteLevelTokenizer(const ModelConfig& config, const std::string& dir);

}  // namespace mplus::engine

#endif  // MPLUS_ENGINE_CHECKPOINT_WRITER_H_
