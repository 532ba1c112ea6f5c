// Session snapshots (export/import, for migration and backup): a sequence of chunks, each at
// most ~1 MiB:
//   "MPSN" | format version u32 | chunk index u32 | kind u8 | payload length u32 | payload |
//   CRC-32C u32 of all preceding bytes of the chunk
// kinds: 1 header (model digest u64, session record), 2 data (records: column family u8, key
// without the session prefix, value), 3 trailer (record count u64, chunk count u32). Import
// rejects an unknown version, a bad checksum, chunks out of order, a missing trailer and a
// snapshot of another model, with errors that say which.
#ifndef MPLUS_MEMSTORE_SNAPSHOT_H_
#define MPLUS_MEMSTORE_SNAPSHOT_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "memstore/memory_store.h"
#include "rocksdb/write_batch.h"

namespace mplus::memstore {

// The rows are the store's (store_schema.h): 2 since its format 2 (keys of long-term records as
// the layer keeps them); version 1 snapshots are still imported.
inline constexpr uint32_t kSnapshotVersion = 2;
inline constexpr uint32_t kOldestReadableSnapshotVersion = 1;
inline constexpr size_t kSnapshotChunkBytes = size_t{1} << 20;

// An import in progress (MemoryStore::BeginImport). Rows are written under a fresh internal
// session number as chunks arrive; the session appears only when Finish writes its record.
// Destroying an unfinished import removes what it wrote (a crash leaves rows that the next Open
// collects).
class SessionImport {
 public:
  ~SessionImport();
  SessionImport(const SessionImport&) = delete;
  SessionImport& operator=(const SessionImport&) = delete;

  absl::Status AddChunk(std::string_view chunk);
  absl::StatusOr<SessionInfo> Finish();

 private:
  friend class MemoryStore;
  SessionImport(MemoryStore* store, std::string id, uint64_t number);
  absl::Status FlushBatch();

  MemoryStore* store_;
  std::string id_;
  uint64_t number_;
  uint32_t next_index_ = 0;
  bool have_header_ = false, have_trailer_ = false, finished_ = false;
  SessionRecord record_;
  uint64_t records_ = 0;
  rocksdb::WriteBatch batch_;
};

}  // namespace mplus::memstore

#endif  // MPLUS_MEMSTORE_SNAPSHOT_H_
