// Runs the real mplus-server binary as a child process on free loopback ports for a test.
#ifndef MPLUS_TESTS_INTEGRATION_SERVER_PROCESS_H_
#define MPLUS_TESTS_INTEGRATION_SERVER_PROCESS_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"

namespace mplus::testing {

// A free TCP port on 127.0.0.1 (bound then released; the kernel won't hand it out again soon).
int PickFreePort();

// A fresh directory under $TEST_TMPDIR or /tmp, removed when the test process exits.
std::string MakeTempDir(const std::string& prefix);

class ServerProcess {
 public:
  // Starts `binary` with --listen/--metrics_listen on free ports plus `extra_flags`, and waits up
  // to `ready_timeout` for grpc.health.v1 to report SERVING.
  static absl::StatusOr<std::unique_ptr<ServerProcess>> Start(
      const std::string& binary, const std::vector<std::string>& extra_flags,
      absl::Duration ready_timeout = absl::Seconds(60));
  ~ServerProcess();  // SIGKILLs the child if still running

  const std::string& grpc_address() const { return grpc_address_; }
  const std::string& metrics_address() const { return metrics_address_; }
  std::shared_ptr<grpc::Channel> channel() const { return channel_; }

  // SIGTERM, then waits; returns the exit status (as from waitpid) or an error on timeout.
  absl::StatusOr<int> Terminate(absl::Duration timeout = absl::Seconds(60));
  // SIGKILL and reap.
  void Kill();

 private:
  pid_t pid_ = -1;
  std::string grpc_address_, metrics_address_;
  std::shared_ptr<grpc::Channel> channel_;
};

// Runs `binary` with `flags` until it exits (killed after `timeout`); returns its stderr and
// sets `*exit_status` (as from waitpid). For startups that must fail.
absl::StatusOr<std::string> RunToExit(const std::string& binary,
                                      const std::vector<std::string>& flags, int* exit_status,
                                      absl::Duration timeout = absl::Seconds(60));

// grpc.health.v1.Health/Check of `service` ("" = server); returns the ServingStatus enum value.
absl::StatusOr<int> HealthCheck(grpc::Channel& channel, const std::string& service);

// Plain HTTP/1.0 GET of http://<address><path>; returns the body on status 200.
absl::StatusOr<std::string> HttpGet(const std::string& address, const std::string& path);

}  // namespace mplus::testing

#endif  // MPLUS_TESTS_INTEGRATION_SERVER_PROCESS_H_
