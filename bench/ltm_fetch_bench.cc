// Fetch of K_ltm = 2560 retrieved long-term vectors of 4096 bf16 from RocksDB through
// MemoryStore (RetrieveLongTerm: select + MultiGet of bf16 rows), warm (block cache and page
// cache hot), page-cached (store reopened: block cache empty) and cold (store reopened, files
// dropped from the page cache).
#include <fcntl.h>
#include <unistd.h>

#include <filesystem>
#include <random>

#include "bench/bf16_view.h"
#include "benchmark/benchmark.h"
#include "memstore/memory_store.h"

namespace mplus::memstore {
namespace {

constexpr int64_t kHidden = 4096, kK = 256, kKeyDim = 16, kInjects = 24;

struct Setup {
  engine::ModelConfig config;
  engine::ModelWeights weights;
  std::vector<uint16_t> memory;
  std::vector<uint16_t> empty;
  std::string path;
  std::vector<float> queries;
  Setup() {
    config.kind = engine::ModelKind::kMPlus;
    config.dtype = engine::DType::kBF16;
    config.num_hidden_layers = 1;
    config.hidden_size = kHidden;
    config.num_tokens = kK;
    config.num_blocks = 12;
    config.num_ltm_blocks = 10;  // N 512, K_ltm 2560
    config.selector_hidden_dim = kKeyDim;
    config.update_ltm_frequency = 1;
    config.decay_frequency = 1;
    config.initial_rf_when_moving_stm_to_ltm = 1000;  // no eviction
    memory.assign(config.stm_tokens() * kHidden, 0x3f80);
    const auto view = bench::Bf16View;
    weights.memory =
        view("memory", memory.data(), {1, config.stm_tokens(), kHidden}, memory.size() * 2);
    empty.resize(1);
    weights.ltm = {view("ltm.0", empty.data(), {0, kHidden}, 0)};
    weights.ltm_keys = {view("ltm_keys.0", empty.data(), {0, kKeyDim}, 0)};
    weights.ltm_ages = {view("ltm_ages.0", empty.data(), {0}, 0)};
    weights.ltm_recall_frequencies = {view("ltm_rf.0", empty.data(), {0}, 0)};
    path = (std::filesystem::temp_directory_path() / "mplus-ltm-fetch-bench").string();
    std::filesystem::remove_all(path);
    auto store = Open();
    (void)store->CreateSession("bench", {}, 0);
    std::mt19937 rng(1);
    std::normal_distribution<float> normal;
    for (int64_t n = 0; n < kInjects; ++n) {
      engine::InjectResult r;
      r.delta.emplace_back(kK * kHidden);
      for (float& x : r.delta[0]) x = normal(rng);
      std::vector<int32_t> slots(config.stm_tokens());
      for (size_t i = 0; i < slots.size(); ++i) slots[i] = static_cast<int32_t>(i);
      std::shuffle(slots.begin(), slots.end(), rng);
      slots.resize(kK);
      std::sort(slots.begin(), slots.end());
      r.dropped.push_back(slots);
      r.dropped_keys.emplace_back(kK * kKeyDim);
      for (float& x : r.dropped_keys[0]) x = normal(rng);
      auto h = store->Acquire("bench");
      (void)h->Commit(r, 512);
    }
    (void)store->Flush();
    queries.resize(64 * kKeyDim);
    for (float& x : queries) x = normal(rng);
  }
  std::unique_ptr<MemoryStore> Open() {
    StoreOptions o;
    o.path = path;
    return *MemoryStore::Open(o, config, weights);
  }
  void DropPageCache() {
    for (const auto& e : std::filesystem::directory_iterator(path)) {
      const int fd = open(e.path().c_str(), O_RDONLY);
      if (fd < 0) continue;
      fdatasync(fd);
      posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
      close(fd);
    }
  }
};

Setup& Get() {
  static Setup* s = new Setup();
  return *s;
}

void Fetch(benchmark::State& state, MemoryStore& store, std::vector<float>& out) {
  auto h = store.Acquire("bench");
  engine::RetrievalQueries queries(Get().queries.data(), 64, kKeyDim);
  if (!h.ok() || !h->memory().RetrieveLongTerm(0, queries, out.data()).ok()) {
    state.SkipWithError("retrieve failed");
  }
}

void BM_FetchWarm(benchmark::State& state) {
  Setup& s = Get();
  auto store = s.Open();
  std::vector<float> out(2560 * kHidden);
  Fetch(state, *store, out);  // warm up caches and residency
  for (auto _ : state) Fetch(state, *store, out);
  state.SetBytesProcessed(state.iterations() * 2560 * kHidden * 2);
}
BENCHMARK(BM_FetchWarm)->Unit(benchmark::kMillisecond)->UseRealTime();

// Each iteration reopens the store (an empty block cache) and, if `drop_page_cache`, evicts its
// files from the page cache too, then times one fetch.
void FetchReopened(benchmark::State& state, bool drop_page_cache) {
  Setup& s = Get();
  std::vector<float> out(2560 * kHidden);
  for (auto _ : state) {
    state.PauseTiming();
    std::unique_ptr<MemoryStore> store = s.Open();
    {
      auto h = store->Acquire("bench");  // residency (short-term) is not what we time
    }
    if (drop_page_cache) s.DropPageCache();
    state.ResumeTiming();
    Fetch(state, *store, out);
    state.PauseTiming();
    store.reset();
    state.ResumeTiming();
  }
  state.SetBytesProcessed(state.iterations() * 2560 * kHidden * 2);
}

// The block cache empty but the files in the page cache: mplus-8b's usual case, whose ~1.2 GB
// of vectors per layer and session dwarf the block cache.
void BM_FetchPageCached(benchmark::State& state) { FetchReopened(state, false); }
BENCHMARK(BM_FetchPageCached)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(10);

void BM_FetchCold(benchmark::State& state) { FetchReopened(state, true); }
BENCHMARK(BM_FetchCold)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(5);

}  // namespace
}  // namespace mplus::memstore

BENCHMARK_MAIN();
