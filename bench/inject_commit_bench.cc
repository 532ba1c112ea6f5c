// Commit of one inject chunk through MemoryStore (SessionHandle::Commit) at mplus-8b's
// short-term shape (N = 12,800 tokens of 4096 bf16 per layer, K = 256 new and dropped per
// layer, retrieval keys of 256), on kLayers layers (32 in the model): the RocksDB batch (new
// rows, long-term moves, WAL without fsync) and bringing the in-RAM memory in line.
// Arguments: long-term entries per layer in the checkpoint (0, or mplus-8b's steady state of
// ~150k), update_ltm_frequency (60 in mplus-8b: a merge every 60 injects; 1: every commit
// merges, decays and evicts), and mode (0: Commit; 1: StartCommit, each write overlapping the
// next chunk's staging, as the server does; 2: StartCommit after the previous write finished,
// whose stage_ms counter is the staging alone, the commit's share of the critical path).
#include <chrono>
#include <filesystem>
#include <map>
#include <random>
#include <utility>
#include <vector>

#include "bench/mplus8b_stand_in.h"
#include "benchmark/benchmark.h"
#include "memstore/memory_store.h"

namespace mplus::memstore {
namespace {

constexpr int64_t kLayers = 4;

struct Setup : bench::Mplus8bStandIn {
  std::string path;
  Setup(int64_t ltm_entries, int64_t update_frequency)
      : Mplus8bStandIn(kLayers, ltm_entries, update_frequency),
        path((std::filesystem::temp_directory_path() / "mplus-inject-commit-bench").string()) {}
};

void BM_CommitInject(benchmark::State& state) {
  static auto* setups = new std::map<std::pair<int64_t, int64_t>, Setup>();
  const auto args = std::make_pair(state.range(0), state.range(1));
  const Setup& s = setups->try_emplace(args, args.first, args.second).first->second;
  std::filesystem::remove_all(s.path);
  StoreOptions options;
  options.path = s.path;
  options.sync_writes = false;  // the fsync is the disk's, not ours
  auto store = MemoryStore::Open(options, s.config, s.weights);
  if (!store.ok() || !(*store)->CreateSession("bench", {}, 0).ok()) {
    state.SkipWithError("cannot create the session");
    return;
  }
  std::mt19937 rng(1);
  std::vector<engine::InjectResult> injects;
  for (int64_t i = 0; i < state.max_iterations; ++i)
    injects.push_back(bench::RandomInject(s.config, rng));
  auto handle = (*store)->Acquire("bench");
  if (!handle.ok()) {
    state.SkipWithError("cannot acquire the session");
    return;
  }
  // mode 1: each chunk's write overlaps the next chunk's staging (StartCommit, as the server
  // does with Model::Inject in between); the last write is waited for inside the timing.
  // mode 2: the previous write finished first, so stage_ms is StartCommit alone: what a chunk's
  // commit adds to the server's critical path when its write hides behind the next inject.
  const int64_t mode = state.range(2);
  size_t i = 0;
  double stage_seconds = 0;
  for (auto _ : state) {
    const engine::InjectResult& inject = injects[i++];
    absl::Status committed;
    if (mode == 0) {
      committed = handle->Commit(inject, 512);
    } else {
      if (mode == 2) committed = handle->FinishCommit();
      const auto start = std::chrono::steady_clock::now();
      if (committed.ok()) committed = handle->StartCommit(inject, 512);
      stage_seconds +=
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      if (committed.ok() && i == injects.size()) committed = handle->FinishCommit();
    }
    if (!committed.ok()) state.SkipWithError("commit failed");
  }
  state.counters["layers"] = kLayers;
  if (mode == 2) state.counters["stage_ms"] = stage_seconds * 1e3 / static_cast<double>(i);
  handle = absl::CancelledError("released");  // the session goes back before the store closes
  store->reset();
  std::filesystem::remove_all(s.path);
}
BENCHMARK(BM_CommitInject)
    ->ArgNames({"ltm", "update_freq", "mode"})
    ->Args({0, 1, 0})
    ->Args({0, 1, 1})
    ->Args({0, 1, 2})
    ->Args({150000, 60, 0})
    ->Args({150000, 60, 1})
    ->Args({150000, 60, 2})
    ->Args({150000, 1, 0})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->Iterations(8);

}  // namespace
}  // namespace mplus::memstore
BENCHMARK_MAIN();
