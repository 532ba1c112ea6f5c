// Long-term-memory retrieval scoring on the GPU: the stored keys of a layer stay resident on the
// device; a prompt's queries are scored against all of them (mean over queries of
// sigmoid(q · key)) and the top-k indices come back in ascending order. Same contract as
// memstore/retrieval_scorer.h (ties go to the lower index, NaN ranks last).
//
// Precision: float32 keys use a float32 GEMM (as the CPU scorer); bfloat16 keys halve the memory
// and round the queries to bfloat16 too (bf16 tensor-core GEMM, float32 accumulation). The
// sigmoid and its mean over queries are computed in double, as on the CPU.
#ifndef MPLUS_ENGINE_CUDA_RETRIEVAL_H_
#define MPLUS_ENGINE_CUDA_RETRIEVAL_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "engine/dtype.h"

namespace mplus::engine::cuda {

class DeviceState;
class LtGemm;
class ScratchBuffer;

// Keys [size, key_dim] of one layer on the device. Made and filled by a GpuRetrievalScorer.
class RetrievalKeys {
 public:
  int64_t size() const { return size_; }
  int64_t key_dim() const { return key_dim_; }
  DType dtype() const { return dtype_; }
  // Device bytes reserved for the keys (capacity, not size).
  int64_t device_bytes() const {
    return capacity_ * key_dim_ * static_cast<int64_t>(DTypeSize(dtype_));
  }

 private:
  friend class GpuRetrievalScorer;
  RetrievalKeys(int64_t key_dim, DType dtype) : key_dim_(key_dim), dtype_(dtype) {}
  int64_t key_dim_;
  DType dtype_;
  int64_t size_ = 0, capacity_ = 0;
  std::shared_ptr<void> data_;
};

class GpuRetrievalScorer {
 public:
  // FailedPrecondition without a usable GPU `device_ordinal`.
  static absl::StatusOr<std::unique_ptr<GpuRetrievalScorer>> Create(int device_ordinal);
  ~GpuRetrievalScorer();
  GpuRetrievalScorer(const GpuRetrievalScorer&) = delete;
  GpuRetrievalScorer& operator=(const GpuRetrievalScorer&) = delete;

  // An empty key set; dtype kF32 or kBF16.
  absl::StatusOr<std::unique_ptr<RetrievalKeys>> NewKeys(int64_t key_dim, DType dtype);
  // Appends `count` float32 host rows (converted to the key dtype). Blocks until copied.
  absl::Status Append(RetrievalKeys& keys, const float* host_keys, int64_t count);
  // Forgets all keys (keeps the device memory for reuse).
  void Clear(RetrievalKeys& keys) { keys.size_ = 0; }

  // scores_out[j] (host, keys.size() floats) = mean_t sigmoid(queries[t] · key_j); nq > 0.
  absl::Status Scores(const RetrievalKeys& keys, const float* queries, int64_t nq,
                      float* scores_out);
  // Indices of the k best scores (all when k >= size), ascending.
  absl::StatusOr<std::vector<int64_t>> TopK(const RetrievalKeys& keys, const float* queries,
                                            int64_t nq, int64_t k);

 private:
  explicit GpuRetrievalScorer(std::shared_ptr<DeviceState> state);
  // Scores on the device: fills scores_ (float), sort keys and identity indices.
  absl::Status ComputeScores(const RetrievalKeys& keys, const float* queries, int64_t nq)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::shared_ptr<DeviceState> state_;
  absl::Mutex mu_;
  std::shared_ptr<void> gemm_workspace_;
  std::unique_ptr<LtGemm> gemm_ ABSL_GUARDED_BY(mu_);
  // queries (f32 and bf16), logits, double sums, scores, sort keys/indices in and out, CUB temp.
  std::unique_ptr<ScratchBuffer> queries_, queries_bf16_, logits_, sums_, scores_, sort_keys_,
      indices_, sort_temp_ ABSL_GUARDED_BY(mu_);
};

}  // namespace mplus::engine::cuda

#endif  // MPLUS_ENGINE_CUDA_RETRIEVAL_H_
