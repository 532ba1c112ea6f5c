// C entry points of libmplus_cuda.so, the CUDA backend as a plugin that mplus-server dlopen()s
// when --device=cuda. Loading it on demand keeps CPU-only deployments free of CUDA libraries,
// and keeps cuBLAS's large static TLS out of the threads of libraries (civetweb) that create
// threads with small stacks.
#include <cstdio>
#include <string>

#include "engine/cuda/cuda_backend.h"
#include "engine/cuda/device_info.h"
#include "engine/cuda_plugin.h"

extern "C" {

mplus::engine::Backend* mplus_cuda_create_backend(int device_ordinal, char* error,
                                                  size_t error_size) {
  auto backend = mplus::engine::cuda::CreateCudaBackend(device_ordinal);
  if (!backend.ok()) {
    std::snprintf(error, error_size, "%s", std::string(backend.status().message()).c_str());
    return nullptr;
  }
  return backend->release();
}

int mplus_cuda_memory_stats(const mplus::engine::Backend* backend, int device_ordinal,
                            mplus::engine::CudaPluginMemoryStats* out) {
  auto stats = mplus::engine::cuda::GetCudaMemoryStats(*backend);
  if (!stats.ok()) return 1;
  auto device = mplus::engine::cuda::GetDeviceInfo(device_ordinal);
  if (!device.ok()) return 1;
  out->device_free_bytes = device->free_memory_bytes;
  out->device_total_bytes = device->total_memory_bytes;
  out->weights_bytes = stats->weights_bytes;
  out->workspace_bytes = stats->workspace_bytes;
  out->other_bytes = stats->other_bytes;
  return 0;
}

}  // extern "C"
