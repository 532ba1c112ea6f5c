// mplus-server: serves mplus.v1.MemoryService, grpc.health.v1.Health and server reflection over
// gRPC, and Prometheus metrics over HTTP.
#include <signal.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/flags_help.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/grpcpp.h"
#include "memstore/long_term_retriever.h"
#include "server/health_service.h"
#include "server/logging.h"
#include "server/memory_service.h"
#include "server/metrics.h"
#include "server/server_metrics.h"
#include "server/service_options.h"
#include "server/stall_watchdog.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:50051",
          "gRPC listen address (host:port). Use 0.0.0.0:PORT to accept remote clients.");
ABSL_FLAG(std::string, metrics_listen, "127.0.0.1:9464",
          "HTTP address for the Prometheus /metrics endpoint (host:port); empty disables it.");
ABSL_FLAG(std::string, model, "",
          "Checkpoint directory (config.json, *.safetensors, tokenizer.json) in the official "
          "Hugging Face layout. Empty: the bundled tiny demo checkpoint (random weights).");
ABSL_FLAG(std::string, data_dir, "./data",
          "Directory of the RocksDB session store (created if missing).");
ABSL_FLAG(
    std::string, device, "cpu",
    "Compute device: cpu, or cuda (GPU 0, through the CUDA backend plugin libmplus_cuda.so).");
ABSL_FLAG(std::string, cuda_plugin, "",
          "Path of libmplus_cuda.so for --device=cuda; empty: beside the server binary, then "
          "../lib/libmplus_cuda.so from it, then the build tree.");
ABSL_FLAG(int, shutdown_grace_seconds, 30,
          "On SIGTERM/SIGINT: seconds in-flight requests get to finish before being cancelled.");
ABSL_FLAG(int, cpu_threads, 0,
          "Threads of the CPU backend (0: one per CPU the process may use: its affinity mask "
          "and cgroup CPU limit, e.g. a Kubernetes CPU limit).");
ABSL_FLAG(bool, bf16_rope_inv_freq, true,
          "bf16 checkpoints: round RoPE inv_freq to bf16 as the official inference recipe does; "
          "false keeps float32 frequencies.");
ABSL_FLAG(bool, cuda_graphs, true,
          "--device=cuda: each generation records its first decode step as a CUDA graph and "
          "replays it for the next tokens (one launch instead of ~500); false launches every "
          "kernel of every step (slower; to rule the graphs out when debugging).");
ABSL_FLAG(int, engine_workers, 2,
          "Requests of different sessions that run on the engine at once (one per session).");
ABSL_FLAG(int, max_queued_requests, 64,
          "Requests that may wait for a worker; more are refused with RESOURCE_EXHAUSTED.");
ABSL_FLAG(int64_t, max_request_bytes, int64_t{16} << 20,
          "Largest request message in bytes (Inject text included).");
ABSL_FLAG(int64_t, max_prompt_tokens, 8192, "Longest Generate prompt in tokens.");
ABSL_FLAG(int64_t, max_new_tokens, 2048, "Largest sampling.max_new_tokens a request may ask.");
ABSL_FLAG(int64_t, default_max_new_tokens, 128,
          "Tokens generated when a request leaves sampling.max_new_tokens unset.");
ABSL_FLAG(int64_t, max_sessions, 100000,
          "Most sessions the server holds (CreateSession refuses "
          "more with RESOURCE_EXHAUSTED).");
ABSL_FLAG(
    int64_t, inject_chunk_tokens, 512,
    "Tokens per memory update when Inject splits long content (training used up to 512; "
    "chunks under 16 tokens disturb memory); also the largest chunk_tokens a client may ask.");
ABSL_FLAG(
    bool, sync_writes, true,
    "fsync the RocksDB WAL before acknowledging an Inject (false: faster, but a machine crash "
    "may lose acknowledged injects; a process crash does not).");
ABSL_FLAG(int64_t, block_cache_mb, 256, "RocksDB block cache for long-term memory vectors, MiB.");
ABSL_FLAG(bool, prefix_cache, true,
          "Keep each resident session's short-term-memory prefix K/V between Generates (after an "
          "Inject only the new memory tokens' rows are computed): much faster time to first "
          "token, at 2*layers*(1+N)*kv_dim elements of --kv_cache_dtype per session (mplus-8b: "
          "1.7 GB in bf16), counted in --resident_budget_mb (cpu) or --gpu_memory_budget_mb "
          "(cuda).");
ABSL_FLAG(std::string, kv_cache_dtype, "auto",
          "Element type of each generation's KV cache and of the prefix caches: auto (the "
          "checkpoint's: bf16 for bf16 checkpoints, else f32; exact to the official model), "
          "f32, bf16, or fp8 (float8 e4m3, saturating at 448: half the memory of bf16 and half "
          "the K/V bytes each decode step reads, at float8 precision). Injects always compute at "
          "the checkpoint's precision.");
ABSL_FLAG(std::string, merge_decoder_lora, "auto",
          "Fold the decoder LoRA into the base weights at load, so that generation runs plain "
          "matrix products (a GPU's decode step reads no LoRA weights and launches no LoRA "
          "kernels); inject's encoder adapter takes the decoder's rank to cancel it. Results "
          "move by one rounding of each merged weight to the checkpoint's dtype (the goldens "
          "hold). auto: on with --device=cuda, off on the cpu (where it would keep a second host "
          "copy of every adapted weight); true; false.");
ABSL_FLAG(int64_t, resident_budget_mb, 8192,
          "Host memory for resident sessions (short-term rows, long-term keys and bookkeeping), "
          "MiB; least recently used sessions spill beyond it and are restored on their next "
          "request.");
ABSL_FLAG(std::string, ltm_mode, "resident",
          "Long-term memory with --device=cuda: resident (each resident session's retrieval "
          "keys in GPU memory, scored there; the paper's M+) or offload (keys scored in host "
          "memory; least GPU memory, the paper's M+ offload). Vectors always stay on the host. "
          "No effect on the CPU.");
ABSL_FLAG(int64_t, offload_gpu_scoring_min_tokens, 0,
          "With --ltm_mode=offload on a GPU: a prompt of at least this many tokens scores each "
          "layer's long-term keys on the GPU, copying them there for that layer only (host "
          "scoring grows with the prompt, the copy does not). Costs GPU memory: a layer's keys "
          "while it is scored, and ~70 MB of scoring scratch kept from the first such prompt "
          "on. 0: always score on the host.");
ABSL_FLAG(int, device_stall_seconds, 120,
          "A wait for the GPU this long means a hung device: the server logs it and turns its "
          "health NOT_SERVING, so that the load balancer stops routing to it and the "
          "orchestrator restarts it (no op takes more than a fraction of a second). 0: never.");
ABSL_FLAG(int64_t, gpu_memory_budget_mb, 0,
          "GPU memory for resident sessions (prefix K/V caches and, in resident mode, long-term "
          "keys), MiB; least recently used sessions spill beyond it. 0: half of the GPU memory "
          "free once the model is loaded.");

namespace mplus::server {
namespace {

// Blocks SIGTERM/SIGINT in every thread (gRPC's included) so that main can sigwait for them.
sigset_t BlockShutdownSignals() {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  return signals;
}

absl::Status ValidateOptions(const ServiceOptions& o) {
  auto positive = [](int64_t value, const char* flag) -> absl::Status {
    if (value >= 1) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat("--", flag, " must be at least 1, got ", value));
  };
  for (const absl::Status& s : {positive(o.engine_workers, "engine_workers"),
                                positive(o.max_queued_requests, "max_queued_requests"),
                                positive(o.max_request_bytes, "max_request_bytes"),
                                positive(o.max_prompt_tokens, "max_prompt_tokens"),
                                positive(o.max_new_tokens, "max_new_tokens"),
                                positive(o.default_max_new_tokens, "default_max_new_tokens"),
                                positive(o.max_sessions, "max_sessions"),
                                positive(o.inject_chunk_tokens, "inject_chunk_tokens")}) {
    if (!s.ok()) return s;
  }
  if (o.device != "cpu" && o.device != "cuda") {
    return absl::InvalidArgumentError(
        absl::StrCat("--device must be cpu or cuda, got '", o.device, "'"));
  }
  if (auto dtype = engine::ParseKvCacheDType(o.kv_cache_dtype); !dtype.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--kv_cache_dtype: ", dtype.status().message()));
  }
  if (auto merge = engine::ParseMergeDecoderLora(o.merge_decoder_lora); !merge.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--merge_decoder_lora: ", merge.status().message()));
  }
  if (auto mode = memstore::ParseLongTermMode(o.ltm_mode); !mode.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--ltm_mode: ", mode.status().message()));
  }
  if (o.offload_gpu_scoring_min_tokens < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--offload_gpu_scoring_min_tokens must not be negative, got ",
                     o.offload_gpu_scoring_min_tokens));
  }
  if (o.gpu_memory_budget_mb < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--gpu_memory_budget_mb must not be negative, got ", o.gpu_memory_budget_mb));
  }
  if (o.default_max_new_tokens > o.max_new_tokens) {
    return absl::InvalidArgumentError("--default_max_new_tokens exceeds --max_new_tokens");
  }
  return absl::OkStatus();
}

int Run() {
  const sigset_t signals = BlockShutdownSignals();

  const std::string metrics_address = absl::GetFlag(FLAGS_metrics_listen);
  auto metrics = Metrics::Start(metrics_address);
  if (!metrics.ok()) {
    LogError("metrics endpoint: %s", metrics.status().ToString());
    return 2;
  }
  if (!metrics_address.empty()) LogInfo("metrics on http://%s/metrics", metrics_address);
  ServerMetrics server_metrics((*metrics)->registry(), absl::GetFlag(FLAGS_device));

  ServiceOptions options;
  options.model_dir = absl::GetFlag(FLAGS_model);
  options.data_dir = absl::GetFlag(FLAGS_data_dir);
  options.device = absl::GetFlag(FLAGS_device);
  options.cuda_plugin = absl::GetFlag(FLAGS_cuda_plugin);
  options.cpu_threads = absl::GetFlag(FLAGS_cpu_threads);
  options.bf16_rope_inv_freq = absl::GetFlag(FLAGS_bf16_rope_inv_freq);
  options.cuda_graphs = absl::GetFlag(FLAGS_cuda_graphs);
  options.engine_workers = absl::GetFlag(FLAGS_engine_workers);
  options.max_queued_requests = absl::GetFlag(FLAGS_max_queued_requests);
  options.max_request_bytes = absl::GetFlag(FLAGS_max_request_bytes);
  options.max_prompt_tokens = absl::GetFlag(FLAGS_max_prompt_tokens);
  options.max_new_tokens = absl::GetFlag(FLAGS_max_new_tokens);
  options.default_max_new_tokens = absl::GetFlag(FLAGS_default_max_new_tokens);
  options.max_sessions = absl::GetFlag(FLAGS_max_sessions);
  options.inject_chunk_tokens = absl::GetFlag(FLAGS_inject_chunk_tokens);
  options.sync_writes = absl::GetFlag(FLAGS_sync_writes);
  options.block_cache_bytes = static_cast<size_t>(absl::GetFlag(FLAGS_block_cache_mb)) << 20;
  options.prefix_cache = absl::GetFlag(FLAGS_prefix_cache);
  options.kv_cache_dtype = absl::GetFlag(FLAGS_kv_cache_dtype);
  options.merge_decoder_lora = absl::GetFlag(FLAGS_merge_decoder_lora);
  options.resident_budget_bytes = static_cast<size_t>(absl::GetFlag(FLAGS_resident_budget_mb))
                                  << 20;
  options.ltm_mode = absl::GetFlag(FLAGS_ltm_mode);
  options.offload_gpu_scoring_min_tokens = absl::GetFlag(FLAGS_offload_gpu_scoring_min_tokens);
  options.gpu_memory_budget_mb = absl::GetFlag(FLAGS_gpu_memory_budget_mb);
  if (absl::Status s = ValidateOptions(options); !s.ok()) {
    LogError("%s", s.ToString());
    return 2;
  }
  if (absl::GetFlag(FLAGS_device_stall_seconds) < 0) {
    LogError("--device_stall_seconds must not be negative, got %d",
             absl::GetFlag(FLAGS_device_stall_seconds));
    return 2;
  }

  HealthService health({"", "mplus.v1.MemoryService"});
  MemoryServiceImpl memory_service(options, &server_metrics);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int bound_port = 0;
  builder.AddListeningPort(absl::GetFlag(FLAGS_listen), grpc::InsecureServerCredentials(),
                           &bound_port);
  // gRPC's own limit sits above ours so that oversized requests get our precise message.
  builder.SetMaxReceiveMessageSize(
      static_cast<int>(std::min<int64_t>(options.max_request_bytes * 2 + (1 << 20), INT32_MAX)));
  builder.RegisterService(&health);
  builder.RegisterService(&memory_service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || bound_port == 0) {
    LogError("cannot listen on %s", absl::GetFlag(FLAGS_listen));
    return 2;
  }
  LogInfo("listening on %s (health NOT_SERVING until ready)", absl::GetFlag(FLAGS_listen));

  if (absl::Status s = memory_service.Open(); !s.ok()) {
    LogError("startup failed: %s", s.ToString());
    health.Shutdown();
    server->Shutdown(std::chrono::system_clock::now());
    return 1;
  }
  health.SetAll(grpc::health::v1::HealthCheckResponse::SERVING);
  LogInfo("ready: health SERVING");
  std::unique_ptr<StallWatchdog> watchdog;
  if (const int stall = absl::GetFlag(FLAGS_device_stall_seconds); stall > 0) {
    watchdog = std::make_unique<StallWatchdog>(
        [&memory_service] { return memory_service.DeviceWaitSeconds(); }, absl::Seconds(stall),
        absl::Seconds(1),
        [&health](double seconds) {
          LogError(
              "the device has not finished its work for %.0f s: it is hung; health "
              "NOT_SERVING until this server is restarted",
              seconds);
          health.SetAll(grpc::health::v1::HealthCheckResponse::NOT_SERVING);
        });
  }

  int signal_number = 0;
  sigwait(&signals, &signal_number);
  const int grace = absl::GetFlag(FLAGS_shutdown_grace_seconds);
  LogInfo("received %s: draining (grace %d s)", strsignal(signal_number), grace);
  watchdog.reset();
  health.Shutdown();
  memory_service.BeginDrain();
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(grace));
  memory_service.Close();
  LogInfo("shut down cleanly");
  return 0;
}

}  // namespace
}  // namespace mplus::server

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Serves M+ / MemoryLLM models over gRPC (mplus.v1.MemoryService).\n"
      "Usage: mplus-server [--listen=HOST:PORT] [--model=DIR] [--data_dir=DIR] ...");
  mplus::ShowFlagsOfFileInHelp(__FILE__);
  absl::ParseCommandLine(argc, argv);
  return mplus::server::Run();
}
