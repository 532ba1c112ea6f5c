// Loads the CUDA backend from its plugin library (libmplus_cuda.so) at run time. The engine
// itself never links CUDA; see engine/cuda/plugin_entry.cc for the plugin side.
#ifndef MPLUS_ENGINE_CUDA_PLUGIN_H_
#define MPLUS_ENGINE_CUDA_PLUGIN_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "engine/backend.h"

namespace mplus::engine {

// Device memory a plugin backend holds, by use.
struct CudaPluginMemoryStats {
  int64_t weights_bytes = 0;
  int64_t workspace_bytes = 0;
  int64_t other_bytes = 0;
  int64_t device_free_bytes = 0;  // cudaMemGetInfo of the backend's device
  int64_t device_total_bytes = 0;
};

// The plugin library to load: `flag` when not empty; else libmplus_cuda.so beside the running
// executable (a GPU bundle from tests/gpu/package.sh), then ../lib/libmplus_cuda.so relative to it
// (an install); else `build_tree_path`, the plugin of the build tree the executable came from.
std::string CudaPluginPath(const std::string& flag, const std::string& build_tree_path);

class CudaPlugin {
 public:
  // dlopen()s `path`; FailedPrecondition naming the path and dlerror() when it cannot.
  static absl::StatusOr<std::unique_ptr<CudaPlugin>> Load(const std::string& path);
  ~CudaPlugin();

  // A backend on GPU `device_ordinal`; the error of CUDA (no GPU, no driver, ...) otherwise.
  absl::StatusOr<std::shared_ptr<Backend>> CreateBackend(int device_ordinal) const;
  // Memory of a backend this plugin created on `device_ordinal`.
  absl::StatusOr<CudaPluginMemoryStats> MemoryStats(const Backend& backend,
                                                    int device_ordinal) const;

 private:
  using CreateFn = Backend* (*)(int, char*, size_t);
  using StatsFn = int (*)(const Backend*, int, CudaPluginMemoryStats*);
  CudaPlugin() = default;
  void* handle_ = nullptr;
  CreateFn create_ = nullptr;
  StatsFn stats_ = nullptr;
};

}  // namespace mplus::engine

#endif  // MPLUS_ENGINE_CUDA_PLUGIN_H_
