#include "engine/cuda/retrieval.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/cuda/cuda_status.h"
#include "engine/cuda/device_memory.h"
#include "engine/cuda/gemm.h"
#include "engine/cuda/kernels.h"
#include "engine/cuda/retrieval_kernels.h"
#include "engine/status_macros.h"

namespace mplus::engine::cuda {
namespace {

constexpr size_t kGemmWorkspaceBytes = size_t{32} << 20;
// Logits of one query chunk: bounds scratch for long prompts (nq in the thousands).
constexpr int64_t kLogitBytes = int64_t{64} << 20;

}  // namespace

GpuRetrievalScorer::GpuRetrievalScorer(std::shared_ptr<DeviceState> state) : state_(state) {
  for (auto* buf : {&queries_, &queries_bf16_, &logits_, &sums_, &scores_, &sort_keys_, &indices_,
                    &sort_temp_}) {
    *buf = std::make_unique<ScratchBuffer>(state, MemCategory::kWorkspace);
  }
}

GpuRetrievalScorer::~GpuRetrievalScorer() {
  if (state_->Activate().ok()) cudaStreamSynchronize(state_->stream());
}

absl::StatusOr<std::unique_ptr<GpuRetrievalScorer>> GpuRetrievalScorer::Create(int device_ordinal) {
  MPLUS_ASSIGN_OR_RETURN(std::shared_ptr<DeviceState> state, DeviceState::Create(device_ordinal));
  return Create(std::move(state));
}

absl::StatusOr<std::unique_ptr<GpuRetrievalScorer>> GpuRetrievalScorer::Create(
    std::shared_ptr<DeviceState> state) {
  MPLUS_RETURN_IF_ERROR(state->Activate());
  std::unique_ptr<GpuRetrievalScorer> scorer(new GpuRetrievalScorer(state));
  MPLUS_ASSIGN_OR_RETURN(scorer->gemm_workspace_,
                         DeviceState::Alloc(state, kGemmWorkspaceBytes, MemCategory::kWorkspace));
  absl::MutexLock lock(&scorer->mu_);
  MPLUS_ASSIGN_OR_RETURN(scorer->gemm_,
                         LtGemm::Create(scorer->gemm_workspace_.get(), kGemmWorkspaceBytes));
  return scorer;
}

absl::StatusOr<std::unique_ptr<DeviceRetrievalKeys>> GpuRetrievalScorer::NewKeys(int64_t key_dim,
                                                                                 DType dtype) {
  if (key_dim <= 0 || (dtype != DType::kF32 && dtype != DType::kBF16)) {
    return absl::InvalidArgumentError(absl::StrCat("NewKeys: key_dim ", key_dim, ", dtype ",
                                                   DTypeName(dtype), " (need F32 or BF16)"));
  }
  return std::unique_ptr<DeviceRetrievalKeys>(new DeviceRetrievalKeys(key_dim, dtype));
}

absl::Status GpuRetrievalScorer::Append(DeviceRetrievalKeys& keys, const void* host_keys,
                                        int64_t count) {
  cudaStream_t stream = state_->stream();
  return Append(keys, host_keys, count, [&](const void* src, size_t bytes, void* dst) {
    MPLUS_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream));
    // From pageable memory the copy may return before the DMA has read `src`.
    MPLUS_CUDA_RETURN_IF_ERROR(state_->SynchronizeStream());
    return absl::OkStatus();
  });
}

absl::Status GpuRetrievalScorer::Append(DeviceRetrievalKeys& keys, const void* host_keys,
                                        int64_t count, Upload upload) {
  if (count < 0) return absl::InvalidArgumentError("Append: negative count");
  if (count == 0) return absl::OkStatus();
  absl::MutexLock lock(&mu_);
  MPLUS_RETURN_IF_ERROR(state_->Activate());
  cudaStream_t stream = state_->stream();
  const size_t row = keys.row_bytes();
  if (keys.size_ + count > keys.capacity_) {
    const int64_t capacity = std::max(keys.size_ + count, keys.capacity_ * 2);
    MPLUS_ASSIGN_OR_RETURN(
        std::shared_ptr<void> grown,
        DeviceState::Alloc(state_, static_cast<size_t>(capacity) * row, MemCategory::kOther));
    if (keys.size_ > 0) {
      MPLUS_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(grown.get(), keys.data_.get(),
                                                 static_cast<size_t>(keys.size_) * row,
                                                 cudaMemcpyDeviceToDevice, stream));
    }
    keys.data_ = std::move(grown);  // the old buffer is freed in stream order
    keys.capacity_ = capacity;
  }
  char* dst = static_cast<char*>(keys.data_.get()) + static_cast<size_t>(keys.size_) * row;
  MPLUS_RETURN_IF_ERROR(upload(host_keys, static_cast<size_t>(count) * row, dst));
  keys.size_ += count;
  return absl::OkStatus();
}

absl::Status GpuRetrievalScorer::ComputeScores(const DeviceRetrievalKeys& keys,
                                               const float* queries, int64_t nq, QueriesOn where) {
  const int64_t n = keys.size_, p = keys.key_dim_;
  cudaStream_t stream = state_->stream();
  const float* q_dev = queries;
  if (where == QueriesOn::kHost) {
    MPLUS_ASSIGN_OR_RETURN(void* staged,
                           queries_->Get(static_cast<size_t>(nq * p) * sizeof(float)));
    MPLUS_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(staged, queries,
                                               static_cast<size_t>(nq * p) * sizeof(float),
                                               cudaMemcpyHostToDevice, stream));
    q_dev = static_cast<const float*>(staged);
  }
  const void* q_gemm = q_dev;
  if (keys.dtype_ == DType::kBF16) {
    MPLUS_ASSIGN_OR_RETURN(void* qb, queries_bf16_->Get(static_cast<size_t>(nq * p) * 2));
    MPLUS_CUDA_RETURN_IF_ERROR(LaunchF32ToBF16(q_dev, nq * p, static_cast<uint16_t*>(qb), stream));
    q_gemm = qb;
  }
  const int64_t chunk = std::clamp<int64_t>(kLogitBytes / (n * 4), 1, nq);
  MPLUS_ASSIGN_OR_RETURN(void* logits,
                         logits_->Get(static_cast<size_t>(chunk * n) * sizeof(float)));
  MPLUS_ASSIGN_OR_RETURN(void* sums, sums_->Get(static_cast<size_t>(n) * sizeof(double)));
  const size_t q_elem = DTypeSize(keys.dtype_);
  for (int64_t t0 = 0; t0 < nq; t0 += chunk) {
    const int64_t rows = std::min(chunk, nq - t0);
    const void* q_rows = static_cast<const char*>(q_gemm) + static_cast<size_t>(t0 * p) * q_elem;
    // logits [rows, n] = Q[t0 : t0 + rows] · K^T
    MPLUS_RETURN_IF_ERROR(gemm_->Run(keys.dtype_, q_rows, keys.data_.get(),
                                     static_cast<float*>(logits), rows, n, p, 1.0f, 0.0f, stream));
    MPLUS_CUDA_RETURN_IF_ERROR(LaunchSigmoidAccumulate(
        static_cast<const float*>(logits), rows, n, t0 == 0, static_cast<double*>(sums), stream));
  }
  MPLUS_ASSIGN_OR_RETURN(void* scores, scores_->Get(static_cast<size_t>(n) * sizeof(float)));
  // Sort keys and indices hold two arrays each: the input and the output of the radix sort.
  MPLUS_ASSIGN_OR_RETURN(void* sort_keys, sort_keys_->Get(static_cast<size_t>(2 * n) * 4));
  MPLUS_ASSIGN_OR_RETURN(void* indices, indices_->Get(static_cast<size_t>(2 * n) * 4));
  MPLUS_CUDA_RETURN_IF_ERROR(LaunchFinalizeScores(
      static_cast<const double*>(sums), n, nq, static_cast<float*>(scores),
      static_cast<uint32_t*>(sort_keys), static_cast<int32_t*>(indices), stream));
  return absl::OkStatus();
}

absl::Status GpuRetrievalScorer::Scores(const DeviceRetrievalKeys& keys, const float* queries,
                                        int64_t nq, float* scores_out) {
  if (nq <= 0) return absl::InvalidArgumentError("Scores: need at least one query");
  if (keys.size_ == 0) return absl::OkStatus();
  absl::MutexLock lock(&mu_);
  MPLUS_RETURN_IF_ERROR(state_->Activate());
  MPLUS_RETURN_IF_ERROR(ComputeScores(keys, queries, nq, QueriesOn::kHost));
  MPLUS_ASSIGN_OR_RETURN(void* scores, scores_->Get(0));
  MPLUS_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(scores_out, scores,
                                             static_cast<size_t>(keys.size_) * sizeof(float),
                                             cudaMemcpyDeviceToHost, state_->stream()));
  MPLUS_CUDA_RETURN_IF_ERROR(state_->SynchronizeStream());
  return state_->TakeDeferredError();
}

absl::StatusOr<std::vector<int64_t>> GpuRetrievalScorer::TopK(const DeviceRetrievalKeys& keys,
                                                              const float* queries, int64_t nq,
                                                              int64_t k, QueriesOn where) {
  if (nq <= 0) return absl::InvalidArgumentError("TopK: need at least one query");
  const int64_t n = keys.size_;
  if (k <= 0 || n == 0) return std::vector<int64_t>();
  if (k >= n) {
    std::vector<int64_t> all(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) all[static_cast<size_t>(i)] = i;
    return all;
  }
  absl::MutexLock lock(&mu_);
  MPLUS_RETURN_IF_ERROR(state_->Activate());
  cudaStream_t stream = state_->stream();
  MPLUS_RETURN_IF_ERROR(ComputeScores(keys, queries, nq, where));
  size_t temp_bytes = 0;
  MPLUS_CUDA_RETURN_IF_ERROR(SortDescendingTempBytes(n, &temp_bytes));
  MPLUS_ASSIGN_OR_RETURN(void* temp, sort_temp_->Get(temp_bytes));
  MPLUS_ASSIGN_OR_RETURN(void* sort_keys, sort_keys_->Get(static_cast<size_t>(2 * n) * 4));
  MPLUS_ASSIGN_OR_RETURN(void* indices, indices_->Get(static_cast<size_t>(2 * n) * 4));
  uint32_t* keys_in = static_cast<uint32_t*>(sort_keys);
  int32_t* idx_in = static_cast<int32_t*>(indices);
  MPLUS_CUDA_RETURN_IF_ERROR(
      LaunchSortDescending(temp, temp_bytes, keys_in, keys_in + n, idx_in, idx_in + n, n, stream));
  std::vector<int32_t> top(static_cast<size_t>(k));
  DeviceState::WaitScope wait(*state_);  // a copy into pageable memory waits for the stream
  MPLUS_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(top.data(), idx_in + n,
                                             static_cast<size_t>(k) * sizeof(int32_t),
                                             cudaMemcpyDeviceToHost, stream));
  MPLUS_CUDA_RETURN_IF_ERROR(state_->SynchronizeStream());
  MPLUS_RETURN_IF_ERROR(state_->TakeDeferredError());
  std::sort(top.begin(), top.end());
  return std::vector<int64_t>(top.begin(), top.end());
}

}  // namespace mplus::engine::cuda
