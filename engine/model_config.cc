#include "engine/model_config.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <optional>
#include <sstream>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace mplus::engine {
namespace {

using nlohmann::json;

constexpr const char* kLoraModules[] = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                                        "gate_proj", "up_proj", "down_proj"};

// Reads typed fields of one JSON object; every error names the field and the file.
class FieldReader {
 public:
  FieldReader(const json& obj, std::string origin, std::string prefix = "")
      : obj_(obj), origin_(std::move(origin)), prefix_(std::move(prefix)) {}

  bool Has(const char* name) const {
    auto it = obj_.find(name);
    return it != obj_.end() && !it->is_null();
  }

  absl::Status Error(const std::string& name, const std::string& why) const {
    return absl::InvalidArgumentError(
        absl::StrCat(origin_, ": field \"", prefix_, name, "\" ", why));
  }

  // Integer field (an integral float such as 8.0 is accepted). Absent: `fallback`, or an error
  // when there is none.
  absl::Status Int(const char* name, int64_t* out, std::optional<int64_t> fallback) const {
    if (!Has(name)) {
      if (!fallback) return Error(name, "is missing");
      *out = *fallback;
      return absl::OkStatus();
    }
    const json& v = obj_.at(name);
    if (v.is_number_integer()) {
      *out = v.get<int64_t>();
    } else if (v.is_number_float() && std::nearbyint(v.get<double>()) == v.get<double>() &&
               std::fabs(v.get<double>()) < 9e15) {
      *out = static_cast<int64_t>(v.get<double>());
    } else {
      return Error(name, absl::StrCat("must be an integer, got ", v.dump()));
    }
    return absl::OkStatus();
  }

  absl::Status Double(const char* name, double* out, std::optional<double> fallback) const {
    if (!Has(name)) {
      if (!fallback) return Error(name, "is missing");
      *out = *fallback;
      return absl::OkStatus();
    }
    const json& v = obj_.at(name);
    if (!v.is_number()) return Error(name, absl::StrCat("must be a number, got ", v.dump()));
    *out = v.get<double>();
    return absl::OkStatus();
  }

  absl::Status Bool(const char* name, bool* out, bool fallback) const {
    if (!Has(name)) {
      *out = fallback;
      return absl::OkStatus();
    }
    const json& v = obj_.at(name);
    if (!v.is_boolean()) return Error(name, absl::StrCat("must be true or false, got ", v.dump()));
    *out = v.get<bool>();
    return absl::OkStatus();
  }

  absl::Status String(const char* name, std::string* out,
                      std::optional<std::string> fallback) const {
    if (!Has(name)) {
      if (!fallback) return Error(name, "is missing");
      *out = *fallback;
      return absl::OkStatus();
    }
    const json& v = obj_.at(name);
    if (!v.is_string()) return Error(name, absl::StrCat("must be a string, got ", v.dump()));
    *out = v.get<std::string>();
    return absl::OkStatus();
  }

 private:
  const json& obj_;
  std::string origin_;
  std::string prefix_;
};

#define CFG_RETURN_IF_ERROR(expr)             \
  do {                                        \
    if (absl::Status _s = (expr); !_s.ok()) { \
      return _s;                              \
    }                                         \
  } while (0)

absl::Status ParseRopeScaling(const json& root, const std::string& origin, RopeScaling* rope) {
  auto it = root.find("rope_scaling");
  if (it == root.end() || it->is_null()) return absl::OkStatus();  // plain RoPE
  if (!it->is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(origin, ": field \"rope_scaling\" must be null or an object"));
  }
  FieldReader r(*it, origin, "rope_scaling.");
  std::string type;
  if (r.Has("rope_type")) {
    CFG_RETURN_IF_ERROR(r.String("rope_type", &type, std::nullopt));
  } else {
    CFG_RETURN_IF_ERROR(r.String("type", &type, std::nullopt));
  }
  if (type == "default") return absl::OkStatus();
  if (type != "llama3") {
    return r.Error(
        r.Has("rope_type") ? "rope_type" : "type",
        absl::StrCat("is \"", type, "\"; only \"llama3\" (or \"default\") is supported"));
  }
  rope->rope_type = "llama3";
  CFG_RETURN_IF_ERROR(r.Double("factor", &rope->factor, std::nullopt));
  CFG_RETURN_IF_ERROR(r.Double("low_freq_factor", &rope->low_freq_factor, std::nullopt));
  CFG_RETURN_IF_ERROR(r.Double("high_freq_factor", &rope->high_freq_factor, std::nullopt));
  CFG_RETURN_IF_ERROR(r.Int("original_max_position_embeddings",
                            &rope->original_max_position_embeddings, std::nullopt));
  return absl::OkStatus();
}

absl::Status ParseLora(const json& root, const std::string& origin, LoraConfig* lora) {
  auto it = root.find("lora_config");
  if (it == root.end() || it->is_null()) return absl::OkStatus();  // no adapters
  if (!it->is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(origin, ": field \"lora_config\" must be null or an object"));
  }
  FieldReader r(*it, origin, "lora_config.");
  CFG_RETURN_IF_ERROR(r.Int("r", &lora->r, std::nullopt));
  CFG_RETURN_IF_ERROR(r.Double("lora_alpha", &lora->alpha, std::nullopt));
  auto targets = it->find("target_modules");
  if (targets == it->end() || !targets->is_array()) {
    return r.Error("target_modules", "must be a list of module names");
  }
  for (const json& t : *targets) {
    const std::string name = t.is_string() ? t.get<std::string>() : t.dump();
    if (std::find(std::begin(kLoraModules), std::end(kLoraModules), name) ==
        std::end(kLoraModules)) {
      return r.Error("target_modules",
                     absl::StrCat("names unsupported module ", name,
                                  " (supported: q_proj k_proj v_proj o_proj gate_proj up_proj "
                                  "down_proj)"));
    }
    if (!lora->Targets(name)) lora->target_modules.push_back(name);
  }
  return absl::OkStatus();
}

absl::Status ParseDTypeField(const json& root, const std::string& origin, DType* dtype) {
  const char* field = root.contains("torch_dtype") ? "torch_dtype" : "dtype";
  std::string name;
  CFG_RETURN_IF_ERROR(FieldReader(root, origin).String(field, &name, "float32"));
  if (name == "float32") {
    *dtype = DType::kF32;
  } else if (name == "bfloat16") {
    *dtype = DType::kBF16;
  } else if (name == "float16") {
    *dtype = DType::kF16;
  } else {
    return absl::InvalidArgumentError(absl::StrCat(origin, ": field \"", field, "\" is \"", name,
                                                   "\"; supported: float32, bfloat16, float16"));
  }
  return absl::OkStatus();
}

absl::Status ParseEos(const json& root, const std::string& origin, std::vector<int64_t>* eos) {
  auto it = root.find("eos_token_id");
  if (it == root.end() || it->is_null()) return absl::OkStatus();
  auto bad = [&] {
    return absl::InvalidArgumentError(
        absl::StrCat(origin, ": field \"eos_token_id\" must be an integer or a list of integers"));
  };
  if (it->is_number_integer()) {
    eos->push_back(it->get<int64_t>());
    return absl::OkStatus();
  }
  if (!it->is_array()) return bad();
  for (const json& v : *it) {
    if (!v.is_number_integer()) return bad();
    eos->push_back(v.get<int64_t>());
  }
  return absl::OkStatus();
}

ModelKind DetectKind(const json& root) {
  auto arch = root.find("architectures");
  if (arch != root.end() && arch->is_array()) {
    for (const json& a : *arch) {
      if (a == "MPlus") return ModelKind::kMPlus;
      if (a == "MemoryLLM") return ModelKind::kMemoryLLM;
    }
  }
  if (root.contains("num_ltm_blocks") || root.contains("selector_hidden_dim")) {
    return ModelKind::kMPlus;
  }
  if (root.contains("num_tokens") && root.contains("num_blocks")) return ModelKind::kMemoryLLM;
  return ModelKind::kLlama;
}

absl::Status Positive(const std::string& origin, const char* field, double value) {
  if (value > 0) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(origin, ": field \"", field, "\" must be positive, got ", value));
}

}  // namespace

bool LoraConfig::Targets(const std::string& module) const {
  return std::find(target_modules.begin(), target_modules.end(), module) != target_modules.end();
}

std::string_view TorchDTypeName(DType dtype) {
  switch (dtype) {
    case DType::kBF16:
      return "bfloat16";
    case DType::kF16:
      return "float16";
    default:
      return "float32";
  }
}

absl::StatusOr<ModelConfig> ParseModelConfig(const std::string& json_text,
                                             const std::string& origin) {
  json root = json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) return absl::InvalidArgumentError(origin + ": not valid JSON");
  if (!root.is_object()) return absl::InvalidArgumentError(origin + ": not a JSON object");
  auto arch = root.find("architectures");
  if (arch != root.end() && !arch->is_null()) {
    if (!arch->is_array()) {
      return absl::InvalidArgumentError(origin + ": field \"architectures\" must be a list");
    }
    for (const json& a : *arch) {
      if (a != "MPlus" && a != "MemoryLLM" && a != "LlamaForCausalLM") {
        return absl::InvalidArgumentError(
            absl::StrCat(origin, ": field \"architectures\" names unsupported ", a.dump(),
                         " (supported: LlamaForCausalLM, MemoryLLM, MPlus)"));
      }
    }
  }

  ModelConfig c;
  FieldReader r(root, origin);
  c.kind = DetectKind(root);
  CFG_RETURN_IF_ERROR(ParseDTypeField(root, origin, &c.dtype));
  CFG_RETURN_IF_ERROR(r.Int("vocab_size", &c.vocab_size, std::nullopt));
  CFG_RETURN_IF_ERROR(r.Int("hidden_size", &c.hidden_size, std::nullopt));
  CFG_RETURN_IF_ERROR(r.Int("intermediate_size", &c.intermediate_size, std::nullopt));
  CFG_RETURN_IF_ERROR(r.Int("num_hidden_layers", &c.num_hidden_layers, std::nullopt));
  CFG_RETURN_IF_ERROR(r.Int("num_attention_heads", &c.num_attention_heads, std::nullopt));
  CFG_RETURN_IF_ERROR(r.Int("num_key_value_heads", &c.num_key_value_heads, c.num_attention_heads));
  if (!r.Has("head_dim")) {
    if (c.num_attention_heads <= 0 || c.hidden_size % c.num_attention_heads != 0) {
      return r.Error("head_dim",
                     "is missing and hidden_size is not divisible by "
                     "num_attention_heads");
    }
  }
  CFG_RETURN_IF_ERROR(r.Int("head_dim", &c.head_dim,
                            c.num_attention_heads > 0 ? c.hidden_size / c.num_attention_heads : 0));
  CFG_RETURN_IF_ERROR(r.Double("rms_norm_eps", &c.rms_norm_eps, 1e-6));
  CFG_RETURN_IF_ERROR(r.Double("rope_theta", &c.rope_theta, 10000.0));
  CFG_RETURN_IF_ERROR(ParseRopeScaling(root, origin, &c.rope_scaling));
  CFG_RETURN_IF_ERROR(r.Bool("tie_word_embeddings", &c.tie_word_embeddings, false));
  CFG_RETURN_IF_ERROR(r.String("hidden_act", &c.hidden_act, "silu"));
  CFG_RETURN_IF_ERROR(r.Int("max_position_embeddings", &c.max_position_embeddings, 2048));
  CFG_RETURN_IF_ERROR(r.Int("bos_token_id", &c.bos_token_id, -1));
  CFG_RETURN_IF_ERROR(ParseEos(root, origin, &c.eos_token_ids));
  for (const char* field : {"attention_bias", "mlp_bias"}) {
    bool bias = false;
    CFG_RETURN_IF_ERROR(r.Bool(field, &bias, false));
    if (bias) return r.Error(field, "is true; biases are not supported");
  }
  int64_t tp = 1;
  CFG_RETURN_IF_ERROR(r.Int("pretraining_tp", &tp, 1));

  if (c.kind != ModelKind::kLlama) {
    CFG_RETURN_IF_ERROR(r.Int("num_tokens", &c.num_tokens, std::nullopt));
    CFG_RETURN_IF_ERROR(r.Int("num_blocks", &c.num_blocks, std::nullopt));
    // The official classes default add_bos_embedding to true.
    CFG_RETURN_IF_ERROR(r.Bool("add_bos_embedding", &c.add_bos_embedding, true));
    // configuration_memoryllm.py defaults it to false.
    CFG_RETURN_IF_ERROR(r.Bool("drop_memory_per_layer", &c.drop_memory_per_layer, false));
    CFG_RETURN_IF_ERROR(r.Bool("add_decoder_lora", &c.add_decoder_lora, false));
    CFG_RETURN_IF_ERROR(ParseLora(root, origin, &c.lora));
  }
  if (c.kind == ModelKind::kMPlus) {
    // Defaults are the official MPlus.__init__ fallbacks (modeling_mplus.py).
    CFG_RETURN_IF_ERROR(r.Int("num_ltm_blocks", &c.num_ltm_blocks, 10));
    CFG_RETURN_IF_ERROR(r.Int("selector_hidden_dim", &c.selector_hidden_dim, std::nullopt));
    CFG_RETURN_IF_ERROR(r.Int("num_selector_layers", &c.num_selector_layers, std::nullopt));
    CFG_RETURN_IF_ERROR(r.Int("ltm_initial_size", &c.ltm_initial_size, 0));
    CFG_RETURN_IF_ERROR(r.Int("update_ltm_frequency", &c.update_ltm_frequency, c.num_blocks));
    CFG_RETURN_IF_ERROR(r.Double("decay_frequency", &c.decay_frequency, 1.0));
    CFG_RETURN_IF_ERROR(r.Double("initial_rf_when_moving_stm_to_ltm",
                                 &c.initial_rf_when_moving_stm_to_ltm, std::nullopt));
    CFG_RETURN_IF_ERROR(r.Bool("add_encoder_retriever", &c.add_encoder_retriever, false));
    bool add_selector = true;
    CFG_RETURN_IF_ERROR(r.Bool("add_selector", &add_selector, true));
    if (!add_selector) return r.Error("add_selector", "must be true for M+ (the retriever)");
    if (r.Has("selector_layers")) {
      return r.Error("selector_layers",
                     "is set; retrievers on a subset of layers are not supported");
    }
    std::string mode;
    CFG_RETURN_IF_ERROR(r.String("update_ltm_mode", &mode, "immediate"));
    if (mode != "immediate") {
      return r.Error("update_ltm_mode",
                     absl::StrCat("is \"", mode, "\"; only \"immediate\" is supported"));
    }
  }
  if (tp != 1) return r.Error("pretraining_tp", "must be 1");
  CFG_RETURN_IF_ERROR(ValidateModelConfig(c, origin));
  return c;
}

absl::Status ValidateModelConfig(const ModelConfig& c, const std::string& origin) {
  CFG_RETURN_IF_ERROR(Positive(origin, "vocab_size", c.vocab_size));
  CFG_RETURN_IF_ERROR(Positive(origin, "hidden_size", c.hidden_size));
  CFG_RETURN_IF_ERROR(Positive(origin, "intermediate_size", c.intermediate_size));
  CFG_RETURN_IF_ERROR(Positive(origin, "num_hidden_layers", c.num_hidden_layers));
  CFG_RETURN_IF_ERROR(Positive(origin, "num_attention_heads", c.num_attention_heads));
  CFG_RETURN_IF_ERROR(Positive(origin, "num_key_value_heads", c.num_key_value_heads));
  CFG_RETURN_IF_ERROR(Positive(origin, "head_dim", c.head_dim));
  CFG_RETURN_IF_ERROR(Positive(origin, "rms_norm_eps", c.rms_norm_eps));
  CFG_RETURN_IF_ERROR(Positive(origin, "rope_theta", c.rope_theta));
  auto bad = [&](const char* field, const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat(origin, ": field \"", field, "\" ", why));
  };
  if (c.num_attention_heads % c.num_key_value_heads != 0) {
    return bad("num_key_value_heads",
               absl::StrCat("(", c.num_key_value_heads, ") must divide num_attention_heads (",
                            c.num_attention_heads, ")"));
  }
  if (c.head_dim % 2 != 0) return bad("head_dim", "must be even (RoPE rotates halves)");
  if (c.hidden_act != "silu") {
    return bad("hidden_act", absl::StrCat("is \"", c.hidden_act, "\"; only \"silu\" is supported"));
  }
  if (c.bos_token_id >= c.vocab_size) return bad("bos_token_id", "is not below vocab_size");
  for (int64_t eos : c.eos_token_ids) {
    if (eos < 0 || eos >= c.vocab_size) return bad("eos_token_id", "is outside the vocabulary");
  }
  if (c.rope_scaling.rope_type == "llama3") {
    const RopeScaling& s = c.rope_scaling;
    if (!(s.factor > 0) || !(s.low_freq_factor > 0) || !(s.high_freq_factor > s.low_freq_factor) ||
        s.original_max_position_embeddings <= 0) {
      return bad("rope_scaling",
                 "needs factor > 0, 0 < low_freq_factor < high_freq_factor and "
                 "original_max_position_embeddings > 0");
    }
  }
  if (!c.has_memory()) return absl::OkStatus();

  CFG_RETURN_IF_ERROR(Positive(origin, "num_tokens", c.num_tokens));
  CFG_RETURN_IF_ERROR(Positive(origin, "num_blocks", c.num_blocks));
  if (!c.add_bos_embedding) {
    return bad("add_bos_embedding", "is false; memory prefixes without BOS are not supported");
  }
  if (c.lora.r < 0 || (c.lora.r == 0) != c.lora.target_modules.empty()) {
    return bad("lora_config", "needs r > 0 together with a non-empty target_modules");
  }
  if (c.lora.r > 0 && !(c.lora.alpha > 0)) return bad("lora_config.lora_alpha", "must be positive");
  if (c.add_decoder_lora && c.lora.r == 0) {
    return bad("add_decoder_lora", "is true but there is no lora_config");
  }
  if (!c.has_long_term()) {
    if (c.num_ltm_blocks != 0) return bad("num_ltm_blocks", "must be 0 for MemoryLLM");
    return absl::OkStatus();
  }
  CFG_RETURN_IF_ERROR(Positive(origin, "num_ltm_blocks", c.num_ltm_blocks));
  if (c.num_ltm_blocks >= c.num_blocks) {
    return bad("num_ltm_blocks", absl::StrCat("(", c.num_ltm_blocks, ") must be below num_blocks (",
                                              c.num_blocks, ") so that short-term memory remains"));
  }
  CFG_RETURN_IF_ERROR(Positive(origin, "selector_hidden_dim", c.selector_hidden_dim));
  if (c.num_selector_layers != 1 && c.num_selector_layers != 2) {
    return bad("num_selector_layers", absl::StrCat("must be 1 or 2, got ", c.num_selector_layers));
  }
  if (c.ltm_initial_size < 0) return bad("ltm_initial_size", "must not be negative");
  CFG_RETURN_IF_ERROR(Positive(origin, "update_ltm_frequency", c.update_ltm_frequency));
  if (c.decay_frequency < 0) return bad("decay_frequency", "must not be negative");
  if (c.initial_rf_when_moving_stm_to_ltm < 0) {
    return bad("initial_rf_when_moving_stm_to_ltm", "must not be negative");
  }
  return absl::OkStatus();
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open config"));
  std::stringstream text;
  text << in.rdbuf();
  return ParseModelConfig(text.str(), path);
}

std::string ModelConfigToJson(const ModelConfig& c) {
  // ordered_json keeps the official file's field order, which people diff against.
  nlohmann::ordered_json j;
  switch (c.kind) {
    case ModelKind::kLlama:
      j["architectures"] = {"LlamaForCausalLM"};
      break;
    case ModelKind::kMemoryLLM:
      j["architectures"] = {"MemoryLLM"};
      break;
    case ModelKind::kMPlus:
      j["architectures"] = {"MPlus"};
      break;
  }
  j["model_type"] = "llama";
  j["attention_bias"] = false;
  j["attention_dropout"] = 0.0;
  if (c.bos_token_id >= 0) {
    j["bos_token_id"] = c.bos_token_id;
  } else {
    j["bos_token_id"] = nullptr;
  }
  if (c.eos_token_ids.size() == 1) {
    j["eos_token_id"] = c.eos_token_ids[0];
  } else if (c.eos_token_ids.empty()) {
    j["eos_token_id"] = nullptr;
  } else {
    j["eos_token_id"] = c.eos_token_ids;
  }
  j["pad_token_id"] = nullptr;
  j["hidden_act"] = c.hidden_act;
  j["initializer_range"] = 0.02;
  j["mlp_bias"] = false;
  j["pretraining_tp"] = 1;
  j["use_cache"] = true;
  j["torch_dtype"] = std::string(TorchDTypeName(c.dtype));
  j["max_position_embeddings"] = c.max_position_embeddings;
  if (c.rope_scaling.rope_type == "llama3") {
    j["rope_scaling"] = {
        {"rope_type", "llama3"},
        {"factor", c.rope_scaling.factor},
        {"low_freq_factor", c.rope_scaling.low_freq_factor},
        {"high_freq_factor", c.rope_scaling.high_freq_factor},
        {"original_max_position_embeddings", c.rope_scaling.original_max_position_embeddings}};
  } else {
    j["rope_scaling"] = nullptr;
  }
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  if (c.has_memory()) {
    j["add_bos_embedding"] = c.add_bos_embedding;
    j["drop_memory_per_layer"] = c.drop_memory_per_layer;
    j["add_decoder_lora"] = c.add_decoder_lora;
  }
  if (c.has_long_term()) {
    j["add_selector"] = true;
    j["add_encoder_retriever"] = c.add_encoder_retriever;
    j["map_from_hidden_states"] = true;
    j["detach_hidden_state"] = true;
    j["update_ltm_mode"] = "immediate";
  }
  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.hidden_size;
  j["intermediate_size"] = c.intermediate_size;
  j["num_hidden_layers"] = c.num_hidden_layers;
  j["num_attention_heads"] = c.num_attention_heads;
  j["num_key_value_heads"] = c.num_key_value_heads;
  j["head_dim"] = c.head_dim;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["rope_theta"] = c.rope_theta;
  if (c.has_memory()) {
    j["num_tokens"] = c.num_tokens;
    j["num_blocks"] = c.num_blocks;
    if (c.has_long_term()) j["num_ltm_blocks"] = c.num_ltm_blocks;
    if (c.lora.r > 0) {
      j["lora_config"] = {{"r", c.lora.r},
                          {"lora_alpha", c.lora.alpha},
                          {"lora_dropout", 0.1},
                          {"target_modules", c.lora.target_modules},
                          {"inference_mode", false}};
    } else {
      j["lora_config"] = nullptr;
    }
  }
  if (c.has_long_term()) {
    j["selector_hidden_dim"] = c.selector_hidden_dim;
    j["num_selector_layers"] = c.num_selector_layers;
    j["ltm_initial_size"] = c.ltm_initial_size;
    j["update_ltm_frequency"] = c.update_ltm_frequency;
    j["decay_frequency"] = c.decay_frequency;
    j["initial_rf_when_moving_stm_to_ltm"] = c.initial_rf_when_moving_stm_to_ltm;
  }
  return j.dump(2) + "\n";
}

#undef CFG_RETURN_IF_ERROR

}  // namespace mplus::engine
