// mplus-server: serves mplus.v1.MemoryService, grpc.health.v1.Health and server reflection over
// gRPC, and Prometheus metrics over HTTP.
#include <signal.h>

#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/grpcpp.h"
#include "server/health_service.h"
#include "server/logging.h"
#include "server/memory_service.h"
#include "server/metrics.h"
#ifdef MPLUS_WITH_CUDA
#include "engine/cuda/device_info.h"
#endif

ABSL_FLAG(std::string, listen, "127.0.0.1:50051",
          "gRPC listen address (host:port). Use 0.0.0.0:PORT to accept remote clients.");
ABSL_FLAG(std::string, metrics_listen, "127.0.0.1:9464",
          "HTTP address for the Prometheus /metrics endpoint (host:port); empty disables it.");
ABSL_FLAG(std::string, model, "",
          "Checkpoint directory (config.json, *.safetensors, tokenizer.json) in the official "
          "Hugging Face layout. Empty: the bundled tiny demo checkpoint (random weights).");
ABSL_FLAG(std::string, data_dir, "./data",
          "Directory of the RocksDB session store (created if missing).");
ABSL_FLAG(std::string, device, "cpu", "Compute device: cpu, or cuda (needs a CUDA build and GPU).");
ABSL_FLAG(int, shutdown_grace_seconds, 30,
          "On SIGTERM/SIGINT: seconds in-flight requests get to finish before being cancelled.");

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

absl::Status CheckDevice(const std::string& device) {
  if (device == "cpu") return absl::OkStatus();
  if (device != "cuda") {
    return absl::InvalidArgumentError(
        absl::StrCat("--device must be cpu or cuda, got '", device, "'"));
  }
#ifdef MPLUS_WITH_CUDA
  auto info = engine::cuda::GetDeviceInfo(0);
  if (!info.ok()) return info.status();
  LogInfo("CUDA device 0: %s (sm_%d%d), %d MiB", info->name, info->compute_capability_major,
          info->compute_capability_minor, static_cast<int>(info->total_memory_bytes >> 20));
  return absl::OkStatus();
#else
  return absl::FailedPreconditionError(
      "--device=cuda but this mplus-server was built without CUDA (MPLUS_CUDA=OFF or no nvcc)");
#endif
}

int Run() {
  const sigset_t signals = BlockShutdownSignals();

  if (absl::Status s = CheckDevice(absl::GetFlag(FLAGS_device)); !s.ok()) {
    LogError("%s", s.ToString());
    return 2;
  }

  std::unique_ptr<Metrics> metrics;
  if (const std::string addr = absl::GetFlag(FLAGS_metrics_listen); !addr.empty()) {
    auto m = Metrics::Start(addr);
    if (!m.ok()) {
      LogError("metrics endpoint: %s", m.status().ToString());
      return 2;
    }
    metrics = std::move(*m);
    LogInfo("metrics on http://%s/metrics", addr);
  }

  HealthService health({"", "mplus.v1.MemoryService"});
  MemoryServiceImpl memory_service;
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int bound_port = 0;
  builder.AddListeningPort(absl::GetFlag(FLAGS_listen), grpc::InsecureServerCredentials(),
                           &bound_port);
  builder.RegisterService(&health);
  builder.RegisterService(&memory_service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || bound_port == 0) {
    LogError("cannot listen on %s", absl::GetFlag(FLAGS_listen));
    return 2;
  }
  LogInfo("listening on %s (health NOT_SERVING until ready)", absl::GetFlag(FLAGS_listen));

  if (absl::Status s = memory_service.Open(absl::GetFlag(FLAGS_model),
                                           absl::GetFlag(FLAGS_data_dir));
      !s.ok()) {
    LogError("startup failed: %s", s.ToString());
    health.Shutdown();
    server->Shutdown(std::chrono::system_clock::now());
    return 1;
  }
  health.SetAll(grpc::health::v1::HealthCheckResponse::SERVING);
  LogInfo("ready: health SERVING");

  int signal_number = 0;
  sigwait(&signals, &signal_number);
  const int grace = absl::GetFlag(FLAGS_shutdown_grace_seconds);
  LogInfo("received %s: draining (grace %d s)", strsignal(signal_number), grace);
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
  absl::ParseCommandLine(argc, argv);
  return mplus::server::Run();
}
