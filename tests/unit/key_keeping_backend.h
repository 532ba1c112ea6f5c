// A CPU backend that also keeps long-term retrieval keys (in its own copy), as a GPU backend
// does in device memory, for tests of resident-mode retrieval without a GPU: a stale row in the
// copy changes what it scores, and the copy counts as the session's device memory.
#ifndef MPLUS_TESTS_UNIT_KEY_KEEPING_BACKEND_H_
#define MPLUS_TESTS_UNIT_KEY_KEEPING_BACKEND_H_

#include <memory>
#include <vector>

#include "engine/cpu/cpu_backend.h"
#include "memstore/retrieval_scorer.h"

namespace mplus::memstore::testing {

class KeyKeepingBackend : public engine::cpu::CpuBackend {
 public:
  struct Keys : engine::RetrievalKeys {
    int64_t key_dim = 0;
    engine::DType dtype = engine::DType::kF32;
    std::vector<uint8_t> rows;  // [size, key_dim] of dtype
    size_t row_bytes() const { return static_cast<size_t>(key_dim) * engine::DTypeSize(dtype); }
    int64_t size() const override { return static_cast<int64_t>(rows.size() / row_bytes()); }
    size_t bytes() const override { return rows.size(); }
  };

  KeyKeepingBackend() : CpuBackend(1) {}

  absl::StatusOr<std::unique_ptr<engine::RetrievalKeys>> NewRetrievalKeys(
      int64_t key_dim, engine::DType dtype) override {
    auto keys = std::make_unique<Keys>();
    keys->key_dim = key_dim;
    keys->dtype = dtype;
    return std::unique_ptr<engine::RetrievalKeys>(std::move(keys));
  }
  absl::Status SyncRetrievalKeys(engine::RetrievalKeys& keys, const void* host, int64_t rows,
                                 int64_t unchanged) override {
    auto& k = static_cast<Keys&>(keys);
    const auto* bytes = static_cast<const uint8_t*>(host);
    k.rows.resize(unchanged * k.row_bytes());
    k.rows.insert(k.rows.end(), bytes + unchanged * k.row_bytes(), bytes + rows * k.row_bytes());
    rows_copied += rows - unchanged;
    return absl::OkStatus();
  }
  absl::StatusOr<std::vector<int64_t>> TopRetrievalKeys(const engine::RetrievalKeys& keys,
                                                        const engine::Tensor& queries,
                                                        int64_t top) override {
    const auto& k = static_cast<const Keys&>(keys);
    std::vector<float> scores(static_cast<size_t>(k.size()));
    MeanSigmoidScores(queries.data_as<float>(), queries.rows(), k.rows.data(), k.dtype, k.size(),
                      k.key_dim, scores.data());
    ++device_scorings;
    return TopK(scores.data(), k.size(), top);
  }

  int64_t rows_copied = 0;
  int device_scorings = 0;
};

// `q` ([n, key_dim] float32) as a tensor on `backend`.
inline absl::StatusOr<engine::Tensor> DeviceQueries(engine::Backend& backend,
                                                    const std::vector<float>& q, int64_t key_dim) {
  absl::StatusOr<engine::Tensor> t =
      backend.Allocate(engine::DType::kF32, {static_cast<int64_t>(q.size()) / key_dim, key_dim});
  if (!t.ok()) return t;
  absl::Status s = backend.CopyFromHost(q.data(), engine::DType::kF32, *t);
  if (!s.ok()) return s;
  return t;
}

}  // namespace mplus::memstore::testing

#endif  // MPLUS_TESTS_UNIT_KEY_KEEPING_BACKEND_H_
