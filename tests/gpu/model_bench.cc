// mplus_gpu_model_bench: the timing table of an 8B-shaped M+ checkpoint (mplus-8b shapes, bf16,
// random weights written on the spot) on GPU 0, one session per long-term mode (resident,
// offload): inject tokens/s, time to first token, decode speed against the memory roofline,
// retrieval latency at 150k keys per layer, GPU memory by use. Prints progress lines on stderr
// and one markdown table on stdout (for bench/RESULTS.md). A target missed is reported, not an
// error: the exit status is 1 only when something failed to run (no GPU, no disk space, ...).
// --device=cpu runs the same steps on the CPU backend with the tiny-mplus shapes in bf16, to
// test the bench on a machine without a GPU.
#include "tests/gpu/model_bench.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/notification.h"
#include "common/cpu_count.h"
#include "common/flags_help.h"
#include "engine/checkpoint_writer.h"
#include "engine/cuda/device_info.h"
#include "engine/status_macros.h"
#include "tests/gpu/gpu_test_util.h"

ABSL_FLAG(std::string, device, "cuda",
          "cuda: the mplus-8b shapes on GPU 0; cpu: the tiny-mplus shapes (bf16) on the CPU "
          "backend, to test the bench without a GPU.");
ABSL_FLAG(std::string, checkpoint_dir, "",
          "Where the random checkpoint is written, or reused when its config.json matches "
          "(default: mplus-8b-bench, or mplus-tiny-bench with --device=cpu, in /dev/shm when "
          "it holds one or has room for one, else in /tmp).");
ABSL_FLAG(int, inject_chunks, 8, "Timed inject chunks of 512 tokens per session.");
ABSL_FLAG(int, decode_tokens, 64, "Timed decode steps after the 64-token prompt.");
ABSL_FLAG(int64_t, ltm_keys, 0,
          "Long-term keys per layer for the retrieval timing (0: 150000, or 5000 with "
          "--device=cpu).");
ABSL_FLAG(int, kernel_trace_steps, 8,
          "CUDA: after its timings, the resident session traces this many decode steps and one "
          "long-prompt prefill with CUPTI and prints where the GPU time went (0: no trace).");
ABSL_FLAG(int, threads, 0,
          "Host threads (checkpoint writing, key generation, CPU backend); 0: all.");

namespace mplus::model_bench {
namespace {

const Clock::time_point kStart = Clock::now();
constexpr double kDecodeRooflineTarget = 0.85;
constexpr double kOffloadMemoryTarget = 17.0e9;
constexpr double kRetrievalTargetMs = 1.0;

constexpr char kFailed[] = "failed";  // the cell of a step that failed (its progress line says why)

std::string Gb(double bytes) { return absl::StrFormat("%.2f GB", bytes / 1e9); }
std::string Ms(double ms) { return absl::StrFormat("%.2f ms", ms); }

// Bytes of weights one decode step reads: every decoder layer's weights used by the decoder
// (base weights, decoder-adapter LoRA, norms), the final norm and the LM head. Not the retrieval
// projectors nor the encoder adapter (inject and prefill only), nor the one embedding row.
uint64_t DecodeWeightBytes(const engine::ModelConfig& config) {
  uint64_t bytes = 0;
  for (const engine::TensorSpec& spec : engine::CheckpointTensorSpecs(config)) {
    const std::string& n = spec.name;
    const bool layer = absl::StartsWith(n, "model.layers.") &&
                       !absl::StrContains(n, "query_proj") && !absl::StrContains(n, "key_proj") &&
                       !absl::StrContains(n, ".default.");
    const bool head = n == "model.norm.weight" || n == "lm_head.weight" ||
                      (config.tie_word_embeddings && n == "model.embed_tokens.weight");
    if (layer || head) bytes += spec.nbytes();
  }
  return bytes;
}

struct CheckpointInfo {
  bool reused = false;
  double seconds = 0;
  uint64_t bytes = 0;
};

uint64_t CheckpointBytes(const engine::ModelConfig& config) {
  uint64_t bytes = 0;
  for (const engine::TensorSpec& spec : engine::CheckpointTensorSpecs(config)) {
    bytes += spec.nbytes();
  }
  return bytes;
}

// The default checkpoint directory `name`: in memory (/dev/shm) when one is there or there is
// room for one (and 1 GB more), else in /tmp. The lent GPU machines' disks took ~45 s to write
// the 20 GB, about a third of a device run.
std::string DefaultCheckpointDir(const engine::ModelConfig& config, const std::string& name) {
  namespace fs = std::filesystem;
  const fs::path shm = fs::path("/dev/shm") / name;
  std::error_code ec;
  if (fs::exists(shm / "config.json", ec)) return shm.string();
  const fs::space_info space = fs::space("/dev/shm", ec);
  if (!ec && space.available > CheckpointBytes(config) + (uint64_t{1} << 30)) {
    return shm.string();
  }
  return (fs::path("/tmp") / name).string();
}

// Reuses `dir` when it holds a complete checkpoint of `config` (config.json is written after the
// weights, tokenizer.json last); otherwise writes one with all threads.
absl::StatusOr<CheckpointInfo> EnsureCheckpoint(const engine::ModelConfig& config,
                                                const std::string& dir, int threads) {
  namespace fs = std::filesystem;
  CheckpointInfo info;
  info.bytes = CheckpointBytes(config);
  std::error_code ec;
  const fs::path config_path = fs::path(dir) / "config.json";
  if (fs::exists(config_path, ec) && fs::exists(fs::path(dir) / "tokenizer.json", ec)) {
    absl::StatusOr<engine::ModelConfig> existing = engine::LoadModelConfig(config_path.string());
    if (existing.ok() &&
        engine::ModelConfigToJson(*existing) == engine::ModelConfigToJson(config)) {
      info.reused = true;
      Progress(absl::StrCat("checkpoint: reusing ", dir));
      return info;
    }
  }
  // A stale config.json must not vouch for half-written weights if this write is killed.
  fs::remove(config_path, ec);
  fs::create_directories(dir, ec);
  const fs::space_info space = fs::space(dir, ec);
  if (!ec && space.available < info.bytes) {
    return absl::ResourceExhaustedError(absl::StrFormat("checkpoint needs %s in %s, %s available",
                                                        Gb(info.bytes), dir, Gb(space.available)));
  }
  engine::CheckpointOptions options;
  options.seed = 1;
  options.threads = threads;
  // The writer reports every 256 MB: keep a line every 5 s and the last.
  Clock::time_point last = Clock::now();
  options.log = [&last](const std::string& line) {
    if (SecondsSince(last) < 5 && !absl::StartsWith(line, "100.0%")) return;
    last = Clock::now();
    Progress("checkpoint: " + line);
  };
  const Clock::time_point start = Clock::now();
  MPLUS_RETURN_IF_ERROR(engine::WriteRandomCheckpoint(config, options, dir));
  info.seconds = SecondsSince(start);
  return info;
}

// Device memory bandwidth: read + write bytes per second of a device-to-device copy.
absl::StatusOr<double> MeasureBandwidth(engine::Backend& backend, int64_t elems) {
  MPLUS_ASSIGN_OR_RETURN(engine::Tensor src, backend.Allocate(engine::DType::kF32, {elems}));
  MPLUS_ASSIGN_OR_RETURN(engine::Tensor dst, backend.Allocate(engine::DType::kF32, {elems}));
  constexpr int kCopies = 10;
  MPLUS_RETURN_IF_ERROR(backend.Copy(src, dst));
  MPLUS_RETURN_IF_ERROR(backend.Synchronize());
  const Clock::time_point start = Clock::now();
  for (int i = 0; i < kCopies; ++i) MPLUS_RETURN_IF_ERROR(backend.Copy(src, dst));
  MPLUS_RETURN_IF_ERROR(backend.Synchronize());
  return 2.0 * kCopies * static_cast<double>(src.nbytes()) / SecondsSince(start);
}

struct Row {
  std::string metric, resident, offload, target, verdict;
};

void PrintTable(const std::vector<Row>& rows) {
  int w[5] = {6, 8, 7, 6, 7};
  for (const Row& r : rows) {
    const std::string* cells[5] = {&r.metric, &r.resident, &r.offload, &r.target, &r.verdict};
    for (int i = 0; i < 5; ++i) w[i] = std::max(w[i], static_cast<int>(cells[i]->size()));
  }
  auto line = [&](const std::string& a, const std::string& b, const std::string& c,
                  const std::string& d, const std::string& e) {
    absl::PrintF("| %-*s | %*s | %*s | %-*s | %-*s |\n", w[0], a, w[1], b, w[2], c, w[3], d, w[4],
                 e);
  };
  line("metric", "resident", "offload", "target", "verdict");
  absl::PrintF("|-%s-|-%s:|-%s:|-%s-|-%s-|\n", std::string(w[0], '-'), std::string(w[1], '-'),
               std::string(w[2], '-'), std::string(w[3], '-'), std::string(w[4], '-'));
  for (const Row& r : rows) line(r.metric, r.resident, r.offload, r.target, r.verdict);
}

const char* Verdict(bool pass) { return pass ? "PASS" : "MISS"; }

// A step whose failure is reported and leaves the rest of the table standing (its cells say
// "failed").
template <typename T>
std::optional<T> Soft(const char* step, absl::StatusOr<T> result) {
  if (result.ok()) return *std::move(result);
  Progress(absl::StrCat(step, " FAILED: ", result.status().ToString()));
  return std::nullopt;
}

// Ends the bench when the device stops answering: a hung kernel would otherwise spend the rest
// of run.sh's time, and the lent GPU's, on nothing. What was measured is in the progress lines.
class HangWatchdog {
 public:
  static constexpr double kLimitSeconds = 60;  // no single wait of the bench comes near

  explicit HangWatchdog(const engine::Backend* backend) {
    if (backend == nullptr) return;
    thread_ = std::thread([this, backend] {
      while (!stop_.WaitForNotificationWithTimeout(absl::Seconds(1))) {
        if (backend->DeviceWaitSeconds() > kLimitSeconds) {
          Progress(absl::StrFormat(
              "the GPU has not answered for %.0f s (a hung kernel?): stopping; the lines above "
              "are what was measured",
              kLimitSeconds));
          std::fflush(stdout);
          std::_Exit(3);
        }
      }
    });
  }
  ~HangWatchdog() {
    stop_.Notify();
    if (thread_.joinable()) thread_.join();
  }

 private:
  absl::Notification stop_;
  std::thread thread_;
};

absl::Status Run() {
  const std::string device = absl::GetFlag(FLAGS_device);
  if (device != "cuda" && device != "cpu") {
    return absl::InvalidArgumentError(
        absl::StrCat("--device must be cuda or cpu, got '", device, "'"));
  }
  const bool cuda = device == "cuda";
  const int threads =
      absl::GetFlag(FLAGS_threads) > 0 ? absl::GetFlag(FLAGS_threads) : AvailableCpus();
  engine::ModelConfig config = cuda ? engine::Mplus8bConfig() : engine::TinyMplusConfig();
  config.dtype = engine::DType::kBF16;
  std::string dir = absl::GetFlag(FLAGS_checkpoint_dir);
  if (dir.empty()) dir = DefaultCheckpointDir(config, cuda ? "mplus-8b-bench" : "mplus-tiny-bench");
  const int64_t ltm_keys =
      absl::GetFlag(FLAGS_ltm_keys) > 0 ? absl::GetFlag(FLAGS_ltm_keys) : (cuda ? 150000 : 5000);
  SessionSizes sizes;
  sizes.inject_chunks = absl::GetFlag(FLAGS_inject_chunks);
  sizes.decode_tokens = absl::GetFlag(FLAGS_decode_tokens);
  if (sizes.inject_chunks < 1 || sizes.decode_tokens < 1) {
    return absl::InvalidArgumentError("--inject_chunks and --decode_tokens must be at least 1");
  }
  const int trace_steps = absl::GetFlag(FLAGS_kernel_trace_steps);
  if (trace_steps < 0) {
    return absl::InvalidArgumentError("--kernel_trace_steps must be at least 0");
  }

  // The GPU first: without one, fail before writing gigabytes.
  engine::ModelOptions options;
  options.num_threads = threads;
  std::string device_name;
  if (cuda) {
    MPLUS_ASSIGN_OR_RETURN(engine::cuda::DeviceInfo info, engine::cuda::GetDeviceInfo(0));
    device_name = absl::StrFormat("%s (sm_%d%d, %.1f GiB)", info.name,
                                  info.compute_capability_major, info.compute_capability_minor,
                                  static_cast<double>(info.total_memory_bytes) / (1 << 30));
    MPLUS_ASSIGN_OR_RETURN(options.backend, engine::cuda::CreateCudaBackend(0));
  }
  // One backend serves both model loads below (the fp8 one too).
  HangWatchdog watchdog(options.backend.get());

  MPLUS_ASSIGN_OR_RETURN(CheckpointInfo ckpt, EnsureCheckpoint(config, dir, threads));
  if (!ckpt.reused) {
    Progress(absl::StrFormat("checkpoint: %s written to %s in %.1f s (%.0f MB/s)", Gb(ckpt.bytes),
                             dir, ckpt.seconds, ckpt.bytes / 1e6 / ckpt.seconds));
  }
  Clock::time_point start = Clock::now();
  MPLUS_ASSIGN_OR_RETURN(std::unique_ptr<engine::Model> model, engine::Model::Load(dir, options));
  const double load_seconds = SecondsSince(start);
  engine::Backend& backend = model->backend();
  if (!cuda) device_name = absl::StrFormat("%s, %d threads", backend.name(), threads);
  std::string load_memory;
  if (auto mem = engine::cuda::GetCudaMemoryStats(backend); mem.ok()) {
    load_memory = absl::StrFormat("; GPU memory: weights %s, workspace %s, other %s, peak %s",
                                  Gb(mem->weights_bytes), Gb(mem->workspace_bytes),
                                  Gb(mem->other_bytes), Gb(mem->peak_total_bytes));
  }
  Progress(absl::StrFormat("loaded in %.1f s%s", load_seconds, load_memory));
  MPLUS_ASSIGN_OR_RETURN(double bandwidth,
                         MeasureBandwidth(backend, int64_t{1} << (cuda ? 28 : 24)));
  Progress(absl::StrFormat("device-to-device copy: %.0f GB/s (read + write)", bandwidth / 1e9));

  // Offload first: the backend's peak counts from its creation, so the offload session's peak is
  // its own; the resident session's includes it, but holds at least as much.
  SessionResult sessions[2];  // [0] resident, [1] offload
  for (memstore::LongTermMode mode :
       {memstore::LongTermMode::kOffload, memstore::LongTermMode::kResident}) {
    const bool resident = mode == memstore::LongTermMode::kResident;
    SessionSizes session_sizes = sizes;
    session_sizes.kernel_trace_steps = resident ? trace_steps : 0;
    MPLUS_ASSIGN_OR_RETURN(sessions[resident ? 0 : 1], RunSession(*model, mode, session_sizes));
  }
  const std::optional<DurableInjectResult> durable =
      Soft("durable inject", RunDurableInject(*model, sizes, dir + "-store"));
  const std::optional<LeanResult> lean =
      Soft("lean offload session", RunLeanOffload(*model, sizes));
  const std::optional<RetrievalResult> retrieval =
      Soft("retrieval", RunRetrieval(backend, config, ltm_keys, threads));
  const engine::DType kv_dtype = model->kv_dtype();
  const int64_t prefix_length = model->prefix_length();
  const bool merged = model->decoder_lora_merged();
  // The lean session again on the model loaded afresh with other options: one model's weights
  // at a time, so the peaks compare.
  model.reset();
  const auto lean_session = [&](const char* name, const engine::ModelOptions& lean_options,
                                const SessionSizes& lean_sizes) {
    return Soft(name, [&]() -> absl::StatusOr<LeanResult> {
      MPLUS_ASSIGN_OR_RETURN(std::unique_ptr<engine::Model> lean_model,
                             engine::Model::Load(dir, lean_options));
      return RunLeanOffload(*lean_model, lean_sizes);
    }());
  };
  // With an fp8 KV cache (--kv_cache_dtype=fp8).
  engine::ModelOptions fp8_options = options;
  fp8_options.kv_cache_dtype = engine::DType::kF8E4M3;
  const std::optional<LeanResult> lean_fp8 =
      lean_session("fp8 KV cache session", fp8_options, sizes);
  // And with the decoder LoRA the other way (--merge_decoder_lora): what the merge saves a step.
  engine::ModelOptions other_merge_options = options;
  other_merge_options.merge_decoder_lora = !merged;
  const std::optional<LeanResult> lean_other_merge =
      lean_session("other LoRA merge session", other_merge_options, sizes);
  // And with decode attention's tiles pipelined (MPLUS_CUDA_DECODE_PIPELINE=1, off by default
  // until run.sh has passed with it), on a backend made for it (the setting is read when a
  // backend is made): bf16 and fp8 K/V.
  std::optional<LeanResult> lean_pipelined, lean_pipelined_fp8;
  if (cuda) {
    absl::StatusOr<std::unique_ptr<engine::Backend>> made = [] {
      gpu_test::ScopedEnv on("MPLUS_CUDA_DECODE_PIPELINE", "1");
      return engine::cuda::CreateCudaBackend(0);
    }();
    if (made.ok()) {
      engine::ModelOptions pipelined_options = options;
      pipelined_options.backend = std::move(*made);
      HangWatchdog pipelined_watchdog(pipelined_options.backend.get());
      lean_pipelined = lean_session("pipelined decode session", pipelined_options, sizes);
      pipelined_options.kv_cache_dtype = engine::DType::kF8E4M3;
      lean_pipelined_fp8 = lean_session("pipelined decode fp8 session", pipelined_options, sizes);
    } else {
      Progress("pipelined decode: " + made.status().ToString());
    }
  }

  // Decode roofline: the weight bytes each step reads at the measured bandwidth. Each step also
  // reads the KV cache of the whole prefix + prompt (shown, not in the target).
  const SessionResult& res = sessions[0];
  const SessionResult& off = sessions[1];
  const double weight_bytes = static_cast<double>(DecodeWeightBytes(config));
  const double roofline_ms = weight_bytes / bandwidth * 1e3;
  const double kv_bytes = 2.0 * config.num_hidden_layers * config.num_key_value_heads *
                          config.head_dim * engine::DTypeSize(kv_dtype) *
                          (prefix_length + sizes.short_prompt + sizes.decode_tokens / 2);
  // What a step must read at least, weights and KV cache: the target counts the weights only.
  const double step_floor_ms = (weight_bytes + kv_bytes) / bandwidth * 1e3;
  auto floor_cell = [](double ms_per_token, double floor_ms) {
    return absl::StrFormat("%.2f ms (%.0f%%)", ms_per_token, 100 * floor_ms / ms_per_token);
  };
  auto decode_cell = [&](double ms_per_token) { return floor_cell(ms_per_token, roofline_ms); };
  auto decode_ok = [&](const SessionResult& s) {
    return roofline_ms / s.decode_ms_per_token >= kDecodeRooflineTarget;
  };
  std::vector<Row> rows = {
      {"inject tokens/s (512-token chunks, incl. session commit)",
       absl::StrFormat("%.0f", res.inject_tokens_per_s),
       absl::StrFormat("%.0f", off.inject_tokens_per_s), "", ""},
      {"inject tokens/s (Model::Inject only)",
       absl::StrFormat("%.0f", res.inject_model_tokens_per_s),
       absl::StrFormat("%.0f", off.inject_model_tokens_per_s), "", ""},
      {"inject tokens/s through the server's store (RocksDB, WAL fsync'd per chunk)",
       durable ? absl::StrFormat("%.0f", durable->tokens_per_s) : kFailed, "", "", ""},
      {"  of which the commit, ms per chunk", durable ? Ms(durable->commit_ms_per_chunk) : kFailed,
       "", "", ""},
      {"  the same with each write overlapping the next chunk's inject (as the server)",
       durable ? absl::StrFormat("%.0f", durable->overlapped_tokens_per_s) : kFailed, "", "", ""},
      {absl::StrFormat("time to first token, %d-token prompt, prefix cache cold",
                       sizes.short_prompt),
       Ms(res.ttft_cold_ms), Ms(off.ttft_cold_ms), "", ""},
      {absl::StrFormat("time to first token, %d-token prompt, prefix cache warm",
                       sizes.short_prompt),
       Ms(res.ttft_warm_ms), Ms(off.ttft_warm_ms), "", ""},
      {absl::StrFormat("time to first token, %d-token prompt, prefix cache warm",
                       sizes.long_prompt),
       Ms(res.ttft_long_ms), Ms(off.ttft_long_ms), "", ""},
      {"decode tokens/s (1 session)", absl::StrFormat("%.1f", 1e3 / res.decode_ms_per_token),
       absl::StrFormat("%.1f", 1e3 / off.decode_ms_per_token), "", ""},
      {absl::StrFormat("decode ms/token (%% of roofline %.2f ms = %s weights / %.0f GB/s)",
                       roofline_ms, Gb(weight_bytes), bandwidth / 1e9),
       decode_cell(res.decode_ms_per_token), decode_cell(off.decode_ms_per_token),
       absl::StrFormat(">= %.0f%% of roofline", 100 * kDecodeRooflineTarget),
       decode_ok(res) && decode_ok(off) ? "PASS"
       : decode_ok(res)                 ? "MISS (offload)"
       : decode_ok(off)                 ? "MISS (resident)"
                                        : "MISS"},
      {absl::StrFormat("  against all a step reads: %.2f ms (weights + ~%s of %s KV cache)",
                       step_floor_ms, Gb(kv_bytes), engine::DTypeName(kv_dtype)),
       floor_cell(res.decode_ms_per_token, step_floor_ms),
       floor_cell(off.decode_ms_per_token, step_floor_ms), "", ""},
      {"  of which the host spent enqueueing (wall - waiting for the GPU)",
       Ms(res.decode_enqueue_ms_per_token), Ms(off.decode_enqueue_ms_per_token), "", ""},
      {"  steps replayed from one recording (CUDA graph)", res.decode_replayed ? "yes" : "no",
       off.decode_replayed ? "yes" : "no", "", ""},
      {"decode ms/token, greedy token picked on the GPU (the server's greedy path)",
       Ms(res.decode_greedy_ms_per_token), Ms(off.decode_greedy_ms_per_token), "", ""},
      {"decode ms/token, op by op (no recording)", Ms(res.decode_step_by_step_ms_per_token),
       Ms(off.decode_step_by_step_ms_per_token), "", ""},
  };
  // The retrieval rows: `cell` of the resident and the offload times, or "failed".
  auto retrieval_row = [&](std::string metric, auto cell, std::string target = "",
                           std::string verdict = "") {
    rows.push_back({std::move(metric), retrieval ? cell(retrieval->resident) : kFailed,
                    retrieval ? cell(retrieval->offload) : kFailed, std::move(target),
                    std::move(verdict)});
  };
  retrieval_row(
      absl::StrFormat("retrieval per layer, %dk keys, steady", ltm_keys / 1000),
      [](const RetrievalTimes& t) { return Ms(t.steady_ms); },
      absl::StrFormat("<= %.0f ms (resident)", kRetrievalTargetMs),
      retrieval ? Verdict(retrieval->resident.steady_ms <= kRetrievalTargetMs) : kFailed);
  retrieval_row(absl::StrFormat("retrieval per layer, %dk keys, first use (resident: key upload)",
                                ltm_keys / 1000),
                [](const RetrievalTimes& t) { return Ms(t.first_ms); });
  rows.push_back(
      {absl::StrFormat("offload retrieval per layer scored on the GPU (keys copied each layer), "
                       "64 / 512 queries (host: %s / %s)",
                       retrieval ? Ms(retrieval->offload.steady_ms) : kFailed,
                       retrieval ? Ms(retrieval->long_prompt_host_ms) : kFailed),
       "",
       retrieval
           ? Ms(retrieval->offload_on_gpu.steady_ms) + " / " + Ms(retrieval->long_prompt_gpu_ms)
           : kFailed,
       "", ""});
  retrieval_row(
      absl::StrFormat("upload of the %d chosen vectors per layer (%s, widened on the GPU)",
                      config.ltm_retrieved_tokens(), engine::DTypeName(config.dtype)),
      [&](const RetrievalTimes&) { return Ms(retrieval->fetch_ms); });
  retrieval_row(absl::StrFormat("GPU key mirrors, %d layers x %dk keys", config.num_hidden_layers,
                                ltm_keys / 1000),
                [](const RetrievalTimes& t) { return Gb(static_cast<double>(t.device_bytes)); });
  auto mem_row = [&](const std::string& what, int64_t engine::cuda::CudaMemoryStats::*field) {
    auto cell = [&](const SessionResult& s) {
      return s.memory ? Gb(static_cast<double>((*s.memory).*field)) : std::string("n/a");
    };
    rows.push_back({what, cell(res), cell(off), "", ""});
  };
  mem_row("GPU memory: weights", &engine::cuda::CudaMemoryStats::weights_bytes);
  mem_row("GPU memory: workspace", &engine::cuda::CudaMemoryStats::workspace_bytes);
  mem_row("GPU memory: other (KV caches, activations, prefix cache, key mirrors)",
          &engine::cuda::CudaMemoryStats::other_bytes);
  rows.push_back(
      {"  of which prefix cache", Gb(res.prefix_cache_bytes), Gb(off.prefix_cache_bytes), "", ""});
  rows.push_back({"  of which the session's key mirrors", Gb(res.retrieval_key_bytes),
                  Gb(off.retrieval_key_bytes), "", ""});
  mem_row("GPU memory: peak total", &engine::cuda::CudaMemoryStats::peak_total_bytes);
  rows.back().target = absl::StrFormat("offload <= %.1f GB", kOffloadMemoryTarget / 1e9);
  rows.back().verdict =
      off.memory
          ? Verdict(static_cast<double>(off.memory->peak_total_bytes) <= kOffloadMemoryTarget)
          : "n/a";
  // The lean configuration, and the least a session with that KV cache type can hold: the
  // weights plus the prefix's K/V in every layer (needed by every decode step).
  auto lean_rows = [&](const char* flags, engine::DType dtype,
                       const std::optional<LeanResult>& lean) {
    const double floor_bytes = static_cast<double>(off.memory ? off.memory->weights_bytes : 0) +
                               2.0 * config.num_hidden_layers * prefix_length *
                                   config.num_key_value_heads * config.head_dim *
                                   engine::DTypeSize(dtype);
    const bool measured = lean && lean->peak_bytes.has_value();
    const double peak = measured ? static_cast<double>(*lean->peak_bytes) : 0;
    const std::string unmeasured = lean ? "n/a" : kFailed;  // n/a: no peak on this backend
    rows.push_back({absl::StrFormat("GPU memory: peak total, %s (floor: weights + prefix K/V = %s)",
                                    flags, Gb(floor_bytes)),
                    "", measured ? Gb(peak) : unmeasured,
                    absl::StrFormat("offload <= %.1f GB", kOffloadMemoryTarget / 1e9),
                    measured ? Verdict(peak <= kOffloadMemoryTarget) : unmeasured});
    rows.push_back({absl::StrFormat("  time to first token there, %d-token prompt (the whole "
                                    "prefix gathered and uploaded)",
                                    sizes.long_prompt),
                    "", lean ? Ms(lean->prefill_ms) : kFailed, "", ""});
    // After the long prompt: a longer KV cache than the short prompt's rows above.
    rows.push_back(
        {absl::StrFormat("  decode ms/token there, after the %d-token prompt", sizes.long_prompt),
         "", lean ? decode_cell(lean->decode_ms_per_token) : kFailed, "", ""});
  };
  lean_rows("--prefix_cache=false", kv_dtype, lean);
  lean_rows("--prefix_cache=false --kv_cache_dtype=fp8", engine::DType::kF8E4M3, lean_fp8);
  if (cuda) {
    for (const auto& [flags, pipelined] :
         {std::pair{"", &lean_pipelined},
          std::pair{" --kv_cache_dtype=fp8", &lean_pipelined_fp8}}) {
      rows.push_back({absl::StrFormat("  decode ms/token, --prefix_cache=false%s with "
                                      "MPLUS_CUDA_DECODE_PIPELINE=1, after the %d-token prompt",
                                      flags, sizes.long_prompt),
                      "", *pipelined ? decode_cell((*pipelined)->decode_ms_per_token) : kFailed, "",
                      ""});
    }
  }
  rows.push_back(
      {absl::StrFormat("  decode ms/token, --prefix_cache=false --merge_decoder_lora=%s "
                       "(the table's: %s), after the %d-token prompt",
                       merged ? "false" : "true", merged ? "true" : "false", sizes.long_prompt),
       "", lean_other_merge ? decode_cell(lean_other_merge->decode_ms_per_token) : kFailed, "",
       ""});

  absl::PrintF("\n### mplus_gpu_model_bench: %s-shaped M+ (bf16, random weights)\n\n",
               cuda ? "mplus-8b" : "tiny-mplus");
  absl::PrintF(
      "Device: %s. Checkpoint %s, %s; load %.1f s; device-to-device copy %.0f GB/s; "
      "each decode step also reads ~%s of %s KV cache. GB = 10^9 bytes. Memory "
      "after the %d-token prompt's prefill; peak: the session's, one generation at a time.\n\n",
      device_name, Gb(ckpt.bytes),
      ckpt.reused ? "reused" : absl::StrFormat("written in %.1f s", ckpt.seconds), load_seconds,
      bandwidth / 1e9, Gb(kv_bytes), engine::DTypeName(kv_dtype), sizes.long_prompt);
  PrintTable(rows);
  if (!res.decode_trace.empty()) {
    absl::PrintF(
        "\nWhere the GPU time of a decode step goes (resident session, %d steps after the "
        "%d-token prompt, timed by the GPU through CUPTI; the span runs from the first kernel "
        "to the last, host work between steps included, and the first step also records the "
        "CUDA graph the others replay, host time that shows as GPU idle):\n\n%s",
        trace_steps, sizes.short_prompt, res.decode_trace);
  }
  if (!res.prefill_trace.empty()) {
    absl::PrintF(
        "\nWhere the GPU time of a %d-token prefill goes (resident, prefix cache warm, "
        "retrieval included):\n\n%s",
        sizes.long_prompt, res.prefill_trace);
  }
  std::fflush(stdout);
  if (!durable || !lean || !retrieval || !lean_fp8) {
    return absl::InternalError("some steps failed: their cells say so, the progress lines why");
  }
  return absl::OkStatus();
}

}  // namespace

void Progress(const std::string& line) {
  std::fprintf(stderr, "[%6.1f s] %s\n", SecondsSince(kStart), line.c_str());
}

}  // namespace mplus::model_bench

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Timing table of an 8B-shaped M+ checkpoint (random bf16 weights written on the spot) on "
      "GPU 0.\nExample: mplus_gpu_model_bench; mplus_gpu_model_bench --device=cpu");
  mplus::ShowFlagsOfFileInHelp(__FILE__);
  absl::ParseCommandLine(argc, argv);
  if (absl::Status s = mplus::model_bench::Run(); !s.ok()) {
    std::fprintf(stderr, "mplus_gpu_model_bench: %s\n", s.ToString().c_str());
    return 1;
  }
  return 0;
}
