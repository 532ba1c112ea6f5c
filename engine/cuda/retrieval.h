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

#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "engine/backend.h"
#include "engine/dtype.h"

namespace mplus::engine::cuda {

class DeviceState;
class LtGemm;
class ScratchBuffer;

// Keys [size, key_dim] of one layer on the device. Made and filled by a GpuRetrievalScorer.
class DeviceRetrievalKeys : public RetrievalKeys {
 public:
  int64_t size() const override { return size_; }
  // Device bytes reserved for the keys (capacity, not size).
  size_t bytes() const override { return static_cast<size_t>(capacity_) * row_bytes(); }
  int64_t key_dim() const { return key_dim_; }
  size_t row_bytes() const { return static_cast<size_t>(key_dim_) * DTypeSize(dtype_); }
  DType dtype() const { return dtype_; }

 private:
  friend class GpuRetrievalScorer;
  DeviceRetrievalKeys(int64_t key_dim, DType dtype) : key_dim_(key_dim), dtype_(dtype) {}
  int64_t key_dim_;
  DType dtype_;
  int64_t size_ = 0, capacity_ = 0;
  std::shared_ptr<void> data_;
};

class GpuRetrievalScorer {
 public:
  // FailedPrecondition without a usable GPU `device_ordinal`.
  static absl::StatusOr<std::unique_ptr<GpuRetrievalScorer>> Create(int device_ordinal);
  // On `state`'s device and stream (a backend's: its tensors can be queries).
  static absl::StatusOr<std::unique_ptr<GpuRetrievalScorer>> Create(
      std::shared_ptr<DeviceState> state);
  ~GpuRetrievalScorer();
  GpuRetrievalScorer(const GpuRetrievalScorer&) = delete;
  GpuRetrievalScorer& operator=(const GpuRetrievalScorer&) = delete;

  // An empty key set; dtype kF32 or kBF16.
  absl::StatusOr<std::unique_ptr<DeviceRetrievalKeys>> NewKeys(int64_t key_dim, DType dtype);
  // Copies `bytes` of host `src` to device `dst` on the scorer's stream and returns once `src`
  // has been read (work enqueued on the stream afterwards sees the bytes): a backend's pinned
  // staging.
  using Upload = absl::FunctionRef<absl::Status(const void* src, size_t bytes, void* dst)>;
  // Appends `count` host rows of the keys' dtype: through `upload`, or copied straight from
  // pageable memory, blocking until done.
  absl::Status Append(DeviceRetrievalKeys& keys, const void* host_keys, int64_t count);
  absl::Status Append(DeviceRetrievalKeys& keys, const void* host_keys, int64_t count,
                      Upload upload);
  // Keeps the first `rows` keys (keeps the device memory for reuse).
  void Truncate(DeviceRetrievalKeys& keys, int64_t rows) {
    keys.size_ = std::min(keys.size_, std::max<int64_t>(rows, 0));
  }

  // Where a call's queries ([nq, key_dim] float32) are.
  enum class QueriesOn { kHost, kDevice };

  // scores_out[j] (host, keys.size() floats) = mean_t sigmoid(queries[t] · key_j); nq > 0.
  absl::Status Scores(const DeviceRetrievalKeys& keys, const float* queries, int64_t nq,
                      float* scores_out);
  // Indices of the k best scores (all when k >= size), ascending. Device queries must be on
  // this scorer's device, written by work ordered before this call on its stream.
  absl::StatusOr<std::vector<int64_t>> TopK(const DeviceRetrievalKeys& keys, const float* queries,
                                            int64_t nq, int64_t k,
                                            QueriesOn where = QueriesOn::kHost);

 private:
  explicit GpuRetrievalScorer(std::shared_ptr<DeviceState> state);
  // Scores on the device: fills scores_ (float), sort keys and identity indices.
  absl::Status ComputeScores(const DeviceRetrievalKeys& keys, const float* queries, int64_t nq,
                             QueriesOn where) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

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
