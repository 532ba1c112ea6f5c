// mplus-probe: runs a scenario (inject / generate steps from a fresh session) and writes every
// intermediate the goldens check (tests/fixtures/tiny-mplus/README.md) to a safetensors file.
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "common/flags_help.h"
#include "engine/cuda_plugin.h"
#include "engine/model.h"
#include "engine/status_macros.h"
#include "memstore/in_memory_session.h"
#include "nlohmann/json.hpp"

ABSL_FLAG(std::string, scenario, "", "scenario JSON file");
ABSL_FLAG(std::string, out, "", "output safetensors file");
ABSL_FLAG(int, threads, 0, "CPU threads (0: all)");
ABSL_FLAG(bool, bf16_rope_inv_freq, true,
          "bf16 checkpoints: round RoPE inv_freq to bf16 like the official recipe");
ABSL_FLAG(std::string, kv_cache_dtype, "auto",
          "KV and prefix cache element type: auto (the checkpoint's), f32, bf16 or fp8 (to "
          "measure how far an fp8 cache moves the outputs from the goldens)");
ABSL_FLAG(std::string, merge_decoder_lora, "auto",
          "Fold the decoder LoRA into the base weights at load: auto (on with --device=cuda), "
          "true or false (to tell a merge problem from a kernel's)");
ABSL_FLAG(bool, replay_decode, true,
          "Decode steps replay the first step's recorded ops (one CUDA graph launch) where the "
          "backend can record them; false: every step op by op (tells a replay bug from a "
          "kernel's)");
ABSL_FLAG(std::string, device, "cpu",
          "Compute device: cpu, or cuda (GPU 0, through the CUDA backend plugin libmplus_cuda.so)");
ABSL_FLAG(std::string, cuda_plugin, "",
          "Path of libmplus_cuda.so for --device=cuda; empty: next to mplus-probe, then "
          "../lib/libmplus_cuda.so, then the build tree's");

// The build tree's plugin (set by tests/golden/golden.cmake), the last place --device=cuda looks.
#ifndef MPLUS_CUDA_PLUGIN_BUILD_PATH
#define MPLUS_CUDA_PLUGIN_BUILD_PATH "libmplus_cuda.so"
#endif

namespace mplus {
namespace {

using engine::DType;
using engine::TensorToWrite;
using nlohmann::json;

template <typename T>
TensorToWrite Make(std::string name, DType dtype, std::vector<int64_t> shape,
                   const std::vector<T>& values) {
  TensorToWrite t{std::move(name), dtype, std::move(shape), {}};
  t.bytes.resize(values.size() * sizeof(T));
  std::memcpy(t.bytes.data(), values.data(), t.bytes.size());
  return t;
}

int32_t Argmax(absl::Span<const float> logits) {
  size_t best = 0;
  for (size_t i = 1; i < logits.size(); ++i) {
    if (logits[i] > logits[best]) best = i;  // strict: the lowest id wins ties
  }
  return static_cast<int32_t>(best);
}

absl::StatusOr<std::vector<int32_t>> ReadIds(const json& step, const std::string& where) {
  if (!step.contains("ids") || !step["ids"].is_array()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": \"ids\" must be an array"));
  }
  std::vector<int32_t> ids;
  for (const json& v : step["ids"]) {
    if (!v.is_number_integer()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": \"ids\" must hold integers"));
    }
    ids.push_back(v.get<int32_t>());
  }
  return ids;
}

absl::StatusOr<std::vector<std::vector<int32_t>>> ReadDrops(const json& step,
                                                            const std::string& where) {
  if (!step.contains("drop") || !step["drop"].is_array()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": \"drop\" must be a list per layer"));
  }
  std::vector<std::vector<int32_t>> drops;
  for (const json& layer : step["drop"]) {
    if (!layer.is_array()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": \"drop\" entries must be arrays"));
    }
    std::vector<int32_t> slots;
    for (const json& v : layer) {
      if (!v.is_number_integer()) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": drop slots must be integers"));
      }
      slots.push_back(v.get<int32_t>());
    }
    drops.push_back(std::move(slots));
  }
  return drops;
}

// STM (as float32) and ltm_count after a step.
void AddMemoryState(const engine::Model& model, const memstore::InMemorySession& session,
                    const std::string& prefix, std::vector<TensorToWrite>& out) {
  const engine::ModelConfig& c = model.config();
  const int layers = static_cast<int>(c.num_hidden_layers);
  const int64_t n = c.stm_tokens(), d = c.hidden_size;
  std::vector<float> stm;
  std::vector<int64_t> counts;
  for (int l = 0; l < layers; ++l) {
    const engine::ShortTermRows v = session.ShortTerm(l);
    for (int64_t slot = 0; slot < n; ++slot) {
      for (int64_t j = 0; j < d; ++j) stm.push_back(v.GetFloat(slot, j));
    }
    counts.push_back(session.ltm_count(l));
  }
  out.push_back(Make(prefix + ".stm", DType::kF32, {layers, n, d}, stm));
  out.push_back(Make(prefix + ".ltm_count", DType::kI64, {layers}, counts));
}

absl::Status Run(const std::string& scenario_path, const std::string& out_path) {
  std::ifstream in(scenario_path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read scenario ", scenario_path));
  std::stringstream text;
  text << in.rdbuf();
  json scenario = json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (scenario.is_discarded() || !scenario.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(scenario_path, ": not a JSON object"));
  }
  if (!scenario.contains("checkpoint") || !scenario["checkpoint"].is_string() ||
      !scenario.contains("steps") || !scenario["steps"].is_array()) {
    return absl::InvalidArgumentError(
        absl::StrCat(scenario_path, ": needs \"checkpoint\" (string) and \"steps\" (array)"));
  }
  const std::filesystem::path dir = std::filesystem::path(scenario_path).parent_path() /
                                    scenario["checkpoint"].get<std::string>();
  engine::ModelOptions options;
  options.num_threads = absl::GetFlag(FLAGS_threads);
  options.bf16_rope_inv_freq = absl::GetFlag(FLAGS_bf16_rope_inv_freq);
  options.replay_decode = absl::GetFlag(FLAGS_replay_decode);
  MPLUS_ASSIGN_OR_RETURN(options.kv_cache_dtype,
                         engine::ParseKvCacheDType(absl::GetFlag(FLAGS_kv_cache_dtype)));
  MPLUS_ASSIGN_OR_RETURN(options.merge_decoder_lora,
                         engine::ParseMergeDecoderLora(absl::GetFlag(FLAGS_merge_decoder_lora)));
  std::unique_ptr<engine::CudaPlugin> plugin;  // declared first: outlives the model's backend
  if (absl::GetFlag(FLAGS_device) == "cuda") {
    MPLUS_ASSIGN_OR_RETURN(
        plugin, engine::CudaPlugin::Load(engine::CudaPluginPath(absl::GetFlag(FLAGS_cuda_plugin),
                                                                MPLUS_CUDA_PLUGIN_BUILD_PATH)));
    MPLUS_ASSIGN_OR_RETURN(options.backend, plugin->CreateBackend(/*device_ordinal=*/0));
  }
  MPLUS_ASSIGN_OR_RETURN(std::unique_ptr<engine::Model> model,
                         engine::Model::Load(dir.string(), options));
  MPLUS_ASSIGN_OR_RETURN(std::unique_ptr<memstore::InMemorySession> session,
                         memstore::InMemorySession::Create(*model));
  const engine::ModelConfig& c = model->config();
  const int layers = static_cast<int>(c.num_hidden_layers);
  std::vector<TensorToWrite> out;
  for (size_t i = 0; i < scenario["steps"].size(); ++i) {
    const json& step = scenario["steps"][i];
    const std::string where = absl::StrCat(scenario_path, ": step ", i);
    const std::string prefix = absl::StrCat("s", i);
    const std::string op = step.is_object() && step.contains("op") && step["op"].is_string()
                               ? step["op"].get<std::string>()
                               : "";
    MPLUS_ASSIGN_OR_RETURN(std::vector<int32_t> ids, ReadIds(step, where));
    if (op == "inject") {
      MPLUS_ASSIGN_OR_RETURN(std::vector<std::vector<int32_t>> drops, ReadDrops(step, where));
      MPLUS_ASSIGN_OR_RETURN(engine::InjectResult result, model->Inject(*session, ids, drops));
      MPLUS_RETURN_IF_ERROR(session->ApplyInject(result));
      std::vector<float> delta;
      for (const std::vector<float>& dl : result.delta)
        delta.insert(delta.end(), dl.begin(), dl.end());
      out.push_back(
          Make(prefix + ".delta", DType::kF32, {layers, c.num_tokens, c.hidden_size}, delta));
    } else if (op == "generate") {
      if (!step.contains("max_new_tokens") || !step["max_new_tokens"].is_number_integer() ||
          step["max_new_tokens"].get<int64_t>() < 1) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": \"max_new_tokens\" must be a positive integer"));
      }
      const int64_t max_new = step["max_new_tokens"].get<int64_t>();
      engine::PrefillOutput first;
      MPLUS_ASSIGN_OR_RETURN(std::unique_ptr<engine::DecodeState> state,
                             model->Prefill(*session, ids, max_new, true, &first));
      std::vector<int64_t> tokens;
      std::vector<float> logits = first.logits;
      for (int64_t t = 0; t < max_new; ++t) {
        const int32_t token = Argmax(logits);
        tokens.push_back(token);
        if (t + 1 < max_new) {
          MPLUS_ASSIGN_OR_RETURN(logits, model->Decode(*state, token));
        }
      }
      out.push_back(Make(prefix + ".logits", DType::kF32, {c.vocab_size}, first.logits));
      out.push_back(Make(prefix + ".tokens", DType::kI64, {max_new}, tokens));
      if (c.has_long_term()) {
        std::vector<float> retrieved;
        for (const std::vector<float>& r : first.retrieved)
          retrieved.insert(retrieved.end(), r.begin(), r.end());
        out.push_back(Make(prefix + ".retrieved", DType::kF32,
                           {layers, c.ltm_retrieved_tokens(), c.hidden_size}, retrieved));
      }
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": \"op\" must be \"inject\" or \"generate\""));
    }
    AddMemoryState(*model, *session, prefix, out);
  }
  return engine::WriteSafetensors(out_path, out);
}

}  // namespace
}  // namespace mplus

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Runs an M+ scenario and writes its intermediates.\n"
      "Usage: mplus-probe --scenario FILE.json --out FILE.safetensors [--device cpu|cuda]");
  mplus::ShowFlagsOfFileInHelp(__FILE__);
  absl::ParseCommandLine(argc, argv);
  const std::string scenario = absl::GetFlag(FLAGS_scenario);
  const std::string out = absl::GetFlag(FLAGS_out);
  if (scenario.empty() || out.empty()) {
    std::fprintf(stderr, "mplus-probe: --scenario and --out are required\n");
    return 2;
  }
  const std::string device = absl::GetFlag(FLAGS_device);
  if (device != "cpu" && device != "cuda") {
    std::fprintf(stderr, "mplus-probe: --device must be cpu or cuda, not \"%s\"\n", device.c_str());
    return 2;
  }
  const absl::Status status = mplus::Run(scenario, out);
  if (!status.ok()) {
    std::fprintf(stderr, "mplus-probe: %s\n", std::string(status.ToString()).c_str());
    return 1;
  }
  return 0;
}
