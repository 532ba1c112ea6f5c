// One M+ session per long-term mode: inject throughput, time to first token, decode speed and
// the backend memory it holds, as the server would drive it (drop slots from ChooseDropSlots).
#include <linux/magic.h>
#include <sys/vfs.h>

#include <filesystem>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "engine/drop_slots.h"
#include "engine/float_range.h"
#include "engine/status_macros.h"
#include "memstore/in_memory_session.h"
#include "memstore/memory_store.h"
#include "tests/gpu/kernel_trace.h"
#include "tests/gpu/model_bench.h"

namespace mplus::model_bench {
namespace {

std::vector<int32_t> RandomIds(int64_t n, int64_t vocab, std::mt19937& rng) {
  std::uniform_int_distribution<int32_t> dist(0, static_cast<int32_t>(vocab - 1));
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (int32_t& id : ids) id = dist(rng);
  return ids;
}

// The host's greedy pick, as the sampler takes it. Not std::max_element: over Llama 3's 128,256
// logits that took ~0.5 ms (a 2-vCPU EPYC), which the H100 runs of session 11 counted as a
// gap between decode steps.
int32_t Argmax(const std::vector<float>& logits) {
  return static_cast<int32_t>(
      engine::ArgmaxIgnoringNaN(logits.data(), static_cast<int64_t>(logits.size())));
}

// Wall seconds of one Prefill of `prompt` with room for `new_tokens` more.
absl::StatusOr<double> TimePrefill(const engine::Model& model, engine::SessionMemory& session,
                                   const std::vector<int32_t>& prompt, int64_t new_tokens,
                                   std::unique_ptr<engine::DecodeState>* state,
                                   engine::PrefillOutput* out) {
  const Clock::time_point start = Clock::now();
  MPLUS_ASSIGN_OR_RETURN(*state, model.Prefill(session, prompt, new_tokens, false, out));
  return SecondsSince(start);
}

// `work` under a kernel trace: the table per `steps`, or why there is none.
std::string Traced(int steps, const std::function<absl::Status()>& work) {
  constexpr int kTopKernels = 20;
  if (absl::Status s = KernelTrace::Start(); !s.ok()) return "no trace: " + s.ToString();
  const absl::Status ran = work();
  absl::StatusOr<TraceSummary> summary = KernelTrace::Stop();
  if (!ran.ok()) return "no trace: " + ran.ToString();
  if (!summary.ok()) return "no trace: " + summary.status().ToString();
  return FormatTrace(*summary, steps, kTopKernels);
}

// `steps` more decode steps of `state` from `token` (picked on the host), traced.
std::string TracedDecode(const engine::Model& model, engine::DecodeState& state, int32_t& token,
                         int steps) {
  return Traced(steps, [&]() -> absl::Status {
    for (int i = 0; i < steps; ++i) {
      MPLUS_ASSIGN_OR_RETURN(std::vector<float> logits, model.Decode(state, token));
      token = Argmax(logits);
    }
    return absl::OkStatus();
  });
}

}  // namespace

absl::StatusOr<SessionResult> RunSession(const engine::Model& model, memstore::LongTermMode mode,
                                         const SessionSizes& sizes) {
  const engine::ModelConfig& c = model.config();
  const char* name = memstore::LongTermModeName(mode);
  SessionResult r;
  std::mt19937 rng(static_cast<uint32_t>(mode) + 1);
  // The peak reported is this session's (the previous one is gone).
  if (model.backend().device() == engine::Device::kCuda) {
    MPLUS_RETURN_IF_ERROR(engine::cuda::ResetCudaMemoryPeak(model.backend()));
  }
  Clock::time_point start = Clock::now();
  MPLUS_ASSIGN_OR_RETURN(std::unique_ptr<memstore::InMemorySession> session,
                         memstore::InMemorySession::Create(model, mode));
  Progress(absl::StrFormat("%s: session created in %.1f s", name, SecondsSince(start)));

  // Chunk 0 and a prefill of each prompt length warm up (first uses of the GEMM shapes, the key
  // mirrors); the rest is timed.
  const uint64_t session_seed = 7;
  const std::vector<int32_t> prompt = RandomIds(sizes.short_prompt, c.vocab_size, rng);
  const std::vector<int32_t> long_prompt = RandomIds(sizes.long_prompt, c.vocab_size, rng);
  std::unique_ptr<engine::DecodeState> state;
  engine::PrefillOutput out;
  double model_seconds = 0, commit_seconds = 0;
  for (int i = 0; i <= sizes.inject_chunks; ++i) {
    const std::vector<int32_t> chunk = RandomIds(sizes.chunk_tokens, c.vocab_size, rng);
    start = Clock::now();
    const auto drops = engine::ChooseDropSlots(
        session_seed, i, static_cast<int>(c.num_hidden_layers), c.stm_tokens(), c.num_tokens);
    MPLUS_ASSIGN_OR_RETURN(engine::InjectResult result, model.Inject(*session, chunk, drops));
    const Clock::time_point computed = Clock::now();
    MPLUS_RETURN_IF_ERROR(session->ApplyInject(result));
    if (i == 0) {
      for (const std::vector<int32_t>* p : {&prompt, &long_prompt}) {
        state.reset();  // one generation at a time, as a session runs them
        MPLUS_ASSIGN_OR_RETURN(state, model.Prefill(*session, *p, 1, false, &out));
        MPLUS_RETURN_IF_ERROR(model.Decode(*state, 0).status());
      }
      state.reset();
      continue;
    }
    model_seconds += std::chrono::duration<double>(computed - start).count();
    commit_seconds += SecondsSince(computed);
  }
  const double tokens = static_cast<double>(sizes.inject_chunks * sizes.chunk_tokens);
  r.inject_tokens_per_s = tokens / (model_seconds + commit_seconds);
  r.inject_model_tokens_per_s = tokens / model_seconds;
  Progress(absl::StrFormat(
      "%s: 1 + %d chunks of %d tokens injected: %.0f tokens/s (Model::Inject %.1f ms/chunk, "
      "ApplyInject %.1f ms/chunk)",
      name, sizes.inject_chunks, sizes.chunk_tokens, r.inject_tokens_per_s,
      model_seconds * 1e3 / sizes.inject_chunks, commit_seconds * 1e3 / sizes.inject_chunks));

  // The last inject cleared the prefix cache: the first prefill fills it.
  MPLUS_ASSIGN_OR_RETURN(
      double secs, TimePrefill(model, *session, prompt, 3 * sizes.decode_tokens + 1, &state, &out));
  r.ttft_cold_ms = secs * 1e3;
  int32_t token = Argmax(out.logits);
  MPLUS_ASSIGN_OR_RETURN(std::vector<float> logits, model.Decode(*state, token));
  token = Argmax(logits);
  const bool cuda = model.backend().device() == engine::Device::kCuda;
  double waited = cuda ? *engine::cuda::GetCudaHostWaitSeconds(model.backend()) : 0;
  start = Clock::now();
  for (int i = 0; i < sizes.decode_tokens; ++i) {
    MPLUS_ASSIGN_OR_RETURN(logits, model.Decode(*state, token));
    token = Argmax(logits);
  }
  r.decode_ms_per_token = SecondsSince(start) * 1e3 / sizes.decode_tokens;
  if (cuda) {
    waited = *engine::cuda::GetCudaHostWaitSeconds(model.backend()) - waited;
    r.decode_enqueue_ms_per_token = r.decode_ms_per_token - waited * 1e3 / sizes.decode_tokens;
  }
  r.decode_replayed = state->replaying();
  if (!r.decode_replayed) r.decode_not_replayed_why = state->recording_status().ToString();
  // The same steps with the token picked on the device (the server's greedy path).
  start = Clock::now();
  for (int i = 0; i < sizes.decode_tokens; ++i) {
    MPLUS_ASSIGN_OR_RETURN(token, model.DecodeGreedy(*state, token));
  }
  r.decode_greedy_ms_per_token = SecondsSince(start) * 1e3 / sizes.decode_tokens;
  // The same steps enqueued op by op, for comparison.
  state->set_replay_decode(false);
  start = Clock::now();
  for (int i = 0; i < sizes.decode_tokens; ++i) {
    MPLUS_ASSIGN_OR_RETURN(logits, model.Decode(*state, token));
    token = Argmax(logits);
  }
  r.decode_step_by_step_ms_per_token = SecondsSince(start) * 1e3 / sizes.decode_tokens;
  state.reset();
  MPLUS_ASSIGN_OR_RETURN(secs, TimePrefill(model, *session, prompt, 0, &state, &out));
  r.ttft_warm_ms = secs * 1e3;
  state.reset();
  MPLUS_ASSIGN_OR_RETURN(secs, TimePrefill(model, *session, long_prompt, 0, &state, &out));
  r.ttft_long_ms = secs * 1e3;
  Progress(absl::StrFormat(
      "%s: time to first token %.1f ms (cold), %.1f ms (warm), %.1f ms (%d-token prompt); "
      "decode %.2f ms/token (%.2f ms enqueueing; %s), %.2f ms/token with the token picked on "
      "the device, %.2f ms/token step by step",
      name, r.ttft_cold_ms, r.ttft_warm_ms, r.ttft_long_ms, sizes.long_prompt,
      r.decode_ms_per_token, r.decode_enqueue_ms_per_token,
      r.decode_replayed ? "replayed" : "not replayed: " + r.decode_not_replayed_why,
      r.decode_greedy_ms_per_token, r.decode_step_by_step_ms_per_token));

  if (absl::StatusOr<engine::cuda::CudaMemoryStats> mem =
          engine::cuda::GetCudaMemoryStats(model.backend());
      mem.ok()) {
    r.memory = *mem;
  }
  r.prefix_cache_bytes = session->prefix_cache()->bytes();
  r.retrieval_key_bytes = session->retrieval_key_bytes();
  if (cuda && sizes.kernel_trace_steps > 0) {
    // After the memory reading above, which wants the long prompt's KV cache alive.
    state.reset();
    r.prefill_trace = Traced(1, [&] {
      return model.Prefill(*session, long_prompt, sizes.kernel_trace_steps, false, &out).status();
    });
    MPLUS_ASSIGN_OR_RETURN(
        state, model.Prefill(*session, prompt, sizes.kernel_trace_steps + 1, false, &out));
    token = Argmax(out.logits);
    r.decode_trace = TracedDecode(model, *state, token, sizes.kernel_trace_steps);
    state.reset();
  }
  return r;
}

absl::StatusOr<LeanResult> RunLeanOffload(const engine::Model& model, const SessionSizes& sizes) {
  const engine::ModelConfig& c = model.config();
  const bool cuda = model.backend().device() == engine::Device::kCuda;
  if (cuda) MPLUS_RETURN_IF_ERROR(engine::cuda::ResetCudaMemoryPeak(model.backend()));
  MPLUS_ASSIGN_OR_RETURN(std::unique_ptr<memstore::InMemorySession> session,
                         memstore::InMemorySession::Create(model, memstore::LongTermMode::kOffload,
                                                           /*prefix_cache=*/false));
  std::mt19937 rng(3);
  const auto drops = engine::ChooseDropSlots(7, 0, static_cast<int>(c.num_hidden_layers),
                                             c.stm_tokens(), c.num_tokens);
  MPLUS_ASSIGN_OR_RETURN(
      engine::InjectResult result,
      model.Inject(*session, RandomIds(sizes.chunk_tokens, c.vocab_size, rng), drops));
  MPLUS_RETURN_IF_ERROR(session->ApplyInject(result));
  engine::PrefillOutput out;
  const std::vector<int32_t> prompt = RandomIds(sizes.long_prompt, c.vocab_size, rng);
  LeanResult r;
  Clock::time_point start = Clock::now();
  const int trace_steps = cuda ? sizes.kernel_trace_steps : 0;
  MPLUS_ASSIGN_OR_RETURN(
      std::unique_ptr<engine::DecodeState> state,
      model.Prefill(*session, prompt, sizes.decode_tokens + 1 + trace_steps, false, &out));
  r.prefill_ms = SecondsSince(start) * 1e3;
  int32_t token = Argmax(out.logits);
  MPLUS_ASSIGN_OR_RETURN(std::vector<float> logits, model.Decode(*state, token));
  token = Argmax(logits);
  start = Clock::now();
  for (int i = 0; i < sizes.decode_tokens; ++i) {
    MPLUS_ASSIGN_OR_RETURN(logits, model.Decode(*state, token));
    token = Argmax(logits);
  }
  r.decode_ms_per_token = SecondsSince(start) * 1e3 / sizes.decode_tokens;
  if (trace_steps > 0) {
    r.decode_trace = TracedDecode(model, *state, token, trace_steps);
  }
  if (cuda) {
    MPLUS_ASSIGN_OR_RETURN(engine::cuda::CudaMemoryStats mem,
                           engine::cuda::GetCudaMemoryStats(model.backend()));
    r.peak_bytes = mem.peak_total_bytes;
  }
  Progress(absl::StrFormat(
      "offload without prefix cache, %s KV cache: peak %s, %d-token prefill %.1f ms, decode "
      "%.2f ms/token (%s)",
      engine::DTypeName(model.kv_dtype()),
      r.peak_bytes ? absl::StrFormat("%.2f GB", static_cast<double>(*r.peak_bytes) / 1e9) : "n/a",
      sizes.long_prompt, r.prefill_ms, r.decode_ms_per_token,
      state->replaying() ? "replayed" : "not replayed"));
  return r;
}

namespace {

// Where `dir` lives, for reading the durable numbers: on tmpfs an fsync costs nothing.
const char* StorageKind(const std::string& dir) {
  struct statfs fs;
  return statfs(dir.c_str(), &fs) == 0 && fs.f_type == TMPFS_MAGIC ? "tmpfs" : "a disk";
}

}  // namespace

absl::StatusOr<DurableInjectResult> RunDurableInject(const engine::Model& model,
                                                     const SessionSizes& sizes,
                                                     const std::string& dir) {
  const engine::ModelConfig& c = model.config();
  std::error_code ec;  // a leftover that cannot be removed shows up as the store's open error
  std::filesystem::remove_all(dir, ec);
  memstore::StoreOptions options;
  options.path = dir;
  options.sync_writes = true;
  DurableInjectResult r;
  {
    MPLUS_ASSIGN_OR_RETURN(std::unique_ptr<memstore::MemoryStore> store,
                           memstore::MemoryStore::Open(options, c, model.weights()));
    MPLUS_ASSIGN_OR_RETURN(memstore::SessionInfo info, store->CreateSession("bench", {}, 7));
    MPLUS_ASSIGN_OR_RETURN(memstore::SessionHandle handle, store->Acquire("bench"));
    std::mt19937 rng(5);
    auto inject = [&]() -> absl::StatusOr<engine::InjectResult> {
      const auto drops = engine::ChooseDropSlots(info.seed, handle.info().inject_count,
                                                 static_cast<int>(c.num_hidden_layers),
                                                 c.stm_tokens(), c.num_tokens);
      return model.Inject(handle.memory(), RandomIds(sizes.chunk_tokens, c.vocab_size, rng), drops);
    };
    // Chunk 0 warms up; then inject_chunks chunks one write after the other, timed in two parts,
    // and inject_chunks more with each write overlapping the next chunk.
    MPLUS_ASSIGN_OR_RETURN(engine::InjectResult result, inject());
    MPLUS_RETURN_IF_ERROR(handle.Commit(result, sizes.chunk_tokens));
    double model_seconds = 0, commit_seconds = 0;
    for (int i = 0; i < sizes.inject_chunks; ++i) {
      const Clock::time_point start = Clock::now();
      MPLUS_ASSIGN_OR_RETURN(result, inject());
      const Clock::time_point computed = Clock::now();
      MPLUS_RETURN_IF_ERROR(handle.Commit(result, sizes.chunk_tokens));
      model_seconds += std::chrono::duration<double>(computed - start).count();
      commit_seconds += SecondsSince(computed);
    }
    const double tokens = static_cast<double>(sizes.inject_chunks * sizes.chunk_tokens);
    r.tokens_per_s = tokens / (model_seconds + commit_seconds);
    r.commit_ms_per_chunk = commit_seconds * 1e3 / sizes.inject_chunks;
    const Clock::time_point start = Clock::now();
    for (int i = 0; i < sizes.inject_chunks; ++i) {
      MPLUS_ASSIGN_OR_RETURN(result, inject());
      MPLUS_RETURN_IF_ERROR(handle.StartCommit(result, sizes.chunk_tokens));
    }
    MPLUS_RETURN_IF_ERROR(handle.FinishCommit());
    r.overlapped_tokens_per_s = tokens / SecondsSince(start);
  }
  const char* storage = StorageKind(dir);
  std::filesystem::remove_all(dir, ec);
  Progress(absl::StrFormat(
      "durable inject (MemoryStore on %s, WAL fsync'd): %.0f tokens/s (commit %.1f ms per "
      "%d-token chunk), %.0f tokens/s with each write overlapping the next chunk",
      storage, r.tokens_per_s, r.commit_ms_per_chunk, sizes.chunk_tokens,
      r.overlapped_tokens_per_s));
  return r;
}

}  // namespace mplus::model_bench
