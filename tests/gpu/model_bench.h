// The parts of mplus_gpu_model_bench (tests/gpu/model_bench*.cc): timing of one M+ session per
// long-term mode on a loaded model, and of long-term retrieval at a large key count.
#ifndef MPLUS_TESTS_GPU_MODEL_BENCH_H_
#define MPLUS_TESTS_GPU_MODEL_BENCH_H_

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/backend.h"
#include "engine/cuda/cuda_backend.h"
#include "engine/model.h"
#include "engine/model_config.h"
#include "memstore/long_term_retriever.h"

namespace mplus::model_bench {

using Clock = std::chrono::steady_clock;

inline double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// A line on stderr stamped with the seconds since the bench started, so that a run killed by a
// timeout still shows how far it got.
void Progress(const std::string& line);

struct SessionSizes {
  int64_t chunk_tokens = 512;
  int inject_chunks = 8;  // timed, after one warm-up chunk
  int64_t short_prompt = 64, long_prompt = 1024;
  int decode_tokens = 64;  // timed, after one warm-up step
  // CUDA: after the timings, trace kernel_trace_steps decode steps and one long-prompt prefill
  // with CUPTI (0: no trace).
  int kernel_trace_steps = 0;
};

struct SessionResult {
  double inject_tokens_per_s = 0;        // Model::Inject + InMemorySession::ApplyInject
  double inject_model_tokens_per_s = 0;  // Model::Inject alone
  double ttft_cold_ms = 0;               // short prompt, prefix cache empty (right after an inject)
  double ttft_warm_ms = 0;               // short prompt, prefix cache filled
  double ttft_long_ms = 0;               // long prompt, prefix cache filled
  double decode_ms_per_token = 0;        // after the short prompt
  // Of which the host spent enqueueing (not waiting for the GPU): when it is close to the whole,
  // the GPU waits for the host (launch-bound).
  double decode_enqueue_ms_per_token = 0;
  // Whether those steps replayed a recorded step (ModelOptions::replay_decode), else why not;
  // and the same steps enqueued op by op.
  bool decode_replayed = false;
  std::string decode_not_replayed_why;
  double decode_step_by_step_ms_per_token = 0;
  // Replayed steps with the greedy token picked on the device (Model::DecodeGreedy).
  double decode_greedy_ms_per_token = 0;
  // Backend memory with the long prompt's KV cache alive; absent on a non-CUDA backend.
  std::optional<engine::cuda::CudaMemoryStats> memory;
  size_t prefix_cache_bytes = 0;
  size_t retrieval_key_bytes = 0;
  // Markdown tables of where the GPU time went (tests/gpu/kernel_trace.h), or why there is none;
  // empty when not traced.
  std::string decode_trace, prefill_trace;
};

// One InMemorySession in `mode` on `model`: injects random chunks, then generates.
absl::StatusOr<SessionResult> RunSession(const engine::Model& model, memstore::LongTermMode mode,
                                         const SessionSizes& sizes);

// One offload session without a prefix cache, the memory-lean configuration
// (--prefix_cache=false): an inject, then a generation from the long prompt.
struct LeanResult {
  std::optional<int64_t> peak_bytes;  // the backend's peak (CUDA only)
  double decode_ms_per_token = 0;     // after the long prompt, the first step (recording) untimed
  // The long prompt's prefill: its whole memory prefix gathered and projected (nothing cached).
  double prefill_ms = 0;
  // CUDA, sizes.kernel_trace_steps > 0: where the GPU time of that many more decode steps went.
  std::string decode_trace;
};
absl::StatusOr<LeanResult> RunLeanOffload(const engine::Model& model, const SessionSizes& sizes);

// Injects through the server's durable path: a MemoryStore session (RocksDB under `dir`, WAL
// fsync'd, as --sync_writes), Model::Inject then SessionHandle::Commit per chunk, and again with
// the writes overlapped (StartCommit ... FinishCommit). The store is deleted afterwards.
struct DurableInjectResult {
  double tokens_per_s = 0;  // Model::Inject + Commit, one after the other
  double commit_ms_per_chunk = 0;
  // StartCommit per chunk, as the server: each write overlaps the next chunk's Model::Inject.
  double overlapped_tokens_per_s = 0;
};
absl::StatusOr<DurableInjectResult> RunDurableInject(const engine::Model& model,
                                                     const SessionSizes& sizes,
                                                     const std::string& dir);

struct RetrievalTimes {
  double first_ms = 0;      // mean per layer of the first Select (resident: uploads the keys)
  double steady_ms = 0;     // mean per layer of later Selects
  size_t device_bytes = 0;  // key mirrors of every layer on the backend
};

struct RetrievalResult {
  // offload_on_gpu: offload scoring every prompt on the GPU (the layer's keys copied each time).
  RetrievalTimes resident, offload, offload_on_gpu;
  // Offload with a 512-token prompt's queries, per layer: scored on the host / on the GPU.
  double long_prompt_host_ms = 0, long_prompt_gpu_ms = 0;
  double fetch_ms = 0;  // upload of K_ltm chosen float32 vectors [K_ltm, hidden] from the host
};

// Long-term retrieval (LongTermRetriever::Select) over `keys_per_layer` merged random keys on
// every layer of `config`, 64 queries per layer on `backend`, in both modes (and offload scored
// on the GPU), and offload with 512 queries on the host and on the GPU.
absl::StatusOr<RetrievalResult> RunRetrieval(engine::Backend& backend,
                                             const engine::ModelConfig& config,
                                             int64_t keys_per_layer, int threads);

}  // namespace mplus::model_bench

#endif  // MPLUS_TESTS_GPU_MODEL_BENCH_H_
