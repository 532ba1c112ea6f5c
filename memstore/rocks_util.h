// Small helpers shared by the RocksDB-backed parts of memstore.
#ifndef MPLUS_MEMSTORE_ROCKS_UTIL_H_
#define MPLUS_MEMSTORE_ROCKS_UTIL_H_

#include <cstdint>
#include <string_view>

#include "absl/status/status.h"
#include "rocksdb/status.h"

namespace mplus::memstore {

// A RocksDB status as an absl::Status naming `what`: corruption is DATA_LOSS, a full disk
// RESOURCE_EXHAUSTED, busy or I/O errors UNAVAILABLE.
absl::Status FromRocks(const rocksdb::Status& s, std::string_view what);

// Wall-clock time in unix microseconds (session timestamps).
int64_t NowMicros();

}  // namespace mplus::memstore

#endif  // MPLUS_MEMSTORE_ROCKS_UTIL_H_
