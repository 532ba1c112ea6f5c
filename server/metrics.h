// The server's Prometheus registry and its HTTP /metrics endpoint.
#ifndef MPLUS_SERVER_METRICS_H_
#define MPLUS_SERVER_METRICS_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "prometheus/exposer.h"
#include "prometheus/registry.h"
#include "server/process_collector.h"

namespace mplus::server {

class Metrics {
 public:
  // A registry with build info and process metrics, served on /metrics at `listen_address`
  // (host:port) unless it is empty.
  static absl::StatusOr<std::unique_ptr<Metrics>> Start(const std::string& listen_address);

  prometheus::Registry& registry() { return *registry_; }

 private:
  Metrics() = default;
  std::unique_ptr<prometheus::Exposer> exposer_;
  std::shared_ptr<prometheus::Registry> registry_;
  std::shared_ptr<ProcessCollector> process_;
};

}  // namespace mplus::server

#endif  // MPLUS_SERVER_METRICS_H_
