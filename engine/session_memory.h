// The narrow interface through which the model reads one session's memory. The engine never
// sees how memory is stored: memstore implements this for in-RAM and RocksDB-backed sessions.
#ifndef MPLUS_ENGINE_SESSION_MEMORY_H_
#define MPLUS_ENGINE_SESSION_MEMORY_H_

#include <cstdint>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
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

class SessionMemory {
 public:
  virtual ~SessionMemory() = default;

  // Layer `layer`'s short-term memory: N = config.stm_tokens() rows of hidden_size, slot order.
  // dtype is float32 or the checkpoint's dtype.
  virtual TensorView ShortTerm(int layer) const = 0;

  // M+ only: writes layer `layer`'s K_ltm retrieved long-term tokens [K_ltm, hidden] in prefix
  // order (oldest first), chosen by the mean sigmoid score of `queries`
  // ([num_queries, selector_hidden_dim]) as MPLUS-DETAILS.md "Retrieval" says. Elements are of
  // ShortTerm(layer).dtype, the session's storage dtype: rows go to the device unconverted.
  virtual absl::Status RetrieveLongTerm(int layer, RetrievalQueries& queries, void* out) = 0;

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
