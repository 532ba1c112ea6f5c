// Standard Prometheus process metrics (process_cpu_seconds_total, process_resident_memory_bytes,
// ...) read from /proc at scrape time; prometheus-cpp has no built-in process collector.
#ifndef MPLUS_SERVER_PROCESS_COLLECTOR_H_
#define MPLUS_SERVER_PROCESS_COLLECTOR_H_

#include <vector>

#include "prometheus/collectable.h"
#include "prometheus/metric_family.h"

namespace mplus::server {

class ProcessCollector final : public prometheus::Collectable {
 public:
  ProcessCollector();
  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  double start_time_seconds_;
};

}  // namespace mplus::server

#endif  // MPLUS_SERVER_PROCESS_COLLECTOR_H_
