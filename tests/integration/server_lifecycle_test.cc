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
  auto server = ServerProcess::Start(MPLUS_SERVER_BIN, {"--device=tpu"}, absl::Seconds(20));
  ASSERT_FALSE(server.ok());
  EXPECT_TRUE(absl::StrContains(server.status().message(), "exited during startup"));
}

}  // namespace
}  // namespace mplus::testing
