// Kernels behind GpuRetrievalScorer (engine/cuda/retrieval.h). Plain types only: compiled by
// nvcc (C++17) and called from host C++.
#ifndef MPLUS_ENGINE_CUDA_RETRIEVAL_KERNELS_H_
#define MPLUS_ENGINE_CUDA_RETRIEVAL_KERNELS_H_

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace mplus::engine::cuda {

// sums[j] (+)= sum over t < rows of sigmoid(logits[t, j]) in double; logits is [rows, n].
// `first` assigns instead of adding.
cudaError_t LaunchSigmoidAccumulate(const float* logits, int64_t rows, int64_t n, bool first,
                                    double* sums, cudaStream_t stream);
// scores[j] = float(sums[j] / nq); sort_keys[j] orders scores descending-by-value with NaN
// lowest; indices[j] = j.
cudaError_t LaunchFinalizeScores(const double* sums, int64_t n, int64_t nq, float* scores,
                                 uint32_t* sort_keys, int32_t* indices, cudaStream_t stream);
// CUB temp storage for LaunchSortDescending of n items.
cudaError_t SortDescendingTempBytes(int64_t n, size_t* bytes);
// Stable descending radix sort of (sort key, index) pairs: ties keep ascending index order.
// Arrays *_in are used as double buffers and clobbered; the result lands in *_out.
cudaError_t LaunchSortDescending(void* temp, size_t temp_bytes, uint32_t* keys_in,
                                 uint32_t* keys_out, int32_t* indices_in, int32_t* indices_out,
                                 int64_t n, cudaStream_t stream);

}  // namespace mplus::engine::cuda

#endif  // MPLUS_ENGINE_CUDA_RETRIEVAL_KERNELS_H_
