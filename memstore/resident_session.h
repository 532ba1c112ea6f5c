// One session's memory state held in RAM: the short-term lists and their vectors (what the
// engine reads on every generate), and the long-term index with the storage sequence number of
// every entry. Rebuilt from RocksDB on demand; every inject is committed as ONE WriteBatch.
#ifndef MPLUS_MEMSTORE_RESIDENT_SESSION_H_
#define MPLUS_MEMSTORE_RESIDENT_SESSION_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/session_memory.h"
#include "memstore/base_memory.h"
#include "memstore/long_term_index.h"
#include "memstore/long_term_retriever.h"
#include "memstore/short_term_pool.h"
#include "memstore/store_schema.h"
#include "rocksdb/db.h"
#include "rocksdb/write_batch.h"

namespace mplus::memstore {

// What a resident session needs from its store.
struct StoreHandles {
  rocksdb::DB* db = nullptr;
  std::vector<rocksdb::ColumnFamilyHandle*> cf;  // indexed by ColumnFamily
  rocksdb::WriteOptions write_options;
  const BaseMemory* base = nullptr;
  bool prefix_cache = true;  // keep each resident session's prefix K/V (StoreOptions)
  LongTermMode ltm_mode = LongTermMode::kResident;  // StoreOptions
  int64_t offload_device_min_queries = 0;           // StoreOptions
};

class ResidentSession : public engine::SessionMemory {
 public:
  // Rebuilds the session `record` describes from the database (a session that never injected
  // has only its record: everything else is the checkpoint's memory).
  static absl::StatusOr<std::unique_ptr<ResidentSession>> Load(const StoreHandles& store,
                                                               const SessionRecord& record);

  engine::ShortTermRows ShortTerm(int layer) const override;
  absl::StatusOr<std::vector<uint64_t>> SelectLongTerm(int layer,
                                                       engine::RetrievalQueries& queries) override;
  absl::Status ReadLongTerm(absl::Span<const uint64_t> ids, void* out) override;
  // Told of every Commit that passes validation (PrefixCache::OnInject); a reload starts with an
  // empty one.
  engine::PrefixCache* prefix_cache() override {
    return store_.prefix_cache ? &prefix_cache_ : nullptr;
  }

  // Validates `result`, applies it to this object, and starts in `out_batch` (cleared first) the
  // one write that makes it durable: what the inject removed (dropped and evicted tokens), the
  // long-term layer metas at merges, counters, the request record when `request_id` is set;
  // FinishBatch adds the rest. The batch must be written before the next one is staged. Until it
  // is written the in-RAM state is ahead of the database: if the write fails, drop this object.
  // InvalidArgument leaves the state untouched; after any other error drop this object too.
  absl::Status StageCommit(const engine::InjectResult& result, int64_t tokens_in_chunk,
                           std::optional<std::string_view> request_id, int64_t now_micros,
                           rocksdb::WriteBatch* out_batch, int64_t* evicted_ltm_tokens);
  // Adds to the staged batch what the inject left, read from this object: each layer's K new
  // short-term rows and the short-term lists, the long-term records of the K tokens each layer
  // moved (the writer thread's share, off the inject's critical path). Only reads: it may run
  // beside Model::Inject on this session, never beside the next StageCommit or a Generate.
  void FinishBatch(rocksdb::WriteBatch* batch) const;

  const SessionRecord& record() const { return record_; }
  const ShortTermList& short_term_list(int layer) const { return stm_[layer]; }
  const LongTermMemory* long_term() const { return ltm_.get(); }  // null for MemoryLLM
  // Host bytes this object holds (short-term vectors and lists, long-term index, a prefix cache
  // on the CPU backend).
  size_t ResidentBytes() const;
  // Device bytes it holds on a GPU backend (prefix cache, mirrored long-term keys).
  size_t DeviceBytes() const;

 private:
  struct LongTermSlot {
    uint64_t seq;
    uint64_t token_id;
  };
  ResidentSession(const StoreHandles& store, const SessionRecord& record);
  absl::Status LoadShortTerm();
  absl::Status LoadLongTerm();
  absl::Status LoadLongTermLayer(int layer);
  absl::Status ReadTokens(absl::Span<const uint64_t> ids, uint8_t* out_rows) const;
  absl::Status CheckResult(const engine::InjectResult& result) const;
  // The layer meta matching the in-RAM index, given the entries' slots.
  LongTermLayerMeta LayerMeta(int layer, const std::vector<LongTermSlot>& slots,
                              uint64_t next_seq) const;

  StoreHandles store_;
  const BaseMemory& base_;
  SessionRecord record_;
  std::vector<ShortTermList> stm_;
  std::vector<ShortTermPool> stm_rows_;  // [L]: N rows each, storage dtype
  std::unique_ptr<LongTermMemory> ltm_;
  std::unique_ptr<LongTermRetriever> retriever_;      // with ltm_
  std::vector<std::vector<LongTermSlot>> ltm_slots_;  // parallel to ltm_->layer(l).entries()
  std::vector<LongTermLayerMeta> ltm_meta_;           // as persisted
  engine::PrefixCache prefix_cache_;
};

}  // namespace mplus::memstore

#endif  // MPLUS_MEMSTORE_RESIDENT_SESSION_H_
