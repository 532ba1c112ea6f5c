// mplus-make-checkpoint: writes a synthetic M+, MemoryLLM or Llama checkpoint (config.json,
// safetensors, tokenizer) with seeded random weights, from a preset plus per-flag overrides.
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "common/flags_help.h"
#include "engine/checkpoint_writer.h"
#include "engine/model_config.h"

// Size flags default to -1 / "" = "take the preset's value".
ABSL_FLAG(std::string, out, "", "Output directory (required; created if needed).");
ABSL_FLAG(std::string, preset, "tiny",
          "Base shapes: 'tiny' (the tests/fixtures/tiny-mplus shapes: L3 d64 I160 H4/2 V384 K8 "
          "blocks 6, ltm 2, p12) or '8b' (mplus-8b: L32 d4096 I14336 H32/8 hd128 V128256 K256 "
          "blocks 50, ltm 10, p256, bf16, ~16 GB).");
ABSL_FLAG(std::string, kind, "", "mplus | memoryllm | llama (default: mplus).");
ABSL_FLAG(std::string, dtype, "", "float32 | bfloat16 | float16 (default: preset's).");
ABSL_FLAG(int64_t, layers, -1, "num_hidden_layers.");
ABSL_FLAG(int64_t, hidden, -1, "hidden_size d.");
ABSL_FLAG(int64_t, intermediate, -1, "intermediate_size of the MLP.");
ABSL_FLAG(int64_t, heads, -1, "num_attention_heads.");
ABSL_FLAG(int64_t, kv_heads, -1, "num_key_value_heads.");
ABSL_FLAG(int64_t, head_dim, -1, "head_dim (default hidden/heads).");
ABSL_FLAG(int64_t, vocab, -1, "vocab_size.");
ABSL_FLAG(int64_t, num_tokens, -1, "K: memory tokens written per inject per layer.");
ABSL_FLAG(int64_t, num_blocks, -1, "num_blocks (short- plus long-term blocks).");
ABSL_FLAG(int64_t, num_ltm_blocks, -1, "num_ltm_blocks (M+ only).");
ABSL_FLAG(int64_t, selector_dim, -1, "selector_hidden_dim p of the retriever (M+ only).");
ABSL_FLAG(int64_t, selector_layers, -1, "num_selector_layers: 1 or 2 (M+ only).");
ABSL_FLAG(int64_t, ltm_initial, -1, "Initial long-term memory entries per layer (M+ only).");
ABSL_FLAG(int64_t, update_ltm_frequency, -1, "update_ltm_frequency (M+ only).");
ABSL_FLAG(double, initial_rf, -1, "initial_rf_when_moving_stm_to_ltm (M+ only).");
ABSL_FLAG(int64_t, lora_r, -1, "LoRA rank r (0: no LoRA).");
ABSL_FLAG(double, lora_alpha, -1, "LoRA alpha.");
ABSL_FLAG(std::string, lora_targets, "",
          "Comma-separated LoRA target modules among q_proj,k_proj,v_proj,o_proj,gate_proj,"
          "up_proj,down_proj.");
ABSL_FLAG(std::string, decoder_lora, "", "true | false: add the decoder_adapter LoRA weights.");
ABSL_FLAG(std::string, tie_embeddings, "", "true | false: tie_word_embeddings (no lm_head).");
ABSL_FLAG(double, rope_theta, -1, "rope_theta.");
ABSL_FLAG(uint64_t, seed, 0, "Random seed (same seed, same bytes).");
ABSL_FLAG(double, init_std, 0.02, "Standard deviation of the random weights.");
ABSL_FLAG(uint64_t, shard_bytes, 4ull << 30,
          "Split into model-0000i-of-0000n.safetensors + index.json above this many bytes.");
ABSL_FLAG(std::string, tokenizer, "",
          "tokenizer.json to copy (with its tokenizer_config.json); default: write a minimal "
          "byte-level BPE tokenizer sized to --vocab.");
ABSL_FLAG(int, threads, 0, "Generator threads (0: all cores).");
ABSL_FLAG(bool, force, false, "Overwrite an existing checkpoint in --out.");

namespace {

using mplus::engine::DType;
using mplus::engine::ModelConfig;
using mplus::engine::ModelKind;

bool ParseBool(const std::string& flag, const std::string& value, bool* out) {
  if (value.empty()) return true;
  if (value == "true" || value == "false") {
    *out = value == "true";
    return true;
  }
  std::fprintf(stderr, "--%s must be true or false, got '%s'\n", flag.c_str(), value.c_str());
  return false;
}

template <typename T>
void Override(const absl::Flag<T>& flag, T* field) {
  const T v = absl::GetFlag(flag);
  if (v >= 0) *field = v;
}

}  // namespace

int main(int argc, char** argv) {
  // --help lists this file's flags (absl matches them against the binary name by default).
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = [](absl::string_view file) {
    return absl::StrContains(file, "make_checkpoint_main");
  };
  usage.contains_helpshort_flags = usage.contains_help_flags;
  absl::SetFlagsUsageConfig(usage);
  absl::SetProgramUsageMessage(
      "Writes a synthetic checkpoint with seeded random weights in the official layout.\n"
      "Example: mplus-make-checkpoint --out /tmp/ckpt --preset 8b\n"
      "         mplus-make-checkpoint --out /tmp/tiny --preset tiny --dtype bfloat16 --seed 7");
  mplus::ShowFlagsOfFileInHelp(__FILE__);
  absl::ParseCommandLine(argc, argv);
  const std::string out = absl::GetFlag(FLAGS_out);
  if (out.empty()) {
    std::fprintf(stderr, "--out is required (see --help)\n");
    return 2;
  }
  const std::string preset = absl::GetFlag(FLAGS_preset);
  ModelConfig c;
  if (preset == "tiny") {
    c = mplus::engine::TinyMplusConfig();
  } else if (preset == "8b") {
    c = mplus::engine::Mplus8bConfig();
  } else {
    std::fprintf(stderr, "--preset must be tiny or 8b, got '%s'\n", preset.c_str());
    return 2;
  }

  const std::string kind = absl::GetFlag(FLAGS_kind);
  if (kind == "memoryllm") {
    c.kind = ModelKind::kMemoryLLM;
  } else if (kind == "llama") {
    c.kind = ModelKind::kLlama;
  } else if (!kind.empty() && kind != "mplus") {
    std::fprintf(stderr, "--kind must be mplus, memoryllm or llama, got '%s'\n", kind.c_str());
    return 2;
  }
  const std::string dtype = absl::GetFlag(FLAGS_dtype);
  if (dtype == "float32") {
    c.dtype = DType::kF32;
  } else if (dtype == "bfloat16") {
    c.dtype = DType::kBF16;
  } else if (dtype == "float16") {
    c.dtype = DType::kF16;
  } else if (!dtype.empty()) {
    std::fprintf(stderr, "--dtype must be float32, bfloat16 or float16, got '%s'\n", dtype.c_str());
    return 2;
  }
  const int64_t old_hidden = c.hidden_size, old_heads = c.num_attention_heads;
  Override(FLAGS_layers, &c.num_hidden_layers);
  Override(FLAGS_hidden, &c.hidden_size);
  Override(FLAGS_intermediate, &c.intermediate_size);
  Override(FLAGS_heads, &c.num_attention_heads);
  Override(FLAGS_kv_heads, &c.num_key_value_heads);
  // head_dim follows hidden/heads unless given.
  if (c.hidden_size != old_hidden || c.num_attention_heads != old_heads) {
    c.head_dim = c.num_attention_heads > 0 ? c.hidden_size / c.num_attention_heads : 0;
  }
  Override(FLAGS_head_dim, &c.head_dim);
  Override(FLAGS_vocab, &c.vocab_size);
  Override(FLAGS_num_tokens, &c.num_tokens);
  Override(FLAGS_num_blocks, &c.num_blocks);
  Override(FLAGS_num_ltm_blocks, &c.num_ltm_blocks);
  Override(FLAGS_selector_dim, &c.selector_hidden_dim);
  Override(FLAGS_selector_layers, &c.num_selector_layers);
  Override(FLAGS_ltm_initial, &c.ltm_initial_size);
  Override(FLAGS_update_ltm_frequency, &c.update_ltm_frequency);
  Override(FLAGS_initial_rf, &c.initial_rf_when_moving_stm_to_ltm);
  Override(FLAGS_lora_r, &c.lora.r);
  Override(FLAGS_lora_alpha, &c.lora.alpha);
  Override(FLAGS_rope_theta, &c.rope_theta);
  if (const std::string t = absl::GetFlag(FLAGS_lora_targets); !t.empty()) {
    c.lora.target_modules = absl::StrSplit(t, ',', absl::SkipEmpty());
  }
  if (!ParseBool("decoder_lora", absl::GetFlag(FLAGS_decoder_lora), &c.add_decoder_lora) ||
      !ParseBool("tie_embeddings", absl::GetFlag(FLAGS_tie_embeddings), &c.tie_word_embeddings)) {
    return 2;
  }
  if (c.lora.r == 0) {
    c.lora = {};
    c.add_decoder_lora = false;
  }
  // Small vocabularies keep the preset's special ids only when they fit.
  if (c.bos_token_id >= c.vocab_size || c.eos_token_ids[0] >= c.vocab_size) {
    c.bos_token_id = c.vocab_size - 2;
    c.eos_token_ids = {c.vocab_size - 1};
  }
  if (c.kind != ModelKind::kMPlus) {
    c.num_ltm_blocks = c.selector_hidden_dim = c.num_selector_layers = c.ltm_initial_size = 0;
    c.update_ltm_frequency = 0;
    c.decay_frequency = c.initial_rf_when_moving_stm_to_ltm = 0;
    c.add_encoder_retriever = false;
  }
  if (c.kind == ModelKind::kLlama) {
    c.num_tokens = c.num_blocks = 0;
    c.lora = {};
    c.add_decoder_lora = false;
  }

  namespace fs = std::filesystem;
  std::error_code ec;
  if (!absl::GetFlag(FLAGS_force) && fs::exists(fs::path(out) / "config.json", ec)) {
    std::fprintf(stderr, "%s already holds a checkpoint; pass --force to overwrite\n", out.c_str());
    return 1;
  }
  mplus::engine::CheckpointOptions options;
  options.seed = absl::GetFlag(FLAGS_seed);
  options.shard_bytes = absl::GetFlag(FLAGS_shard_bytes);
  options.init_std = absl::GetFlag(FLAGS_init_std);
  options.tokenizer_path = absl::GetFlag(FLAGS_tokenizer);
  options.threads = absl::GetFlag(FLAGS_threads);
  options.log = [](const std::string& line) { std::fprintf(stderr, "%s\n", line.c_str()); };
  if (absl::Status s = mplus::engine::WriteRandomCheckpoint(c, options, out); !s.ok()) {
    std::fprintf(stderr, "mplus-make-checkpoint: %s\n", s.ToString().c_str());
    return 1;
  }
  std::fprintf(stderr, "wrote %s\n", out.c_str());
  return 0;
}
