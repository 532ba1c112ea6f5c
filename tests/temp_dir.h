// Temporary paths of a test process, removed when it exits: the integration tests start servers
// with RocksDB data directories (tens of MB each), which would otherwise pile up in /tmp.
#ifndef MPLUS_TESTS_TEMP_DIR_H_
#define MPLUS_TESTS_TEMP_DIR_H_

#include <filesystem>
#include <mutex>
#include <string>
#include <system_error>
#include <vector>

namespace mplus::testing {

// Removes `path` (recursively) when the process exits normally.
inline void RemoveAtExit(const std::string& path) {
  struct Registry {
    std::mutex mu;
    std::vector<std::string> paths;
    ~Registry() {
      std::error_code ignored;
      for (const std::string& p : paths) std::filesystem::remove_all(p, ignored);
    }
  };
  static Registry registry;
  std::lock_guard<std::mutex> lock(registry.mu);
  registry.paths.push_back(path);
}

}  // namespace mplus::testing

#endif  // MPLUS_TESTS_TEMP_DIR_H_
