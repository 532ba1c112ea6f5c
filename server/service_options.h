// Limits and knobs of the MemoryService, filled from mplus-server's flags (see main.cc).
#ifndef MPLUS_SERVER_SERVICE_OPTIONS_H_
#define MPLUS_SERVER_SERVICE_OPTIONS_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>

namespace mplus::server {

struct ServiceOptions {
  std::string model_dir;  // empty: the bundled demo checkpoint
  std::string data_dir = "./data";
  std::string device = "cpu";
  std::string cuda_plugin;  // empty: search next to the server, then the build tree
  int cpu_threads = 0;      // 0: one per hardware thread
  bool bf16_rope_inv_freq = true;
  bool cuda_graphs = true;                  // engine::ModelOptions::replay_decode
  std::string kv_cache_dtype = "auto";      // engine::ParseKvCacheDType
  std::string merge_decoder_lora = "auto";  // engine::ParseMergeDecoderLora

  int engine_workers = 2;
  int max_queued_requests = 64;
  int64_t max_request_bytes = int64_t{16} << 20;
  int64_t max_prompt_tokens = 8192;
  int64_t max_new_tokens = 2048;
  int64_t default_max_new_tokens = 128;
  int64_t max_sessions = 100000;
  int64_t inject_chunk_tokens = 512;

  bool sync_writes = true;
  size_t block_cache_bytes = size_t{256} << 20;
  size_t resident_budget_bytes = size_t{8} << 30;
  bool prefix_cache = true;
  std::string ltm_mode = "resident";           // memstore::ParseLongTermMode
  int64_t offload_gpu_scoring_min_tokens = 0;  // StoreOptions::offload_device_min_queries
  int64_t gpu_memory_budget_mb = 0;            // 0: SessionGpuBudgetBytes's default
};

// GPU bytes resident sessions may hold: --gpu_memory_budget_mb when set, else half of the device
// memory free once the model is loaded (the other half is for running generations' KV caches
// and activations), so that sessions spill before the GPU runs out.
inline size_t SessionGpuBudgetBytes(int64_t flag_mb, int64_t free_bytes_after_load) {
  if (flag_mb > 0) return static_cast<size_t>(flag_mb) << 20;
  // At least 1: a device budget of 0 means "no limit" to the store.
  return static_cast<size_t>(std::max<int64_t>(free_bytes_after_load / 2, 1));
}

}  // namespace mplus::server

#endif  // MPLUS_SERVER_SERVICE_OPTIONS_H_
