#include <algorithm>
#include <cub/device/device_radix_sort.cuh>

#include "engine/cuda/retrieval_kernels.h"

namespace mplus::engine::cuda {
namespace {

constexpr int kThreads = 256;

unsigned GridFor(int64_t n) {
  return static_cast<unsigned>(
      std::max<int64_t>(1, std::min<int64_t>((n + kThreads - 1) / kThreads, 65536)));
}

// Thread per key: the reads of logits[t, :] are coalesced across the warp.
__global__ void SigmoidAccumulateKernel(const float* __restrict__ logits, int64_t rows, int64_t n,
                                        bool first, double* __restrict__ sums) {
  for (int64_t j = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; j < n;
       j += int64_t{gridDim.x} * blockDim.x) {
    double acc = first ? 0.0 : sums[j];
    for (int64_t t = 0; t < rows; ++t) {
      const double logit = logits[t * n + j];
      acc += 1.0 / (1.0 + exp(-logit));
    }
    sums[j] = acc;
  }
}

__global__ void FinalizeKernel(const double* __restrict__ sums, int64_t n, double nq,
                               float* __restrict__ scores, uint32_t* __restrict__ sort_keys,
                               int32_t* __restrict__ indices) {
  for (int64_t j = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; j < n;
       j += int64_t{gridDim.x} * blockDim.x) {
    const float s = static_cast<float>(sums[j] / nq);
    scores[j] = s;
    uint32_t key;
    if (s != s) {
      key = 0;  // NaN below every number
    } else {
      // Monotone map of floats to unsigned ints; -0 and +0 compare equal, as on the CPU.
      const uint32_t u = s == 0.0f ? 0u : __float_as_uint(s);
      key = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
    }
    sort_keys[j] = key;
    indices[j] = static_cast<int32_t>(j);
  }
}

}  // namespace

cudaError_t LaunchSigmoidAccumulate(const float* logits, int64_t rows, int64_t n, bool first,
                                    double* sums, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  SigmoidAccumulateKernel<<<GridFor(n), kThreads, 0, stream>>>(logits, rows, n, first, sums);
  return cudaGetLastError();
}

cudaError_t LaunchFinalizeScores(const double* sums, int64_t n, int64_t nq, float* scores,
                                 uint32_t* sort_keys, int32_t* indices, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  FinalizeKernel<<<GridFor(n), kThreads, 0, stream>>>(sums, n, static_cast<double>(nq), scores,
                                                      sort_keys, indices);
  return cudaGetLastError();
}

cudaError_t SortDescendingTempBytes(int64_t n, size_t* bytes) {
  if (n > 0x7fffffff) return cudaErrorInvalidValue;
  cub::DoubleBuffer<uint32_t> keys(nullptr, nullptr);
  cub::DoubleBuffer<int32_t> values(nullptr, nullptr);
  *bytes = 0;
  return cub::DeviceRadixSort::SortPairsDescending(nullptr, *bytes, keys, values,
                                                   static_cast<int>(n));
}

cudaError_t LaunchSortDescending(void* temp, size_t temp_bytes, uint32_t* keys_in,
                                 uint32_t* keys_out, int32_t* indices_in, int32_t* indices_out,
                                 int64_t n, cudaStream_t stream) {
  if (n > 0x7fffffff) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  cub::DoubleBuffer<uint32_t> keys(keys_in, keys_out);
  cub::DoubleBuffer<int32_t> values(indices_in, indices_out);
  if (cudaError_t err = cub::DeviceRadixSort::SortPairsDescending(
          temp, temp_bytes, keys, values, static_cast<int>(n), 0, 32, stream);
      err != cudaSuccess) {
    return err;
  }
  // The double-buffer variant may leave the result in either buffer.
  if (values.Current() != indices_out) {
    return cudaMemcpyAsync(indices_out, values.Current(), static_cast<size_t>(n) * sizeof(int32_t),
                           cudaMemcpyDeviceToDevice, stream);
  }
  return cudaSuccess;
}

}  // namespace mplus::engine::cuda
