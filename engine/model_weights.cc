#include "engine/model_weights.h"

#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace mplus::engine {
namespace {

// Looks tensors up with the checks every model weight shares: presence, exact shape, and the
// checkpoint's dtype (config.json torch_dtype).
class Loader {
 public:
  Loader(const WeightStore& store, const ModelConfig& config) : store_(store), config_(config) {}

  absl::StatusOr<TensorView> Weight(const std::string& name, std::vector<int64_t> shape) const {
    if (!store_.Contains(name)) return Missing(name);
    absl::StatusOr<TensorView> view = store_.GetFloat(name, shape);
    if (!view.ok()) return view.status();
    if (view->dtype != config_.dtype) {
      return absl::InvalidArgumentError(
          absl::StrCat(store_.FileOf(name), ": tensor \"", name, "\" has dtype ",
                       std::string(DTypeName(view->dtype)), " but config.json says torch_dtype ",
                       std::string(TorchDTypeName(config_.dtype)), " (",
                       std::string(DTypeName(config_.dtype)), ")"));
    }
    return view;
  }

  // Ages and recall frequencies are bookkeeping numbers: any numeric dtype, shape [n].
  absl::StatusOr<TensorView> Vector(const std::string& name, int64_t n) const {
    if (!store_.Contains(name)) return Missing(name);
    absl::StatusOr<TensorView> view = store_.Get(name);
    if (!view.ok()) return view.status();
    if (view->shape != std::vector<int64_t>{n}) {
      return absl::InvalidArgumentError(
          absl::StrCat(store_.FileOf(name), ": tensor \"", name, "\" has shape [",
                       absl::StrJoin(view->shape, ", "), "], expected [", n, "]"));
    }
    return view;
  }

  absl::Status Missing(const std::string& name) const {
    std::string hint;
    // The usual cause is a lora_config that does not match how the checkpoint was saved.
    constexpr std::string_view kBase = ".base_layer.weight";
    if (name.size() > kBase.size() && name.ends_with(kBase)) {
      const std::string plain = name.substr(0, name.size() - kBase.size()) + ".weight";
      if (store_.Contains(plain)) {
        hint = absl::StrCat(" (found \"", plain,
                            "\": is the module really in lora_config.target_modules?)");
      }
    } else if (name.ends_with(".weight")) {
      const std::string wrapped = name.substr(0, name.size() - 7) + ".base_layer.weight";
      if (store_.Contains(wrapped)) {
        hint = absl::StrCat(" (found \"", wrapped,
                            "\": lora_config.target_modules seems to miss this module)");
      }
    }
    return absl::NotFoundError(
        absl::StrCat("checkpoint ", store_.FileOf(name), ": missing tensor \"", name, "\"", hint));
  }

  absl::Status Linear(const std::string& prefix, const std::string& module, int64_t out, int64_t in,
                      LinearWeights* w) const {
    const std::string m = prefix + module;
    const LoraConfig& lora = config_.lora;
    if (!config_.has_memory() || !lora.Targets(module)) {
      return Assign(Weight(m + ".weight", {out, in}), &w->weight);
    }
    if (absl::Status s = Assign(Weight(m + ".base_layer.weight", {out, in}), &w->weight); !s.ok()) {
      return s;
    }
    const char* adapter_names[kNumAdapters] = {"default", "decoder_adapter"};
    const int adapters = config_.add_decoder_lora ? 2 : 1;
    for (int a = 0; a < adapters; ++a) {
      const std::string suffix = absl::StrCat(".", adapter_names[a], ".weight");
      if (absl::Status s = Assign(Weight(m + ".lora_A" + suffix, {lora.r, in}), &w->lora_a[a]);
          !s.ok()) {
        return s;
      }
      if (absl::Status s = Assign(Weight(m + ".lora_B" + suffix, {out, lora.r}), &w->lora_b[a]);
          !s.ok()) {
        return s;
      }
    }
    return absl::OkStatus();
  }

  absl::Status Projector(const std::string& name, ProjectorWeights* p) const {
    const int64_t d = config_.hidden_size, sel = config_.selector_hidden_dim;
    p->linears.clear();
    if (config_.num_selector_layers == 1) {
      p->linears.emplace_back();
      return Assign(Weight(name + ".weight", {sel, d}), &p->linears[0]);
    }
    // nn.Sequential(Linear, act, Linear): the activation is index 1.
    p->linears.resize(2);
    if (absl::Status s = Assign(Weight(name + ".0.weight", {2 * sel, d}), &p->linears[0]);
        !s.ok()) {
      return s;
    }
    return Assign(Weight(name + ".2.weight", {sel, 2 * sel}), &p->linears[1]);
  }

  static absl::Status Assign(absl::StatusOr<TensorView> view, TensorView* out) {
    if (!view.ok()) return view.status();
    *out = *std::move(view);
    return absl::OkStatus();
  }

 private:
  const WeightStore& store_;
  const ModelConfig& config_;
};

#define WEIGHTS_RETURN_IF_ERROR(expr)         \
  do {                                        \
    if (absl::Status _s = (expr); !_s.ok()) { \
      return _s;                              \
    }                                         \
  } while (0)

}  // namespace

absl::StatusOr<ModelWeights> ModelWeights::Load(const WeightStore& store,
                                                const ModelConfig& config) {
  const Loader load(store, config);
  const int64_t L = config.num_hidden_layers, d = config.hidden_size, V = config.vocab_size;
  const int64_t I = config.intermediate_size, hd = config.head_dim;
  const int64_t q_out = config.num_attention_heads * hd, kv_out = config.num_key_value_heads * hd;
  ModelWeights w;

  WEIGHTS_RETURN_IF_ERROR(
      Loader::Assign(load.Weight("model.embed_tokens.weight", {V, d}), &w.embed_tokens));
  WEIGHTS_RETURN_IF_ERROR(Loader::Assign(load.Weight("model.norm.weight", {d}), &w.final_norm));
  if (config.tie_word_embeddings) {
    w.lm_head = w.embed_tokens;
  } else {
    WEIGHTS_RETURN_IF_ERROR(Loader::Assign(load.Weight("lm_head.weight", {V, d}), &w.lm_head));
  }

  w.layers.resize(L);
  for (int64_t l = 0; l < L; ++l) {
    LayerWeights& layer = w.layers[l];
    const std::string p = absl::StrCat("model.layers.", l, ".");
    WEIGHTS_RETURN_IF_ERROR(
        Loader::Assign(load.Weight(p + "input_layernorm.weight", {d}), &layer.input_layernorm));
    WEIGHTS_RETURN_IF_ERROR(Loader::Assign(load.Weight(p + "post_attention_layernorm.weight", {d}),
                                           &layer.post_attention_layernorm));
    const std::string attn = p + "self_attn.", mlp = p + "mlp.";
    WEIGHTS_RETURN_IF_ERROR(load.Linear(attn, "q_proj", q_out, d, &layer.q_proj));
    WEIGHTS_RETURN_IF_ERROR(load.Linear(attn, "k_proj", kv_out, d, &layer.k_proj));
    WEIGHTS_RETURN_IF_ERROR(load.Linear(attn, "v_proj", kv_out, d, &layer.v_proj));
    WEIGHTS_RETURN_IF_ERROR(load.Linear(attn, "o_proj", d, q_out, &layer.o_proj));
    WEIGHTS_RETURN_IF_ERROR(load.Linear(mlp, "gate_proj", I, d, &layer.gate_proj));
    WEIGHTS_RETURN_IF_ERROR(load.Linear(mlp, "up_proj", I, d, &layer.up_proj));
    WEIGHTS_RETURN_IF_ERROR(load.Linear(mlp, "down_proj", d, I, &layer.down_proj));
    if (config.has_long_term()) {
      WEIGHTS_RETURN_IF_ERROR(load.Projector(attn + "query_proj", &layer.query_proj));
      WEIGHTS_RETURN_IF_ERROR(load.Projector(attn + "key_proj", &layer.key_proj));
    }
  }
  if (!config.has_memory()) return w;

  WEIGHTS_RETURN_IF_ERROR(
      Loader::Assign(load.Weight("memory", {L, config.stm_tokens(), d}), &w.memory));
  WEIGHTS_RETURN_IF_ERROR(
      Loader::Assign(load.Weight("bos_embedding", {L, 1, d}), &w.bos_embedding));
  WEIGHTS_RETURN_IF_ERROR(Loader::Assign(load.Weight("new_memory_positional_emb", {1, 1, d}),
                                         &w.new_memory_positional_emb));
  if (!config.has_long_term()) return w;

  // The initial long-term memory size comes from the file (per layer); the four tensors of a
  // layer must agree on it.
  w.ltm.resize(L);
  w.ltm_keys.resize(L);
  w.ltm_ages.resize(L);
  w.ltm_recall_frequencies.resize(L);
  for (int64_t l = 0; l < L; ++l) {
    const std::string ltm_name = absl::StrCat("ltm.", l);
    if (!store.Contains(ltm_name)) return load.Missing(ltm_name);
    absl::StatusOr<TensorView> ltm = store.Get(ltm_name);
    if (!ltm.ok()) return ltm.status();
    const int64_t n0 = ltm->shape.size() == 2 ? ltm->shape[0] : -1;
    if (n0 < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(store.FileOf(ltm_name), ": tensor \"", ltm_name, "\" has shape [",
                       absl::StrJoin(ltm->shape, ", "), "], expected [n, ", d, "]"));
    }
    WEIGHTS_RETURN_IF_ERROR(Loader::Assign(load.Weight(ltm_name, {n0, d}), &w.ltm[l]));
    WEIGHTS_RETURN_IF_ERROR(
        Loader::Assign(load.Weight(absl::StrCat("ltm_keys.", l), {n0, config.selector_hidden_dim}),
                       &w.ltm_keys[l]));
    WEIGHTS_RETURN_IF_ERROR(
        Loader::Assign(load.Vector(absl::StrCat("ltm_ages.", l), n0), &w.ltm_ages[l]));
    WEIGHTS_RETURN_IF_ERROR(Loader::Assign(
        load.Vector(absl::StrCat("ltm_recall_frequencies.", l), n0), &w.ltm_recall_frequencies[l]));
  }
  return w;
}

#undef WEIGHTS_RETURN_IF_ERROR

}  // namespace mplus::engine
