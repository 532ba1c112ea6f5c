#include "engine/session_memory.h"

#include <algorithm>
#include <cstring>

#include "common/parallel_for.h"
#include "engine/status_macros.h"

namespace mplus::engine {

const void* ShortTermRows::Contiguous(int64_t first, int64_t count) const {
  for (int64_t i = 1; i < count; ++i) {
    if (slot_rows[first + i] != slot_rows[first] + i) return nullptr;
  }
  return count > 0 ? Row(first) : pool.data;
}

void ShortTermRows::CopySlots(int64_t first, int64_t count, void* out) const {
  const size_t bytes = row_bytes();
  char* dst = static_cast<char*>(out);
  if (const void* run = Contiguous(first, count); run != nullptr) {
    ParallelCopy(dst, run, static_cast<size_t>(count) * bytes);
    return;
  }
  // Rows of a few KB: threads take runs of ~1 MB.
  const int64_t rows_per_thread = std::max<int64_t>(1, (int64_t{1} << 20) / bytes);
  ParallelFor(count, rows_per_thread, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) std::memcpy(dst + i * bytes, Row(first + i), bytes);
  });
}

absl::StatusOr<const float*> RetrievalQueries::host() {
  if (host_ == nullptr) {
    host_copy_.resize(static_cast<size_t>(count_ * key_dim_));
    MPLUS_RETURN_IF_ERROR(backend_->CopyToHost(device_, host_copy_.data()));
    host_ = host_copy_.data();
  }
  return host_;
}

absl::Status SessionMemory::RetrieveLongTerm(int layer, RetrievalQueries& queries, void* out) {
  MPLUS_ASSIGN_OR_RETURN(const std::vector<uint64_t> ids, SelectLongTerm(layer, queries));
  return ReadLongTerm(ids, out);
}

}  // namespace mplus::engine
