// Where a session's long-term retrieval scores its keys. The paper's two M+ modes:
//  - resident: each layer's keys are mirrored on the model's backend (GPU memory) and scored
//    there; the mirror is refreshed before each use by copying only the rows that changed.
//  - offload: keys stay in host memory and are scored on the host; for a prompt of at least
//    `offload_device_min_queries` tokens they are instead copied to the backend for the layer's
//    scoring and dropped after it (host scoring grows with the prompt, the copy does not).
// Either way the chosen vectors come from host memory. A backend that keeps no keys (the CPU,
// where host memory is its memory) scores on the host in both modes.
#ifndef MPLUS_MEMSTORE_LONG_TERM_RETRIEVER_H_
#define MPLUS_MEMSTORE_LONG_TERM_RETRIEVER_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/backend.h"
#include "engine/session_memory.h"
#include "memstore/long_term_index.h"

namespace mplus::memstore {

enum class LongTermMode { kResident, kOffload };

// "resident" or "offload".
absl::StatusOr<LongTermMode> ParseLongTermMode(std::string_view name);
const char* LongTermModeName(LongTermMode mode);

class LongTermRetriever {
 public:
  // Mirrors hold the keys as the long-term memory does (LongTermParams::key_dtype).
  // `offload_device_min_queries` 0: offload mode always scores on the host.
  LongTermRetriever(LongTermMode mode, int64_t offload_device_min_queries)
      : mode_(mode), offload_device_min_queries_(offload_device_min_queries) {}

  // The K_ltm indices into ltm.layer(layer).entries() in prefix order (LongTermMemory::Select);
  // FailedPrecondition while the layer has no merged entry. Resident mode syncs the layer's
  // mirror first (and marks the layer's keys synced).
  absl::StatusOr<std::vector<int64_t>> Select(LongTermMemory& ltm, int layer,
                                              engine::RetrievalQueries& queries);

  // The token ids of Select's entries, in its order: what a session's SelectLongTerm returns.
  absl::StatusOr<std::vector<uint64_t>> SelectTokenIds(LongTermMemory& ltm, int layer,
                                                       engine::RetrievalQueries& queries);

  // Device bytes of the mirrored keys (resident mode; offload's copies live only while scored).
  size_t device_bytes() const;

 private:
  // Select without the count check.
  absl::StatusOr<std::vector<int64_t>> Choose(LongTermMemory& ltm, int layer,
                                              engine::RetrievalQueries& queries);
  // The layer's mirror on `backend` (made empty on first use), or null when the backend keeps
  // no keys.
  absl::StatusOr<engine::RetrievalKeys*> Mirror(engine::Backend& backend, const LongTermMemory& ltm,
                                                int layer);

  const LongTermMode mode_;
  const int64_t offload_device_min_queries_;
  engine::Backend* backend_ = nullptr;  // the mirrors' (the last queries' backend)
  bool backend_keeps_keys_ = true;
  std::vector<std::unique_ptr<engine::RetrievalKeys>> mirrors_;  // per layer, made on first use
};

}  // namespace mplus::memstore

#endif  // MPLUS_MEMSTORE_LONG_TERM_RETRIEVER_H_
