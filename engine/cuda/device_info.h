// What the CUDA runtime sees: used by the server to check --device=cuda before serving.
#ifndef MPLUS_ENGINE_CUDA_DEVICE_INFO_H_
#define MPLUS_ENGINE_CUDA_DEVICE_INFO_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace mplus::engine::cuda {

struct DeviceInfo {
  int ordinal = 0;
  std::string name;
  int compute_capability_major = 0, compute_capability_minor = 0;
  int64_t total_memory_bytes = 0;
  int64_t free_memory_bytes = 0;
};

// The device `ordinal`, or FailedPrecondition when no usable GPU or driver is present.
absl::StatusOr<DeviceInfo> GetDeviceInfo(int ordinal);

}  // namespace mplus::engine::cuda

#endif  // MPLUS_ENGINE_CUDA_DEVICE_INFO_H_
