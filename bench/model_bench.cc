// The whole M+ forward on the CPU backend for a mid-size random bf16 checkpoint written on the
// fly (L 4, d 2048, 16/4 heads of 128, I 5632, V 32000, K 64, 10 blocks of which 2 long-term:
// N 512 STM rows, K_ltm 128 retrieved rows, 1024 initial long-term entries): inject tokens/s,
// prefill (time to first token, long-term retrieval included) and decode tokens/s, wall time;
// and the backend memory a 1024-token prefill holds and peaks at.
// The checkpoint (~0.6 GB) is cached in $TMPDIR/mplus_model_bench (or /tmp).
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "benchmark/benchmark.h"
#include "engine/checkpoint_writer.h"
#include "engine/cpu/cpu_backend.h"
#include "engine/drop_slots.h"
#include "engine/model.h"
#include "memstore/in_memory_session.h"

namespace mplus::engine {
namespace {

constexpr int64_t kInjectTokens = 256, kPromptTokens = 128, kDecodeTokens = 32;

// mplus-8b with fewer, narrower layers and a smaller vocabulary and memory.
ModelConfig MidConfig() {
  ModelConfig c = Mplus8bConfig();
  c.vocab_size = 32000;
  c.hidden_size = 2048;
  c.intermediate_size = 5632;
  c.num_hidden_layers = 4;
  c.num_attention_heads = 16;
  c.num_key_value_heads = 4;
  c.bos_token_id = 1;
  c.eos_token_ids = {2};
  c.num_tokens = 64;
  c.num_blocks = 10;
  c.num_ltm_blocks = 2;
  c.ltm_initial_size = 1024;
  return c;
}

struct Fixture {
  std::string dir;
  std::unique_ptr<Model> model;
  std::vector<int32_t> inject_ids, prompt;
  Fixture() {
    const char* tmp = std::getenv("TMPDIR");
    dir = std::string(tmp != nullptr ? tmp : "/tmp") + "/mplus_model_bench";
    const ModelConfig config = MidConfig();
    if (!std::filesystem::exists(dir + "/config.json")) {
      CheckpointOptions options;
      options.seed = 11;
      if (absl::Status s = WriteRandomCheckpoint(config, options, dir); !s.ok()) {
        std::fprintf(stderr, "%s\n", s.ToString().c_str());
        std::abort();
      }
    }
    absl::StatusOr<std::unique_ptr<Model>> m = Model::Load(dir, ModelOptions());
    if (!m.ok()) {
      std::fprintf(stderr, "%s\n", m.status().ToString().c_str());
      std::abort();
    }
    model = *std::move(m);
    for (int64_t i = 0; i < kInjectTokens; ++i) inject_ids.push_back(3 + (i * 7919) % 31000);
    for (int64_t i = 0; i < kPromptTokens; ++i) prompt.push_back(3 + (i * 104729) % 31000);
  }
};

Fixture& Get() {
  static Fixture* f = new Fixture();
  return *f;
}

std::unique_ptr<memstore::InMemorySession> NewSession(const Model& model) {
  absl::StatusOr<std::unique_ptr<memstore::InMemorySession>> s =
      memstore::InMemorySession::Create(model);
  if (!s.ok()) std::abort();
  return *std::move(s);
}

void BM_Inject(benchmark::State& state) {
  Fixture& f = Get();
  const ModelConfig& c = f.model->config();
  auto mem = NewSession(*f.model);
  const auto drops =
      ChooseDropSlots(1, 0, static_cast<int>(c.num_hidden_layers), c.stm_tokens(), c.num_tokens);
  for (auto _ : state) {
    if (!f.model->Inject(*mem, f.inject_ids, drops).ok()) state.SkipWithError("Inject failed");
  }
  state.counters["tokens_per_s"] = benchmark::Counter(
      static_cast<double>(kInjectTokens * state.iterations()), benchmark::Counter::kIsRate);
}
BENCHMARK(BM_Inject)->Unit(benchmark::kMillisecond)->UseRealTime();

// Time to first token for a 128-token prompt: retrieval + forward over [bos ; LTM ; STM ;
// prompt] + logits. Cold: a fresh session (empty prefix cache) each time; warm: the session's
// prefix cache already holds the bos and STM rows.
void BM_Prefill(benchmark::State& state) {
  Fixture& f = Get();
  const bool warm = state.range(0) != 0;
  auto mem = NewSession(*f.model);
  PrefillOutput out;
  if (warm && !f.model->Prefill(*mem, f.prompt, 1, false, &out).ok()) std::abort();
  for (auto _ : state) {
    if (!warm) {
      state.PauseTiming();
      mem = NewSession(*f.model);
      state.ResumeTiming();
    }
    if (!f.model->Prefill(*mem, f.prompt, 1, false, &out).ok()) state.SkipWithError("failed");
  }
  state.counters["prompt_tokens_per_s"] = benchmark::Counter(
      static_cast<double>(kPromptTokens * state.iterations()), benchmark::Counter::kIsRate);
}
BENCHMARK(BM_Prefill)
    ->ArgName("warm")
    ->Arg(0)
    ->Arg(1)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// One decode step (a token appended after the prefix and the 128-token prompt).
void BM_Decode(benchmark::State& state) {
  Fixture& f = Get();
  auto mem = NewSession(*f.model);
  PrefillOutput out;
  absl::StatusOr<std::unique_ptr<DecodeState>> ds =
      f.model->Prefill(*mem, f.prompt, kDecodeTokens, false, &out);
  if (!ds.ok()) std::abort();
  int32_t token = 5;
  for (auto _ : state) {
    if (!f.model->Decode(**ds, token).ok()) state.SkipWithError("Decode failed");
    token = 3 + (token * 31) % 31000;
  }
  state.counters["tokens_per_s"] =
      benchmark::Counter(static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
}
BENCHMARK(BM_Decode)->Iterations(kDecodeTokens)->Unit(benchmark::kMillisecond)->UseRealTime();

// A CPU backend that counts the bytes of the tensors it has allocated and are still alive, and
// their peak: on a GPU the same allocations are device memory.
class PeakBytesBackend : public cpu::CpuBackend {
 public:
  PeakBytesBackend() : cpu::CpuBackend(0) {}
  absl::StatusOr<Tensor> Allocate(DType dtype, std::vector<int64_t> shape) override {
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    if (n < 0) return absl::InvalidArgumentError("Allocate: negative dimension");
    const auto bytes = static_cast<int64_t>(std::max<size_t>(1, n * DTypeSize(dtype)));
    void* data = std::malloc(static_cast<size_t>(bytes));
    if (data == nullptr) return absl::ResourceExhaustedError("Allocate");
    live_ += bytes;  // allocations come from the model's thread only
    peak_ = std::max(peak_.load(), live_.load());
    return Tensor::Own(dtype, std::move(shape), Device::kCpu,
                       std::shared_ptr<void>(data, [this, bytes](void* p) {
                         live_ -= bytes;
                         std::free(p);
                       }));
  }
  int64_t live() const { return live_; }
  int64_t peak() const { return peak_; }
  void ResetPeak() { peak_ = live_.load(); }

 private:
  std::atomic<int64_t> live_{0}, peak_{0};
};

// Backend memory of a 1024-token prefill (prefix cache warm): what the generation keeps (its
// KV cache) and the peak of the transients on top, which set a GPU's peak for long prompts.
// Argument: 0 for the checkpoint's KV cache type, 1 for --kv_cache_dtype=fp8.
void BM_PrefillMemory(benchmark::State& state) {
  constexpr int64_t kLongPrompt = 1024;
  Fixture& f = Get();
  auto backend = std::make_shared<PeakBytesBackend>();
  ModelOptions options;
  options.backend = backend;
  if (state.range(0) == 1) options.kv_cache_dtype = DType::kF8E4M3;
  state.SetLabel(state.range(0) == 1 ? "fp8 KV" : "checkpoint KV");
  absl::StatusOr<std::unique_ptr<Model>> model = Model::Load(f.dir, options);
  if (!model.ok()) std::abort();
  auto mem = NewSession(**model);
  std::vector<int32_t> prompt;
  for (int64_t i = 0; i < kLongPrompt; ++i) prompt.push_back(3 + (i * 7919) % 31000);
  PrefillOutput out;
  if (!(*model)->Prefill(*mem, prompt, 1, false, &out).ok()) std::abort();  // fills the cache
  int64_t kept = 0, transient = 0;
  for (auto _ : state) {
    const int64_t before = backend->live();
    backend->ResetPeak();
    auto generation = (*model)->Prefill(*mem, prompt, 1, false, &out);
    if (!generation.ok()) state.SkipWithError("Prefill failed");
    kept = backend->live() - before;
    transient = backend->peak() - backend->live();
  }
  state.counters["kv_cache_MB"] = static_cast<double>(kept) / 1e6;
  state.counters["peak_transient_MB"] = static_cast<double>(transient) / 1e6;
}
BENCHMARK(BM_PrefillMemory)
    ->Arg(0)
    ->Arg(1)
    ->Iterations(1)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace
}  // namespace mplus::engine

BENCHMARK_MAIN();
