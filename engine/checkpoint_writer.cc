#include "engine/checkpoint_writer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <thread>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/cpu_count.h"
#include "nlohmann/json.hpp"

namespace mplus::engine {
namespace {

namespace fs = std::filesystem;

constexpr size_t kChunkElems = size_t{1} << 20;

uint64_t SplitMix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// xoshiro256+: fast enough to fill 8B parameters in seconds per core.
class Rng {
 public:
  explicit Rng(uint64_t seed) {
    for (uint64_t& s : s_) s = SplitMix64(seed);
  }
  uint64_t Next() {
    const uint64_t result = s_[0] + s_[3];
    const uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = (s_[3] << 45) | (s_[3] >> 19);
    return result;
  }
  // Approximately N(0, 1): Irwin-Hall sum of four 16-bit uniforms, rescaled to unit variance.
  float Normal() {
    const uint64_t r = Next();
    const uint32_t sum = (r & 0xffff) + ((r >> 16) & 0xffff) + ((r >> 32) & 0xffff) + (r >> 48);
    return (static_cast<float>(sum) * (1.0f / 65536.0f) - 2.0f) * 1.7320508f;
  }
  double Uniform() { return static_cast<double>(Next() >> 11) * 0x1.0p-53; }

 private:
  uint64_t s_[4];
};

// How a tensor's values are drawn (from its name).
struct Init {
  enum Kind { kNormal, kNorm, kAges, kRecall } kind = kNormal;
  float std = 0.02f;
};

Init InitFor(const std::string& name, const CheckpointOptions& o) {
  const float std = static_cast<float>(o.init_std);
  if (name.ends_with("norm.weight")) return {Init::kNorm, std};
  if (name.starts_with("ltm_ages.")) return {Init::kAges, 0};
  if (name.starts_with("ltm_recall_frequencies.")) return {Init::kRecall, 0};
  // Retrieval keys are projector outputs: unit-ish scale keeps sigmoid scores spread out.
  if (name.starts_with("ltm_keys.")) return {Init::kNormal, 0.5f};
  return {Init::kNormal, std};
}

void FillChunk(const Init& init, const ModelConfig& config, uint64_t seed, float* out, size_t n) {
  Rng rng(seed);
  switch (init.kind) {
    case Init::kNormal:
      for (size_t i = 0; i < n; ++i) out[i] = rng.Normal() * init.std;
      break;
    case Init::kNorm:
      for (size_t i = 0; i < n; ++i) out[i] = 1.0f + rng.Normal() * init.std;
      break;
    case Init::kAges:  // integers, as the official code truncates them with .int()
      for (size_t i = 0; i < n; ++i) {
        out[i] = std::floor(static_cast<float>(rng.Uniform() * 10.0 * config.num_tokens));
      }
      break;
    case Init::kRecall: {  // multiples of 0.5 in [0.5, initial_rf + 1]
      const int steps =
          std::max(1, static_cast<int>(2 * config.initial_rf_when_moving_stm_to_ltm + 1));
      for (size_t i = 0; i < n; ++i) {
        out[i] = 0.5f * static_cast<float>(1 + static_cast<int>(rng.Uniform() * steps));
      }
      break;
    }
  }
}

void Encode(const float* in, size_t n, DType dtype, uint8_t* out) {
  switch (dtype) {
    case DType::kBF16:
      for (size_t i = 0; i < n; ++i) {
        const uint16_t h = FloatToBF16(in[i]);
        std::memcpy(out + 2 * i, &h, 2);
      }
      break;
    case DType::kF16:
      for (size_t i = 0; i < n; ++i) {
        const uint16_t h = FloatToF16(in[i]);
        std::memcpy(out + 2 * i, &h, 2);
      }
      break;
    default:
      std::memcpy(out, in, n * sizeof(float));
      break;
  }
}

class Progress {
 public:
  Progress(const CheckpointOptions& o, uint64_t total) : log_(o.log), total_(total) {}
  void Add(uint64_t bytes, const std::string& what) {
    done_ += bytes;
    if (!log_ || (done_ - last_ < (256ull << 20) && done_ != total_)) return;
    last_ = done_;
    const double secs = std::chrono::duration<double>(Clock::now() - start_).count();
    log_(absl::StrFormat("%5.1f%%  %.2f / %.2f GB  %.0f MB/s  (%s)", 100.0 * done_ / total_,
                         done_ / 1e9, total_ / 1e9, secs > 0 ? done_ / 1e6 / secs : 0.0, what));
  }

 private:
  using Clock = std::chrono::steady_clock;
  std::function<void(const std::string&)> log_;
  uint64_t total_, done_ = 0, last_ = 0;
  Clock::time_point start_ = Clock::now();
};

// Streams one tensor: chunks are generated in parallel (each from its own seed, so the bytes do
// not depend on the thread count) and written in order.
absl::Status WriteTensor(const TensorSpec& spec, uint64_t tensor_seed, const ModelConfig& config,
                         const CheckpointOptions& o, int threads, SafetensorsWriter& writer,
                         Progress& progress) {
  const Init init = InitFor(spec.name, o);
  const size_t numel = spec.nbytes() / DTypeSize(spec.dtype);
  const size_t chunks = (numel + kChunkElems - 1) / kChunkElems;
  const size_t batch = static_cast<size_t>(threads) * 4;
  const size_t elem = DTypeSize(spec.dtype);
  std::vector<float> values(std::min(chunks, batch) * kChunkElems);
  std::vector<uint8_t> bytes(values.size() * elem);
  for (size_t first = 0; first < chunks; first += batch) {
    const size_t count = std::min(batch, chunks - first);
    auto work = [&](size_t t) {
      for (size_t c = t; c < count; c += threads) {
        const size_t begin = (first + c) * kChunkElems;
        const size_t n = std::min(kChunkElems, numel - begin);
        float* vals = values.data() + c * kChunkElems;
        FillChunk(init, config, tensor_seed * 0x100000001b3ull + first + c, vals, n);
        Encode(vals, n, spec.dtype, bytes.data() + c * kChunkElems * elem);
      }
    };
    if (count == 1) {
      work(0);
    } else {
      std::vector<std::thread> pool;
      for (int t = 0; t < threads; ++t) pool.emplace_back(work, t);
      for (std::thread& th : pool) th.join();
    }
    const size_t n = std::min(count * kChunkElems, numel - first * kChunkElems);
    if (absl::Status s = writer.Append(bytes.data(), n * elem); !s.ok()) return s;
    progress.Add(n * elem, spec.name);
  }
  return absl::OkStatus();
}

std::string ShardName(size_t i, size_t n) {
  return absl::StrFormat("model-%05d-of-%05d.safetensors", i + 1, n);
}

absl::Status WriteText(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  out.close();
  if (!out) return absl::DataLossError(absl::StrCat(path.string(), ": write failed"));
  return absl::OkStatus();
}

// GPT-2's byte-to-unicode table used by ByteLevel pre-tokenizers.
std::vector<std::string> ByteLevelAlphabet() {
  std::vector<std::string> table(256);
  int next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
    const int cp = printable ? b : next++;
    std::string utf8;
    if (cp < 0x80) {
      utf8.push_back(static_cast<char>(cp));
    } else {
      utf8.push_back(static_cast<char>(0xC0 | (cp >> 6)));
      utf8.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
    table[b] = utf8;
  }
  return table;
}

}  // namespace

ModelConfig TinyMplusConfig() {
  ModelConfig c;
  c.kind = ModelKind::kMPlus;
  c.dtype = DType::kF32;
  c.vocab_size = 384;
  c.hidden_size = 64;
  c.intermediate_size = 160;
  c.num_hidden_layers = 3;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 16;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 500000.0;
  c.rope_scaling = {"llama3", 8.0, 1.0, 4.0, 64};
  c.max_position_embeddings = 2048;
  c.bos_token_id = 1;
  c.eos_token_ids = {2};
  c.num_tokens = 8;
  c.num_blocks = 6;
  c.num_ltm_blocks = 2;
  c.add_bos_embedding = true;
  c.drop_memory_per_layer = true;  // as the official training configs
  c.add_decoder_lora = true;
  c.add_encoder_retriever = true;
  c.lora = {4, 8.0, {"q_proj", "v_proj", "k_proj", "up_proj", "down_proj", "gate_proj"}};
  c.selector_hidden_dim = 12;
  c.num_selector_layers = 2;
  c.ltm_initial_size = 40;
  c.update_ltm_frequency = 5;
  c.decay_frequency = 1;
  c.initial_rf_when_moving_stm_to_ltm = 2;
  return c;
}

ModelConfig Mplus8bConfig() {
  ModelConfig c = TinyMplusConfig();
  c.dtype = DType::kBF16;
  c.vocab_size = 128256;
  c.hidden_size = 4096;
  c.intermediate_size = 14336;
  c.num_hidden_layers = 32;
  c.num_attention_heads = 32;
  c.num_key_value_heads = 8;
  c.head_dim = 128;
  c.rope_scaling = {"llama3", 8.0, 1.0, 4.0, 8192};
  c.max_position_embeddings = 131072;
  c.bos_token_id = 128000;
  c.eos_token_ids = {128001};
  c.num_tokens = 256;
  c.num_blocks = 50;
  c.num_ltm_blocks = 10;
  c.lora = {16, 32.0, {"q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "down_proj"}};
  c.selector_hidden_dim = 256;
  c.num_selector_layers = 2;
  c.ltm_initial_size = 2560;
  c.update_ltm_frequency = 60;
  c.initial_rf_when_moving_stm_to_ltm = 10;
  return c;
}

std::vector<TensorSpec> CheckpointTensorSpecs(const ModelConfig& c) {
  const DType dt = c.dtype;
  const int64_t d = c.hidden_size, I = c.intermediate_size, hd = c.head_dim;
  const int64_t q_out = c.num_attention_heads * hd, kv_out = c.num_key_value_heads * hd;
  std::vector<TensorSpec> specs;
  auto add = [&](std::string name, std::vector<int64_t> shape) {
    specs.push_back({std::move(name), dt, std::move(shape)});
  };
  auto linear = [&](const std::string& m, const std::string& module, int64_t out, int64_t in) {
    if (!c.has_memory() || !c.lora.Targets(module)) return add(m + module + ".weight", {out, in});
    add(m + module + ".base_layer.weight", {out, in});
    for (const char* adapter : {"default", "decoder_adapter"}) {
      if (std::string(adapter) == "decoder_adapter" && !c.add_decoder_lora) continue;
      add(absl::StrCat(m, module, ".lora_A.", adapter, ".weight"), {c.lora.r, in});
      add(absl::StrCat(m, module, ".lora_B.", adapter, ".weight"), {out, c.lora.r});
    }
  };
  auto projector = [&](const std::string& name) {
    const int64_t p = c.selector_hidden_dim;
    if (c.num_selector_layers == 1) return add(name + ".weight", {p, d});
    add(name + ".0.weight", {2 * p, d});
    add(name + ".2.weight", {p, 2 * p});
  };
  add("model.embed_tokens.weight", {c.vocab_size, d});
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    add(p + "input_layernorm.weight", {d});
    add(p + "post_attention_layernorm.weight", {d});
    linear(p + "self_attn.", "q_proj", q_out, d);
    linear(p + "self_attn.", "k_proj", kv_out, d);
    linear(p + "self_attn.", "v_proj", kv_out, d);
    linear(p + "self_attn.", "o_proj", d, q_out);
    linear(p + "mlp.", "gate_proj", I, d);
    linear(p + "mlp.", "up_proj", I, d);
    linear(p + "mlp.", "down_proj", d, I);
    if (c.has_long_term()) {
      projector(p + "self_attn.query_proj");
      projector(p + "self_attn.key_proj");
      if (c.add_encoder_retriever) projector(p + "self_attn.encoder_query_proj");
    }
  }
  add("model.norm.weight", {d});
  if (!c.tie_word_embeddings) add("lm_head.weight", {c.vocab_size, d});
  if (!c.has_memory()) return specs;
  const int64_t L = c.num_hidden_layers;
  add("memory", {L, c.stm_tokens(), d});
  add("bos_embedding", {L, 1, d});
  add("new_memory_positional_emb", {1, 1, d});
  if (!c.has_long_term()) return specs;
  const int64_t n0 = c.ltm_initial_size;
  for (int64_t l = 0; l < L; ++l) {
    add(absl::StrCat("ltm.", l), {n0, d});
    add(absl::StrCat("ltm_keys.", l), {n0, c.selector_hidden_dim});
    add(absl::StrCat("ltm_ages.", l), {n0});
    add(absl::StrCat("ltm_recall_frequencies.", l), {n0});
  }
  return specs;
}

absl::Status WriteRandomCheckpoint(const ModelConfig& config, const CheckpointOptions& o,
                                   const std::string& dir) {
  if (absl::Status s = ValidateModelConfig(config, "checkpoint config"); !s.ok()) return s;
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return absl::PermissionDeniedError(absl::StrCat(dir, ": ", ec.message()));

  const std::vector<TensorSpec> specs = CheckpointTensorSpecs(config);
  // Greedy packing in write order; a tensor larger than shard_bytes gets a shard of its own.
  std::vector<std::vector<size_t>> shards(1);
  uint64_t shard_size = 0, total = 0;
  for (size_t i = 0; i < specs.size(); ++i) {
    const uint64_t n = specs[i].nbytes();
    if (!shards.back().empty() && shard_size + n > o.shard_bytes) {
      shards.emplace_back();
      shard_size = 0;
    }
    shards.back().push_back(i);
    shard_size += n;
    total += n;
  }
  const int threads = o.threads > 0 ? o.threads : AvailableCpus();
  Progress progress(o, total);
  if (o.log) {
    o.log(absl::StrFormat("writing %d tensors, %.3f GB in %d file(s) to %s", specs.size(),
                          total / 1e9, shards.size(), dir));
  }

  nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
  for (size_t s = 0; s < shards.size(); ++s) {
    const std::string file = shards.size() == 1 ? "model.safetensors" : ShardName(s, shards.size());
    std::vector<TensorSpec> shard_specs;
    for (size_t i : shards[s]) {
      shard_specs.push_back(specs[i]);
      weight_map[specs[i].name] = file;
    }
    absl::StatusOr<std::unique_ptr<SafetensorsWriter>> writer =
        SafetensorsWriter::Create((fs::path(dir) / file).string(), shard_specs);
    if (!writer.ok()) return writer.status();
    for (size_t i : shards[s]) {
      uint64_t seed_state = o.seed ^ (0x5bd1e995ull * (i + 1));
      const uint64_t tensor_seed = SplitMix64(seed_state);
      if (absl::Status st =
              WriteTensor(specs[i], tensor_seed, config, o, threads, **writer, progress);
          !st.ok()) {
        return st;
      }
    }
    if (absl::Status st = (*writer)->Finish(); !st.ok()) return st;
  }
  if (shards.size() > 1) {
    nlohmann::ordered_json index;
    index["metadata"] = {{"total_size", total}};
    index["weight_map"] = weight_map;
    if (absl::Status st =
            WriteText(fs::path(dir) / "model.safetensors.index.json", index.dump(2) + "\n");
        !st.ok()) {
      return st;
    }
  } else {
    fs::remove(fs::path(dir) / "model.safetensors.index.json", ec);  // stale from an earlier run
  }
  if (absl::Status st = WriteText(fs::path(dir) / "config.json", ModelConfigToJson(config));
      !st.ok()) {
    return st;
  }

  if (o.tokenizer_path.empty()) return WriteByteLevelTokenizer(config, dir);
  fs::copy_file(o.tokenizer_path, fs::path(dir) / "tokenizer.json",
                fs::copy_options::overwrite_existing, ec);
  if (ec) return absl::NotFoundError(absl::StrCat(o.tokenizer_path, ": ", ec.message()));
  const fs::path tok_config = fs::path(o.tokenizer_path).parent_path() / "tokenizer_config.json";
  if (fs::exists(tok_config, ec)) {
    fs::copy_file(tok_config, fs::path(dir) / "tokenizer_config.json",
                  fs::copy_options::overwrite_existing, ec);
    if (ec) return absl::DataLossError(absl::StrCat(tok_config.string(), ": ", ec.message()));
  }
  return absl::OkStatus();
}

absl::Status WriteByteLevelTokenizer(const ModelConfig& config, const std::string& dir) {
  const int64_t vocab = config.vocab_size;
  // Special tokens sit at the config's ids; bytes and fillers take the remaining ids in order.
  std::vector<std::pair<int64_t, std::string>> specials;
  if (config.bos_token_id >= 0) specials.push_back({config.bos_token_id, "<|begin_of_text|>"});
  for (size_t i = 0; i < config.eos_token_ids.size(); ++i) {
    const int64_t id = config.eos_token_ids[i];
    if (id == config.bos_token_id) continue;
    specials.push_back({id, i == 0 ? "<|end_of_text|>" : absl::StrCat("<|eos_", i, "|>")});
  }
  std::sort(specials.begin(), specials.end());
  specials.erase(std::unique(specials.begin(), specials.end(),
                             [](const auto& a, const auto& b) { return a.first == b.first; }),
                 specials.end());
  if (vocab < 256 + static_cast<int64_t>(specials.size())) {
    return absl::InvalidArgumentError(
        absl::StrCat("vocab_size ", vocab, " is too small for a byte-level tokenizer (256 bytes + ",
                     specials.size(), " special tokens)"));
  }
  std::vector<std::string> tokens(vocab);
  std::vector<bool> taken(vocab, false);
  for (const auto& [id, text] : specials) {
    tokens[id] = text;
    taken[id] = true;
  }
  const std::vector<std::string> bytes = ByteLevelAlphabet();
  int64_t next = 0;
  int64_t filler = 0;
  for (int64_t id = 0; id < vocab; ++id) {
    if (taken[id]) continue;
    // Fillers are ordinary vocabulary entries no merge produces, so they never occur in
    // encodings; they only pad the vocabulary to the embedding size.
    tokens[id] = next < 256 ? bytes[next++] : absl::StrCat("<|unused_", filler++, "|>");
  }

  nlohmann::ordered_json added = nlohmann::ordered_json::array();
  for (const auto& [id, text] : specials) {
    added.push_back({{"id", id},
                     {"content", text},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", true}});
  }
  // Appended straight to the object's entries: ordered_json's operator[] first looks the key
  // up among all the keys before it, which made Llama 3's 128,256 entries take ~27 s (most of
  // the GPU model bench's checkpoint write). The keys are distinct: specials, the 256 byte
  // symbols and numbered fillers.
  nlohmann::ordered_json vocab_json = nlohmann::ordered_json::object();
  auto& entries = vocab_json.get_ref<nlohmann::ordered_json::object_t&>();
  entries.reserve(static_cast<size_t>(vocab));
  for (int64_t id = 0; id < vocab; ++id) entries.emplace_back(tokens[id], id);
  auto byte_level = [](bool add_prefix_space, bool trim_offsets) {
    return nlohmann::ordered_json{{"type", "ByteLevel"},
                                  {"add_prefix_space", add_prefix_space},
                                  {"trim_offsets", trim_offsets},
                                  {"use_regex", true}};
  };
  nlohmann::ordered_json tok;
  tok["version"] = "1.0";
  tok["truncation"] = nullptr;
  tok["padding"] = nullptr;
  tok["added_tokens"] = added;
  tok["normalizer"] = nullptr;
  tok["pre_tokenizer"] = byte_level(false, true);
  tok["post_processor"] = byte_level(true, false);
  tok["decoder"] = byte_level(true, true);
  tok["model"] = {{"type", "BPE"},
                  {"dropout", nullptr},
                  {"unk_token", nullptr},
                  {"continuing_subword_prefix", nullptr},
                  {"end_of_word_suffix", nullptr},
                  {"fuse_unk", false},
                  {"byte_fallback", false},
                  {"ignore_merges", false},
                  {"vocab", vocab_json},
                  {"merges", nlohmann::ordered_json::array()}};
  if (absl::Status s = WriteText(fs::path(dir) / "tokenizer.json", tok.dump(1) + "\n"); !s.ok()) {
    return s;
  }
  nlohmann::ordered_json tc;
  if (config.bos_token_id >= 0) tc["bos_token"] = tokens[config.bos_token_id];
  if (!config.eos_token_ids.empty()) tc["eos_token"] = tokens[config.eos_token_ids[0]];
  tc["add_bos_token"] = false;
  tc["model_max_length"] = config.max_position_embeddings;
  tc["tokenizer_class"] = "PreTrainedTokenizerFast";
  tc["clean_up_tokenization_spaces"] = false;
  return WriteText(fs::path(dir) / "tokenizer_config.json", tc.dump(2) + "\n");
}

}  // namespace mplus::engine
