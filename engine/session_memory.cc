#include "engine/session_memory.h"

#include "engine/status_macros.h"

namespace mplus::engine {

absl::StatusOr<const float*> RetrievalQueries::host() {
  if (host_ == nullptr) {
    host_copy_.resize(static_cast<size_t>(count_ * key_dim_));
    MPLUS_RETURN_IF_ERROR(backend_->CopyToHost(device_, host_copy_.data()));
    host_ = host_copy_.data();
  }
  return host_;
}

}  // namespace mplus::engine
