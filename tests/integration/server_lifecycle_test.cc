// The real mplus-server on loopback: health over gRPC, /metrics over HTTP, SIGTERM exits 0.
#include <sys/wait.h>

#include "absl/strings/match.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "gtest/gtest.h"
#include "tests/integration/server_process.h"

namespace mplus::testing {
namespace {

using grpc::health::v1::HealthCheckResponse;

std::unique_ptr<ServerProcess> StartServer() {
  auto server = ServerProcess::Start(
      MPLUS_SERVER_BIN, {"--data_dir=" + MakeTempDir("mplus-lifecycle"),
                         std::string("--model=") + MPLUS_FIXTURES_DIR + "/tiny-mplus"});
  EXPECT_TRUE(server.ok()) << server.status();
  return server.ok() ? std::move(*server) : nullptr;
}

TEST(ServerLifecycleTest, HealthIsServingForServerAndMemoryService) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  EXPECT_EQ(*HealthCheck(*server->channel(), ""), HealthCheckResponse::SERVING);
  EXPECT_EQ(*HealthCheck(*server->channel(), "mplus.v1.MemoryService"),
            HealthCheckResponse::SERVING);
  EXPECT_FALSE(HealthCheck(*server->channel(), "no.such.Service").ok());
}

TEST(ServerLifecycleTest, MetricsEndpointServesBuildAndProcessMetrics) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  auto body = HttpGet(server->metrics_address(), "/metrics");
  ASSERT_TRUE(body.ok()) << body.status();
  EXPECT_TRUE(absl::StrContains(*body, "mplus_build_info{")) << *body;
  EXPECT_TRUE(absl::StrContains(*body, "process_resident_memory_bytes ")) << *body;
  EXPECT_TRUE(absl::StrContains(*body, "process_cpu_seconds_total ")) << *body;
}

TEST(ServerLifecycleTest, SigtermDrainsAndExitsZero) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  auto status = server->Terminate();
  ASSERT_TRUE(status.ok()) << status.status();
  ASSERT_TRUE(WIFEXITED(*status));
  EXPECT_EQ(WEXITSTATUS(*status), 0);
}

TEST(ServerLifecycleTest, BadFlagValueFailsStartupWithMessage) {
  int status = 0;
  auto log = RunToExit(MPLUS_SERVER_BIN, {"--device=tpu", "--metrics_listen="}, &status);
  ASSERT_TRUE(log.ok());
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 2) << *log;
  EXPECT_TRUE(absl::StrContains(*log, "--device must be cpu or cuda, got 'tpu'")) << *log;
  for (const auto& [flag, message] :
       {std::pair<std::string, std::string>{
            "--ltm_mode=gpu", "--ltm_mode: long-term mode must be resident or offload, got 'gpu'"},
        {"--gpu_memory_budget_mb=-1", "--gpu_memory_budget_mb must not be negative, got -1"},
        {"--offload_gpu_scoring_min_tokens=-2",
         "--offload_gpu_scoring_min_tokens must not be negative, got -2"},
        {"--device_stall_seconds=-5", "--device_stall_seconds must not be negative, got -5"},
        {"--kv_cache_dtype=int4",
         "--kv_cache_dtype: kv cache dtype \"int4\" is not one of auto, f32, bf16, fp8"},
        {"--merge_decoder_lora=yes",
         "--merge_decoder_lora: merge_decoder_lora \"yes\" is not one of auto, true, false"}}) {
    log = RunToExit(MPLUS_SERVER_BIN, {flag, "--metrics_listen="}, &status);
    ASSERT_TRUE(log.ok());
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 2) << *log;
    EXPECT_TRUE(absl::StrContains(*log, message)) << *log;
  }
}

// --device=cuda loads the CUDA backend plugin. Without a GPU (CI) startup must fail with CUDA's
// own reason, not crash or hang; with one the server serves.
TEST(ServerLifecycleTest, CudaDeviceServesOrFailsWithTheCudaReason) {
  int status = 0;
  const std::string data_dir = MakeTempDir("mplus-cuda");
  auto log = RunToExit(MPLUS_SERVER_BIN,
                       {"--device=cuda", "--metrics_listen=", "--listen=127.0.0.1:0",
                        "--data_dir=" + data_dir, "--shutdown_grace_seconds=0"},
                       &status, absl::Seconds(20));
  ASSERT_TRUE(log.ok());
  if (absl::StrContains(*log, "ready: health SERVING")) GTEST_SKIP() << "a GPU is present";
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 1) << *log;
  EXPECT_TRUE(absl::StrContains(*log, "startup failed")) << *log;
  EXPECT_TRUE(absl::StrContains(*log, "CUDA") || absl::StrContains(*log, "cuda")) << *log;
}

}  // namespace
}  // namespace mplus::testing
