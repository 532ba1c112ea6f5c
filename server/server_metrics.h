// Every metric family mplus-server exports (Prometheus naming: base units, _total counters).
#ifndef MPLUS_SERVER_SERVER_METRICS_H_
#define MPLUS_SERVER_SERVER_METRICS_H_

#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace mplus::server {

// Seconds from `start` to now, the unit of every latency histogram below.
double SecondsSince(absl::Time start);

class ServerMetrics {
 public:
  // `device` labels the memory gauges ("cpu" or "cuda").
  ServerMetrics(prometheus::Registry& registry, const std::string& device);

  // Long-term retrieval: one observation per Generate (all layers) and one per layer.
  prometheus::Histogram& retrieval_per_generate;
  prometheus::Histogram& retrieval_per_layer;
  prometheus::Histogram& inject_latency;
  prometheus::Histogram& generate_latency;
  prometheus::Histogram& time_to_first_token;
  prometheus::Histogram& inter_token_latency;
  prometheus::Histogram& store_write_latency;
  prometheus::Histogram& session_load_latency;
  prometheus::Counter& tokens_injected;
  prometheus::Counter& tokens_generated;
  prometheus::Counter& ltm_evictions;
  prometheus::Gauge& sessions_resident;
  prometheus::Gauge& sessions_total;
  prometheus::Gauge& ltm_tokens;
  prometheus::Gauge& store_size_bytes;
  prometheus::Gauge& queue_depth;
  prometheus::Gauge& requests_running;

  // Device (or host) memory by use: weights, short_term, caches, free, total.
  prometheus::Gauge& memory_bytes(const std::string& use);
  // Finished RPCs by method and gRPC status code name.
  void CountRequest(const std::string& rpc, const std::string& code);

 private:
  prometheus::Family<prometheus::Gauge>& memory_family_;
  prometheus::Family<prometheus::Counter>& requests_family_;
  const std::string device_;
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, prometheus::Gauge*> memory_ ABSL_GUARDED_BY(mu_);
};

}  // namespace mplus::server

#endif  // MPLUS_SERVER_SERVER_METRICS_H_
