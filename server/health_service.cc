#include "server/health_service.h"

#include "absl/time/time.h"

namespace mplus::server {

using grpc::health::v1::HealthCheckResponse;

HealthService::HealthService(const std::vector<std::string>& services) {
  absl::MutexLock lock(&mu_);
  for (const std::string& s : services) status_[s] = HealthCheckResponse::NOT_SERVING;
}

void HealthService::SetAll(ServingStatus status) {
  absl::MutexLock lock(&mu_);
  for (auto& [name, s] : status_) s = status;
  ++version_;
}

void HealthService::Shutdown() {
  absl::MutexLock lock(&mu_);
  for (auto& [name, s] : status_) s = HealthCheckResponse::NOT_SERVING;
  shutdown_ = true;
  ++version_;
}

grpc::Status HealthService::Check(grpc::ServerContext*,
                                  const grpc::health::v1::HealthCheckRequest* request,
                                  HealthCheckResponse* response) {
  absl::MutexLock lock(&mu_);
  auto it = status_.find(request->service());
  if (it == status_.end()) {
    return grpc::Status(grpc::StatusCode::NOT_FOUND,
                        "unknown service '" + request->service() + "'");
  }
  response->set_status(it->second);
  return grpc::Status::OK;
}

grpc::Status HealthService::Watch(grpc::ServerContext* context,
                                  const grpc::health::v1::HealthCheckRequest* request,
                                  grpc::ServerWriter<HealthCheckResponse>* writer) {
  int64_t seen = -1;
  while (true) {
    HealthCheckResponse response;
    {
      absl::MutexLock lock(&mu_);
      // Wake on a change, shutdown, or periodically to notice a cancelled client.
      auto changed = [&]()
                         ABSL_SHARED_LOCKS_REQUIRED(mu_) { return version_ != seen || shutdown_; };
      mu_.AwaitWithTimeout(absl::Condition(&changed), absl::Milliseconds(200));
      if (context->IsCancelled()) return grpc::Status::CANCELLED;
      if (version_ == seen) {
        if (shutdown_) return grpc::Status::OK;
        continue;
      }
      seen = version_;
      auto it = status_.find(request->service());
      response.set_status(it == status_.end() ? HealthCheckResponse::SERVICE_UNKNOWN : it->second);
      if (shutdown_) {
        writer->Write(response);
        return grpc::Status::OK;
      }
    }
    if (!writer->Write(response)) return grpc::Status::OK;
  }
}

}  // namespace mplus::server
