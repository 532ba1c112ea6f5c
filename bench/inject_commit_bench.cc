// Commit of one inject chunk through MemoryStore (SessionHandle::Commit) at mplus-8b's
// short-term shape (N = 12,800 tokens of 4096 bf16 per layer, K = 256 new and dropped per
// layer), on kLayers layers (32 in the model): the RocksDB batch (new rows, long-term moves,
// WAL without fsync) and bringing the in-RAM short-term rows in line.
#include <filesystem>
#include <random>

#include "bench/bf16_view.h"
#include "benchmark/benchmark.h"
#include "memstore/memory_store.h"

namespace mplus::memstore {
namespace {

constexpr int64_t kHidden = 4096, kK = 256, kKeyDim = 16, kLayers = 4;

struct Setup {
  engine::ModelConfig config;
  engine::ModelWeights weights;
  std::vector<uint16_t> memory, empty;
  std::string path;
  Setup() {
    config.kind = engine::ModelKind::kMPlus;
    config.dtype = engine::DType::kBF16;
    config.num_hidden_layers = kLayers;
    config.hidden_size = kHidden;
    config.num_tokens = kK;
    config.num_blocks = 50;  // N = 12,800, as mplus-8b
    config.num_ltm_blocks = 10;
    config.selector_hidden_dim = kKeyDim;
    config.update_ltm_frequency = 1;
    config.decay_frequency = 1;
    config.initial_rf_when_moving_stm_to_ltm = 1000;
    const int64_t n = config.stm_tokens();
    memory.assign(static_cast<size_t>(kLayers * n * kHidden), 0x3f80);
    empty.resize(1);
    const auto view = bench::Bf16View;
    weights.memory = view("memory", memory.data(), {kLayers, n, kHidden}, memory.size() * 2);
    for (int64_t l = 0; l < kLayers; ++l) {
      weights.ltm.push_back(view("ltm", empty.data(), {0, kHidden}, 0));
      weights.ltm_keys.push_back(view("ltm_keys", empty.data(), {0, kKeyDim}, 0));
      weights.ltm_ages.push_back(view("ltm_ages", empty.data(), {0}, 0));
      weights.ltm_recall_frequencies.push_back(view("ltm_rf", empty.data(), {0}, 0));
    }
    path = (std::filesystem::temp_directory_path() / "mplus-inject-commit-bench").string();
  }
};

engine::InjectResult RandomInject(const engine::ModelConfig& config, std::mt19937& rng) {
  std::normal_distribution<float> normal;
  std::vector<int32_t> all(static_cast<size_t>(config.stm_tokens()));
  for (size_t i = 0; i < all.size(); ++i) all[i] = static_cast<int32_t>(i);
  engine::InjectResult r;
  for (int64_t l = 0; l < kLayers; ++l) {
    r.delta.emplace_back(kK * kHidden);
    for (float& x : r.delta.back()) x = normal(rng);
    std::shuffle(all.begin(), all.end(), rng);
    std::vector<int32_t> slots(all.begin(), all.begin() + kK);
    std::sort(slots.begin(), slots.end());
    r.dropped.push_back(std::move(slots));
    r.dropped_keys.emplace_back(kK * kKeyDim);
    for (float& x : r.dropped_keys.back()) x = normal(rng);
  }
  return r;
}

void BM_CommitInject(benchmark::State& state) {
  static Setup* s = new Setup();
  std::filesystem::remove_all(s->path);
  StoreOptions options;
  options.path = s->path;
  options.sync_writes = false;  // the fsync is the disk's, not ours
  auto store = MemoryStore::Open(options, s->config, s->weights);
  if (!store.ok() || !(*store)->CreateSession("bench", {}, 0).ok()) {
    state.SkipWithError("cannot create the session");
    return;
  }
  std::mt19937 rng(1);
  for (auto _ : state) {
    state.PauseTiming();
    const engine::InjectResult inject = RandomInject(s->config, rng);
    auto handle = (*store)->Acquire("bench");
    state.ResumeTiming();
    if (!handle.ok() || !handle->Commit(inject, 512).ok()) state.SkipWithError("commit failed");
  }
  state.counters["layers"] = kLayers;
}
BENCHMARK(BM_CommitInject)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(8);

}  // namespace
}  // namespace mplus::memstore
BENCHMARK_MAIN();
