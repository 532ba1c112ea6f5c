#include <cuda_runtime.h>

#include "absl/strings/str_cat.h"
#include "engine/cuda/device_info.h"

namespace mplus::engine::cuda {

absl::StatusOr<DeviceInfo> GetDeviceInfo(int ordinal) {
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    return absl::FailedPreconditionError(
        absl::StrCat("CUDA runtime unavailable: ", cudaGetErrorString(err)));
  }
  if (ordinal < 0 || ordinal >= count) {
    return absl::FailedPreconditionError(
        absl::StrCat("CUDA device ", ordinal, " requested but ", count, " device(s) present"));
  }
  cudaDeviceProp prop{};
  err = cudaGetDeviceProperties(&prop, ordinal);
  if (err != cudaSuccess) {
    return absl::FailedPreconditionError(
        absl::StrCat("cudaGetDeviceProperties failed: ", cudaGetErrorString(err)));
  }
  DeviceInfo info;
  info.ordinal = ordinal;
  info.name = prop.name;
  info.compute_capability_major = prop.major;
  info.compute_capability_minor = prop.minor;
  size_t free_bytes = 0, total_bytes = 0;
  if ((err = cudaSetDevice(ordinal)) != cudaSuccess ||
      (err = cudaMemGetInfo(&free_bytes, &total_bytes)) != cudaSuccess) {
    return absl::FailedPreconditionError(
        absl::StrCat("cudaMemGetInfo failed: ", cudaGetErrorString(err)));
  }
  info.free_memory_bytes = static_cast<int64_t>(free_bytes);
  info.total_memory_bytes = static_cast<int64_t>(total_bytes);
  return info;
}

}  // namespace mplus::engine::cuda
