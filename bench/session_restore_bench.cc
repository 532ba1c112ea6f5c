// Restore of one session from RocksDB into RAM (what MemoryStore::Acquire does for a session that
// is not resident: after a restart, or once the resident budget spilled it), at mplus-8b's
// short-term shape on kLayers layers (32 in the model): each layer's 12,800 short-term rows
// (100 MB) and its long-term records (keys, ages, recall frequencies) after `injects` commits.
// Two sessions share a resident budget that holds one, so acquiring them in turn restores one
// per iteration. Arguments: injects (mplus-8b keeps ~60 injects' worth of moved tokens between
// merges; 300 gives 76.8k session records per layer), checkpoint long-term entries per layer.
#include <filesystem>
#include <map>
#include <random>
#include <utility>

#include "bench/mplus8b_stand_in.h"
#include "benchmark/benchmark.h"
#include "memstore/memory_store.h"

namespace mplus::memstore {
namespace {

constexpr int64_t kLayers = 4;
constexpr int kSessions = 2;

void BM_RestoreSession(benchmark::State& state) {
  const int64_t injects = state.range(0), ltm_entries = state.range(1);
  // No merge during the injects (as between mplus-8b's merges): every moved token stays.
  static auto* stand_ins = new std::map<std::pair<int64_t, int64_t>, bench::Mplus8bStandIn>();
  const bench::Mplus8bStandIn& s =
      stand_ins->try_emplace({injects, ltm_entries}, kLayers, ltm_entries, injects + 1)
          .first->second;
  const std::string path =
      (std::filesystem::temp_directory_path() / "mplus-session-restore-bench").string();
  std::filesystem::remove_all(path);
  StoreOptions options;
  options.path = path;
  options.sync_writes = false;
  options.resident_budget_bytes = 1;  // every session but the one in use spills
  auto store = MemoryStore::Open(options, s.config, s.weights);
  if (!store.ok()) {
    state.SkipWithError("cannot open the store");
    return;
  }
  std::mt19937 rng(1);
  for (int i = 0; i < kSessions; ++i) {
    const std::string id = "s" + std::to_string(i);
    if (!(*store)->CreateSession(id, {}, 0).ok()) {
      state.SkipWithError("cannot create a session");
      return;
    }
    auto handle = (*store)->Acquire(id);
    for (int64_t j = 0; handle.ok() && j < injects; ++j) {
      if (!handle->Commit(bench::RandomInject(s.config, rng), 512).ok()) {
        state.SkipWithError("commit failed");
        return;
      }
    }
  }
  if (!(*store)->Flush().ok()) state.SkipWithError("flush failed");
  int next = 0;
  for (auto _ : state) {
    auto handle = (*store)->Acquire("s" + std::to_string(next));
    if (!handle.ok()) state.SkipWithError("restore failed");
    next = (next + 1) % kSessions;
  }
  state.counters["layers"] = kLayers;
  state.counters["records_per_layer"] = static_cast<double>(injects * s.config.num_tokens);
  store->reset();
  std::filesystem::remove_all(path);
}
BENCHMARK(BM_RestoreSession)
    ->ArgNames({"injects", "ltm"})
    ->Args({300, 0})
    ->Args({60, 150000})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->Iterations(6);

}  // namespace
}  // namespace mplus::memstore
BENCHMARK_MAIN();
