#include "server/metrics.h"

#include <exception>

#include "absl/strings/str_cat.h"
#include "prometheus/gauge.h"

#ifndef MPLUS_VERSION
#define MPLUS_VERSION "unknown"
#endif
#ifndef MPLUS_GIT_COMMIT
#define MPLUS_GIT_COMMIT "unknown"
#endif

namespace mplus::server {

absl::StatusOr<std::unique_ptr<Metrics>> Metrics::Start(const std::string& listen_address) {
  std::unique_ptr<Metrics> metrics(new Metrics());
  if (!listen_address.empty()) {
    try {
      // prometheus-cpp (civetweb) reports a busy or malformed address by throwing.
      metrics->exposer_ = std::make_unique<prometheus::Exposer>(listen_address);
    } catch (const std::exception& e) {
      return absl::UnavailableError(
          absl::StrCat("cannot serve metrics on ", listen_address, ": ", e.what()));
    }
  }
  metrics->registry_ = std::make_shared<prometheus::Registry>();
  metrics->process_ = std::make_shared<ProcessCollector>();
#ifdef MPLUS_WITH_CUDA
  const char* cuda = "true";
#else
  const char* cuda = "false";
#endif
  prometheus::BuildGauge()
      .Name("mplus_build_info")
      .Help("Build of this mplus-server; the value is always 1.")
      .Register(*metrics->registry_)
      .Add({{"version", MPLUS_VERSION}, {"commit", MPLUS_GIT_COMMIT}, {"cuda", cuda}})
      .Set(1);
  if (metrics->exposer_ != nullptr) {
    metrics->exposer_->RegisterCollectable(metrics->registry_);
    metrics->exposer_->RegisterCollectable(metrics->process_);
  }
  return metrics;
}

}  // namespace mplus::server
