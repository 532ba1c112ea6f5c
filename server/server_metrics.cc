#include "server/server_metrics.h"

#include "absl/time/clock.h"

namespace mplus::server {

double SecondsSince(absl::Time start) { return absl::ToDoubleSeconds(absl::Now() - start); }

namespace {

using prometheus::Histogram;

constexpr char kRetrievalHelp[] =
    "Long-term memory retrieval latency: scope=generate sums all layers of one Generate, "
    "scope=layer is one layer";
constexpr char kSessionsHelp[] = "Sessions by state (resident in compute memory, or total)";

// Seconds, from 100 µs to ~100 s.
Histogram::BucketBoundaries LatencyBuckets() {
  return {1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1,
          0.25, 0.5,    1,    2.5,  5,      10,   25,   50,     100};
}

Histogram& MakeHistogram(prometheus::Registry& registry, const std::string& name,
                         const std::string& help, const prometheus::Labels& labels = {}) {
  return prometheus::BuildHistogram().Name(name).Help(help).Register(registry).Add(
      labels, LatencyBuckets());
}
prometheus::Counter& MakeCounter(prometheus::Registry& registry, const std::string& name,
                                 const std::string& help) {
  return prometheus::BuildCounter().Name(name).Help(help).Register(registry).Add({});
}
prometheus::Gauge& MakeGauge(prometheus::Registry& registry, const std::string& name,
                             const std::string& help, const prometheus::Labels& labels = {}) {
  return prometheus::BuildGauge().Name(name).Help(help).Register(registry).Add(labels);
}

}  // namespace

ServerMetrics::ServerMetrics(prometheus::Registry& registry, const std::string& device)
    : retrieval_per_generate(prometheus::BuildHistogram()
                                 .Name("mplus_retrieval_latency_seconds")
                                 .Help(kRetrievalHelp)
                                 .Register(registry)
                                 .Add({{"scope", "generate"}}, LatencyBuckets())),
      retrieval_per_layer(prometheus::BuildHistogram()
                              .Name("mplus_retrieval_latency_seconds")
                              .Help(kRetrievalHelp)
                              .Register(registry)
                              .Add({{"scope", "layer"}}, LatencyBuckets())),
      inject_latency(MakeHistogram(registry, "mplus_inject_latency_seconds",
                                   "Inject RPC latency, from admission to durable commit")),
      generate_latency(MakeHistogram(registry, "mplus_generate_latency_seconds",
                                     "Generate RPC latency, from admission to the last token")),
      time_to_first_token(MakeHistogram(registry, "mplus_time_to_first_token_seconds",
                                        "Time from Generate arrival to its first token")),
      inter_token_latency(MakeHistogram(registry, "mplus_inter_token_latency_seconds",
                                        "Time between consecutive generated tokens")),
      store_write_latency(MakeHistogram(registry, "mplus_store_write_latency_seconds",
                                        "Durable RocksDB write latency of one inject batch")),
      session_load_latency(MakeHistogram(
          registry, "mplus_session_load_seconds",
          "Time to make a session resident from RocksDB (first use, restart or spill)")),
      tokens_injected(MakeCounter(registry, "mplus_tokens_injected_total",
                                  "Tokens written into session memory")),
      tokens_generated(MakeCounter(registry, "mplus_tokens_generated_total", "Tokens generated")),
      ltm_evictions(MakeCounter(registry, "mplus_ltm_evictions_total",
                                "Long-term memory tokens evicted (recall-frequency rule)")),
      sessions_resident(
          MakeGauge(registry, "mplus_sessions", kSessionsHelp, {{"state", "resident"}})),
      sessions_total(prometheus::BuildGauge()
                         .Name("mplus_sessions")
                         .Help(kSessionsHelp)
                         .Register(registry)
                         .Add({{"state", "total"}})),
      ltm_tokens(MakeGauge(registry, "mplus_ltm_tokens",
                           "Long-term memory entries over all sessions and layers")),
      store_size_bytes(
          MakeGauge(registry, "mplus_store_size_bytes", "RocksDB live data size on disk")),
      queue_depth(MakeGauge(registry, "mplus_queue_depth", "Requests waiting for a worker")),
      requests_running(
          MakeGauge(registry, "mplus_requests_running", "Requests running on engine workers")),
      memory_family_(prometheus::BuildGauge()
                         .Name("mplus_memory_bytes")
                         .Help("Memory of the compute device by use (weights, short_term, "
                               "caches, free, total); the CPU backend reports host memory")
                         .Register(registry)),
      requests_family_(prometheus::BuildCounter()
                           .Name("mplus_requests_total")
                           .Help("Finished RPCs by method and gRPC status code")
                           .Register(registry)),
      device_(device) {}

prometheus::Gauge& ServerMetrics::memory_bytes(const std::string& use) {
  absl::MutexLock lock(&mu_);
  auto [it, inserted] = memory_.try_emplace(use, nullptr);
  if (inserted) it->second = &memory_family_.Add({{"use", use}, {"device", device_}});
  return *it->second;
}

void ServerMetrics::CountRequest(const std::string& rpc, const std::string& code) {
  requests_family_.Add({{"rpc", rpc}, {"code", code}}).Increment();
}

}  // namespace mplus::server
