#include "engine/cuda_plugin.h"

#include <dlfcn.h>

#include <filesystem>
#include <system_error>

#include "absl/strings/str_cat.h"

namespace mplus::engine {

std::string CudaPluginPath(const std::string& flag, const std::string& build_tree_path) {
  if (!flag.empty()) return flag;
  std::error_code ec;
  const std::filesystem::path exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    for (const char* relative : {"libmplus_cuda.so", "../lib/libmplus_cuda.so"}) {
      const std::filesystem::path candidate = exe.parent_path() / relative;
      if (std::filesystem::exists(candidate, ec)) return candidate.string();
    }
  }
  return build_tree_path;
}

absl::StatusOr<std::unique_ptr<CudaPlugin>> CudaPlugin::Load(const std::string& path) {
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot load the CUDA backend plugin ", path, ": ", dlerror()));
  }
  std::unique_ptr<CudaPlugin> plugin(new CudaPlugin());
  plugin->handle_ = handle;
  plugin->create_ = reinterpret_cast<CreateFn>(dlsym(handle, "mplus_cuda_create_backend"));
  plugin->stats_ = reinterpret_cast<StatsFn>(dlsym(handle, "mplus_cuda_memory_stats"));
  if (plugin->create_ == nullptr || plugin->stats_ == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat(path, " is not an mplus CUDA plugin (entry points missing)"));
  }
  return plugin;
}

CudaPlugin::~CudaPlugin() {
  // Backends made by the plugin may outlive this object in static destructors; the library
  // stays mapped until exit.
}

absl::StatusOr<std::shared_ptr<Backend>> CudaPlugin::CreateBackend(int device_ordinal) const {
  char error[1024] = {};
  Backend* backend = create_(device_ordinal, error, sizeof error);
  if (backend == nullptr) return absl::FailedPreconditionError(error);
  return std::shared_ptr<Backend>(backend);
}

absl::StatusOr<CudaPluginMemoryStats> CudaPlugin::MemoryStats(const Backend& backend,
                                                              int device_ordinal) const {
  CudaPluginMemoryStats stats;
  if (stats_(&backend, device_ordinal, &stats) != 0) {
    return absl::InvalidArgumentError("backend was not created by the CUDA plugin");
  }
  return stats;
}

}  // namespace mplus::engine
