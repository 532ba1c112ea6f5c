// The narrow interface through which the model reads one session's memory. The engine never
// sees how memory is stored: memstore implements this for in-RAM and RocksDB-backed sessions.
#ifndef MPLUS_ENGINE_SESSION_MEMORY_H_
#define MPLUS_ENGINE_SESSION_MEMORY_H_

#include <cstdint>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/backend.h"
#include "engine/prefix_cache.h"
#include "engine/safetensors.h"

namespace mplus::engine {

// One layer's retrieval queries, float32 [count, key_dim]: either on a backend (the model's,
// from a generate forward), with a host copy made on first use, or host-only (tools, tests).
class RetrievalQueries {
 public:
  RetrievalQueries(Backend& backend, Tensor device)
      : backend_(&backend),
        device_(std::move(device)),
        count_(device_.rows()),
        key_dim_(device_.cols()) {}
  RetrievalQueries(const float* host, int64_t count, int64_t key_dim)
      : host_(host), count_(count), key_dim_(key_dim) {}

  int64_t count() const { return count_; }
  int64_t key_dim() const { return key_dim_; }
  // The backend holding device(); null for host-only queries.
  Backend* backend() const { return backend_; }
  const Tensor& device() const { return device_; }
  // The queries in host memory (copied from the backend once).
  absl::StatusOr<const float*> host();

 private:
  Backend* backend_ = nullptr;
  Tensor device_;
  const float* host_ = nullptr;
  std::vector<float> host_copy_;
  int64_t count_ = 0, key_dim_ = 0;
};

// One layer's short-term memory: N = config.stm_tokens() rows of hidden_size in slot order,
// kept as rows of a pool in any order. An inject then writes its K new tokens over the rows of
// the K it drops instead of moving the kept ones (on mplus-8b 100 MB a layer, 3.2 GB an inject).
struct ShortTermRows {
  TensorView pool;                      // [rows >= N, hidden]: float32 or the checkpoint's dtype
  absl::Span<const int32_t> slot_rows;  // [N]: the pool row holding each slot

  int64_t slots() const { return static_cast<int64_t>(slot_rows.size()); }
  size_t row_bytes() const { return static_cast<size_t>(pool.shape[1]) * DTypeSize(pool.dtype); }
  const void* Row(int64_t slot) const {
    return static_cast<const char*>(pool.data) + slot_rows[slot] * row_bytes();
  }
  float GetFloat(int64_t slot, int64_t col) const {
    return pool.GetFloat(slot_rows[slot] * pool.shape[1] + col);
  }
  // Slots [first, first + count) when their rows lie one after another in the pool (always in
  // a session that never injected), else null.
  const void* Contiguous(int64_t first, int64_t count) const;
  // Copies slots [first, first + count) to `out` in slot order (on several threads for
  // megabytes).
  void CopySlots(int64_t first, int64_t count, void* out) const;
};

class SessionMemory {
 public:
  virtual ~SessionMemory() = default;

  // Layer `layer`'s short-term memory, valid until the session's memory next changes.
  virtual ShortTermRows ShortTerm(int layer) const = 0;

  // M+ only: the ids of layer `layer`'s K_ltm retrieved long-term tokens in prefix order (oldest
  // first), chosen by the mean sigmoid score of `queries` ([num_queries, selector_hidden_dim])
  // as MPLUS-DETAILS.md "Retrieval" says.
  virtual absl::StatusOr<std::vector<uint64_t>> SelectLongTerm(int layer,
                                                               RetrievalQueries& queries) = 0;
  // The vectors of long-term tokens `ids` (from SelectLongTerm, the memory unchanged since),
  // [ids.size(), hidden] at `out`, of ShortTerm(layer).pool.dtype, the session's storage dtype:
  // rows go to the device unconverted. Separate from the selection so that the caller can read
  // runs of them straight into its transfer buffers (a GPU backend's pinned staging).
  virtual absl::Status ReadLongTerm(absl::Span<const uint64_t> ids, void* out) = 0;
  // SelectLongTerm, then ReadLongTerm of all of them into `out`.
  absl::Status RetrieveLongTerm(int layer, RetrievalQueries& queries, void* out);

  // The session's cache of prefix keys and values (prefix_cache.h), or null for none. A session
  // that returns one must tell it of every change of its short-term memory (OnInject, Clear).
  virtual PrefixCache* prefix_cache() { return nullptr; }
};

// What one inject computed, per layer; the caller commits it to the session's memory.
struct InjectResult {
  std::vector<std::vector<float>> delta;         // [L][K * hidden]: the K new memory tokens
  std::vector<std::vector<int32_t>> dropped;     // [L][K]: dropped STM slots, ascending
  std::vector<std::vector<float>> dropped_keys;  // [L][K * p]: retrieval keys (M+ only)
};

}  // namespace mplus::engine

#endif  // MPLUS_ENGINE_SESSION_MEMORY_H_
