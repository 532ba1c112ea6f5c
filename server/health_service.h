// grpc.health.v1.Health with explicit control: NOT_SERVING until the model and store are open,
// NOT_SERVING again while draining. (gRPC's built-in default service starts out SERVING.)
#ifndef MPLUS_SERVER_HEALTH_SERVICE_H_
#define MPLUS_SERVER_HEALTH_SERVICE_H_

#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace mplus::server {

class HealthService final : public grpc::health::v1::Health::Service {
 public:
  using ServingStatus = grpc::health::v1::HealthCheckResponse::ServingStatus;

  // Registers `services` ("" is the whole server), all NOT_SERVING.
  explicit HealthService(const std::vector<std::string>& services);

  // Sets every registered service to `status` and wakes watchers.
  void SetAll(ServingStatus status);
  // Ends every Watch stream (call before server shutdown so it can complete).
  void Shutdown();

  grpc::Status Check(grpc::ServerContext* context,
                     const grpc::health::v1::HealthCheckRequest* request,
                     grpc::health::v1::HealthCheckResponse* response) override;
  grpc::Status Watch(grpc::ServerContext* context,
                     const grpc::health::v1::HealthCheckRequest* request,
                     grpc::ServerWriter<grpc::health::v1::HealthCheckResponse>* writer) override;

 private:
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, ServingStatus> status_ ABSL_GUARDED_BY(mu_);
  int64_t version_ ABSL_GUARDED_BY(mu_) = 0;
  bool shutdown_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace mplus::server

#endif  // MPLUS_SERVER_HEALTH_SERVICE_H_
