// Long-term retrieval at a large key count, apart from any session: a LongTermMemory with the
// model's parameters and random merged keys on every layer, scored by LongTermRetriever in each
// mode with queries on the backend (as Model::Prefill passes them), plus the upload of the
// chosen vectors that follows every retrieval.
#include <algorithm>
#include <random>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/status_macros.h"
#include "memstore/long_term_index.h"
#include "tests/gpu/model_bench.h"

namespace mplus::model_bench {
namespace {

constexpr int64_t kQueries = 64;
constexpr int64_t kLongQueries = 512;  // a long prompt, where host scoring costs most
constexpr int kSteadyPasses = 3;

std::vector<float> RandomFloats(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = dist(rng);
  return v;
}

// `count` merged entries with random keys on every layer, layers filled in parallel.
void FillLayers(memstore::LongTermMemory& ltm, int64_t count, int threads) {
  const int num_layers = ltm.num_layers();
  const int64_t p = ltm.params().key_dim;
  auto fill = [&](int first) {
    for (int l = first; l < num_layers; l += threads) {
      std::mt19937 rng(static_cast<uint32_t>(l) + 100);
      std::uniform_real_distribution<float> dist(-0.1f, 0.1f);
      std::vector<float> key(static_cast<size_t>(p));
      memstore::LongTermLayer& layer = ltm.layer(l);
      for (int64_t i = 0; i < count; ++i) {
        for (float& x : key) x = dist(rng);
        // Older entries first, as after many injects.
        layer.AddMerged(static_cast<uint64_t>(i) + 1, key, count - i, 1.0);
      }
    }
  };
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) pool.emplace_back(fill, t);
  for (std::thread& th : pool) th.join();
}

// Mean milliseconds per layer of `passes` passes of Select over every layer. Each Select gets
// fresh queries, so offload mode pays the device-to-host copy of the queries every time, as in a
// prefill.
absl::StatusOr<double> TimeSelect(memstore::LongTermRetriever& retriever,
                                  memstore::LongTermMemory& ltm, engine::Backend& backend,
                                  const std::vector<engine::Tensor>& queries, int passes) {
  double seconds = 0;
  for (int pass = 0; pass < passes; ++pass) {
    for (int l = 0; l < ltm.num_layers(); ++l) {
      engine::RetrievalQueries q(backend, queries[l]);
      const Clock::time_point start = Clock::now();
      MPLUS_ASSIGN_OR_RETURN(std::vector<int64_t> chosen, retriever.Select(ltm, l, q));
      seconds += SecondsSince(start);
      if (static_cast<int64_t>(chosen.size()) != ltm.params().retrieved_tokens) {
        return absl::InternalError(absl::StrCat("layer ", l, ": retrieval chose ", chosen.size(),
                                                " entries, expected ",
                                                ltm.params().retrieved_tokens));
      }
    }
  }
  return seconds * 1e3 / (passes * ltm.num_layers());
}

}  // namespace

absl::StatusOr<RetrievalResult> RunRetrieval(engine::Backend& backend,
                                             const engine::ModelConfig& config,
                                             int64_t keys_per_layer, int threads) {
  const memstore::LongTermParams params = memstore::LongTermParamsFor(config);
  const int num_layers = static_cast<int>(config.num_hidden_layers);
  if (keys_per_layer < params.retrieved_tokens) {
    return absl::InvalidArgumentError(absl::StrCat(
        "retrieval needs more than K_ltm = ", params.retrieved_tokens, " keys per layer"));
  }
  Clock::time_point start = Clock::now();
  memstore::LongTermMemory ltm(params, num_layers);
  FillLayers(ltm, keys_per_layer, std::max(1, std::min(threads, num_layers)));
  size_t key_bytes = 0;
  for (int l = 0; l < num_layers; ++l) key_bytes += ltm.layer(l).keys_bytes();
  Progress(absl::StrFormat("retrieval: %d layers x %d random %s keys of %d (%.2f GB) in %.1f s",
                           num_layers, keys_per_layer, engine::DTypeName(params.key_dtype),
                           params.key_dim, key_bytes / 1e9, SecondsSince(start)));

  const auto make_queries = [&](int64_t count) -> absl::StatusOr<std::vector<engine::Tensor>> {
    std::vector<engine::Tensor> queries;
    for (int l = 0; l < num_layers; ++l) {
      MPLUS_ASSIGN_OR_RETURN(engine::Tensor q,
                             backend.Allocate(engine::DType::kF32, {count, params.key_dim}));
      const std::vector<float> host = RandomFloats(count * params.key_dim, l + 1);
      MPLUS_RETURN_IF_ERROR(backend.CopyFromHost(host.data(), engine::DType::kF32, q));
      queries.push_back(std::move(q));
    }
    MPLUS_RETURN_IF_ERROR(backend.Synchronize());
    return queries;
  };
  MPLUS_ASSIGN_OR_RETURN(const std::vector<engine::Tensor> queries, make_queries(kQueries));

  RetrievalResult r;
  // Offload also with every prompt scored on the GPU (--offload_gpu_scoring_min_tokens=1).
  struct Variant {
    memstore::LongTermMode mode;
    int64_t offload_device_min_queries;
    RetrievalTimes* times;
    const char* name;
  };
  for (const Variant& v :
       {Variant{memstore::LongTermMode::kResident, 0, &r.resident, "resident"},
        Variant{memstore::LongTermMode::kOffload, 0, &r.offload, "offload"},
        Variant{memstore::LongTermMode::kOffload, 1, &r.offload_on_gpu, "offload, GPU scoring"}}) {
    // Its mirrors are freed with it, before the next mode.
    memstore::LongTermRetriever retriever(v.mode, v.offload_device_min_queries);
    RetrievalTimes& t = *v.times;
    MPLUS_ASSIGN_OR_RETURN(t.first_ms, TimeSelect(retriever, ltm, backend, queries, 1));
    MPLUS_ASSIGN_OR_RETURN(t.steady_ms,
                           TimeSelect(retriever, ltm, backend, queries, kSteadyPasses));
    t.device_bytes = retriever.device_bytes();
    Progress(absl::StrFormat(
        "retrieval %s: %.3f ms per layer first use, %.3f ms steady; key mirrors %.2f GB", v.name,
        t.first_ms, t.steady_ms, t.device_bytes / 1e9));
  }
  {
    MPLUS_ASSIGN_OR_RETURN(const std::vector<engine::Tensor> long_queries,
                           make_queries(kLongQueries));
    memstore::LongTermRetriever on_host(memstore::LongTermMode::kOffload, 0);
    memstore::LongTermRetriever on_gpu(memstore::LongTermMode::kOffload, 1);
    MPLUS_ASSIGN_OR_RETURN(r.long_prompt_host_ms,
                           TimeSelect(on_host, ltm, backend, long_queries, 1));
    MPLUS_ASSIGN_OR_RETURN(r.long_prompt_gpu_ms, TimeSelect(on_gpu, ltm, backend, long_queries, 1));
    Progress(absl::StrFormat(
        "retrieval offload, %d queries: %.3f ms per layer on the host, %.3f ms on the GPU",
        kLongQueries, r.long_prompt_host_ms, r.long_prompt_gpu_ms));
  }

  // The chosen vectors of one layer [K_ltm, hidden] from the host to the backend, as
  // Model::Prefill moves them: in the checkpoint dtype, widened to float32 on the device.
  const int64_t rows = params.retrieved_tokens, d = config.hidden_size;
  const std::vector<float> values = RandomFloats(rows * d, 999);
  std::vector<uint16_t> bf16(values.size());
  for (size_t i = 0; i < values.size(); ++i) bf16[i] = engine::FloatToBF16(values[i]);
  const bool narrow = config.dtype == engine::DType::kBF16;
  const void* host = narrow ? static_cast<const void*>(bf16.data()) : values.data();
  const engine::DType host_dtype = narrow ? engine::DType::kBF16 : engine::DType::kF32;
  MPLUS_ASSIGN_OR_RETURN(engine::Tensor dst, backend.Allocate(engine::DType::kF32, {rows, d}));
  constexpr int kCopies = 10;
  for (int i = 0; i <= kCopies; ++i) {
    if (i == 1) start = Clock::now();  // copy 0 warms up
    MPLUS_RETURN_IF_ERROR(backend.CopyFromHost(host, host_dtype, dst));
    MPLUS_RETURN_IF_ERROR(backend.Synchronize());
  }
  r.fetch_ms = SecondsSince(start) * 1e3 / kCopies;
  Progress(absl::StrFormat("retrieval: upload of %d x %d %s chosen vectors %.3f ms", rows, d,
                           engine::DTypeName(host_dtype), r.fetch_ms));
  return r;
}

}  // namespace mplus::model_bench
