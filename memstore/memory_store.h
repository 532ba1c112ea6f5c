// Durable memory of every session: RocksDB is the truth, RAM holds the resident sessions.
//
//   auto store = MemoryStore::Open(options, config, weights);       // weights outlive the store
//   store->CreateSession("doc-1", {{"team", "a"}}, /*seed=*/7);
//   auto handle = store->Acquire("doc-1");                          // restores if spilled
//   engine.Inject(handle->memory(), ...) -> InjectResult r;
//   handle->Commit(r, tokens_in_chunk, request_id);                  // OK = durable
//   (or StartCommit per chunk, overlapping each write with the next Inject, then FinishCommit)
//
// Layout and record formats: store_schema.h. Sessions start from the checkpoint's memory
// without copying it (copy-on-write, base_memory.h). The store is thread-safe; a SessionHandle
// holds its session exclusively, so operations on one session are serialised while different
// sessions proceed concurrently. Resident sessions (short-term vectors + long-term index) are
// kept within StoreOptions::resident_budget_bytes (host) and device_budget_bytes (GPU) by
// spilling whole least-recently-used sessions, which the next Acquire restores transparently.
#ifndef MPLUS_MEMSTORE_MEMORY_STORE_H_
#define MPLUS_MEMSTORE_MEMORY_STORE_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <future>
#include <list>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "engine/model_config.h"
#include "engine/model_weights.h"
#include "engine/session_memory.h"
#include "memstore/base_memory.h"
#include "memstore/resident_session.h"
#include "memstore/store_schema.h"

namespace mplus::memstore {

struct StoreOptions {
  std::string path;                                // RocksDB directory (created if missing)
  bool sync_writes = true;                         // fsync the WAL before acknowledging
  size_t block_cache_bytes = size_t{256} << 20;    // long-term vector reads
  size_t resident_budget_bytes = size_t{8} << 30;  // RAM for resident sessions
  // Cache each resident session's prefix K/V between Generates (faster time to first token;
  // costs 2·L·(1+N)·kv_dim float32 per session, counted in the resident budget).
  bool prefix_cache = true;
  // Where retrieval scores long-term keys (long_term_retriever.h); matters on a GPU backend.
  LongTermMode ltm_mode = LongTermMode::kResident;
  // Offload mode: prompts of at least this many tokens score on the GPU, copying each layer's
  // keys there for the layer (LongTermRetriever); 0: always on the host.
  int64_t offload_device_min_queries = 0;
  // GPU memory for resident sessions (prefix caches, mirrored long-term keys); 0: no limit.
  // Beyond it whole least-recently-used sessions spill, as for resident_budget_bytes.
  size_t device_budget_bytes = 0;
  // Called with the duration of every committed inject's write (seconds), e.g. for a histogram.
  std::function<void(double)> on_commit_latency;
  // Called with the duration of every session made resident from the database (seconds): its
  // first use, after a restart, or after a spill.
  std::function<void(double)> on_session_load;
  // The RocksDB environment (files, threads); null: RocksDB's default. Tests inject I/O faults
  // through it.
  rocksdb::Env* env = nullptr;
};

struct SessionInfo {
  std::string id;
  std::map<std::string, std::string> labels;
  uint64_t seed = 0;
  int64_t created_micros = 0, updated_micros = 0;  // unix microseconds
  int64_t injected_tokens = 0, inject_count = 0;
  int64_t ltm_tokens = 0;  // merged + pending, all layers
};

struct SessionPage {
  std::vector<SessionInfo> sessions;
  std::string next_page_token;  // empty at the end
};

struct StoreStats {
  int64_t total_sessions = 0;
  int64_t resident_sessions = 0;
  size_t resident_bytes = 0;         // host memory of resident sessions
  size_t resident_device_bytes = 0;  // their GPU memory (prefix caches, long-term keys)
  int64_t ltm_tokens = 0;            // all sessions
  int64_t ltm_evicted_tokens = 0;    // since open
  int64_t session_spills = 0;        // residency evictions since open
  uint64_t disk_bytes = 0;           // SST files + WAL-backed memtables
  int64_t commits = 0;
  double commit_seconds = 0;  // sum over commits
};

// Session ids: 1-128 characters of [A-Za-z0-9._-].
absl::Status ValidateSessionId(std::string_view id);

class MemoryStore;

// Exclusive access to one resident session; releases it when destroyed. Move-only.
class SessionHandle {
 public:
  SessionHandle(SessionHandle&& other) noexcept;
  SessionHandle& operator=(SessionHandle&&) = delete;
  ~SessionHandle();

  engine::SessionMemory& memory();
  SessionInfo info() const;
  // The committed request with this idempotency key, if any.
  absl::StatusOr<std::optional<RequestRecord>> FindRequest(std::string_view request_id) const;
  // Commits one inject (see ResidentSession::StageCommit): StartCommit then FinishCommit; OK
  // only once the batch is durable. After a failed write the session is reloaded from the
  // database on next use.
  absl::Status Commit(const engine::InjectResult& result, int64_t tokens_in_chunk,
                      std::optional<std::string_view> request_id = std::nullopt);
  // The same in two halves, so that the next chunk's Model::Inject overlaps this one's write:
  // StartCommit waits for the previous StartCommit's write (returning its error), applies the
  // inject in RAM (what the next Model::Inject reads) and starts writing its batch on another
  // thread; FinishCommit waits for that write (OK = durable). Batches are written one at a time,
  // in order. The destructor finishes a started commit.
  absl::Status StartCommit(const engine::InjectResult& result, int64_t tokens_in_chunk,
                           std::optional<std::string_view> request_id = std::nullopt);
  absl::Status FinishCommit();
  // For tests and tools: the resident state.
  const ResidentSession& resident() const;

 private:
  friend class MemoryStore;
  struct Slot;
  // The write StartCommit began, and what to report when it is durable: the commit's own time
  // (staging + writing), not the caller's work in between.
  struct WriteOutcome {
    absl::Status status;
    double seconds = 0;
  };
  struct PendingWrite {
    std::future<WriteOutcome> written;
    int64_t ltm_delta = 0, evicted = 0;
    double stage_seconds = 0;
  };
  SessionHandle(MemoryStore* store, std::shared_ptr<Slot> slot);
  MemoryStore* store_;
  std::shared_ptr<Slot> slot_;
  std::optional<PendingWrite> pending_;
  // Reused by the commits of this handle's chunks (one write at a time): a fresh batch for an
  // 8B model's chunk (~75 MB) costs its page faults on the inject's critical path every time.
  std::unique_ptr<rocksdb::WriteBatch> batch_;
};

class SessionImport;

class MemoryStore {
 public:
  // Opens (or creates) the database at options.path for this model. Fails with
  // FailedPrecondition when the database was written for another model or format version, and
  // DataLoss when RocksDB reports corruption.
  static absl::StatusOr<std::unique_ptr<MemoryStore>> Open(const StoreOptions& options,
                                                           const engine::ModelConfig& config,
                                                           const engine::ModelWeights& weights);
  ~MemoryStore();

  absl::StatusOr<SessionInfo> CreateSession(std::string_view id,
                                            const std::map<std::string, std::string>& labels,
                                            uint64_t seed);
  absl::StatusOr<SessionInfo> GetSession(std::string_view id);
  // Sessions in id order after `page_token` (a previous next_page_token, or empty).
  absl::StatusOr<SessionPage> ListSessions(int page_size, std::string_view page_token);
  // Deletes the session and all of its rows; the checkpoint's base memory is untouched.
  absl::Status DeleteSession(std::string_view id);
  // Waits for exclusive use of the session and makes it resident. NotFound if absent.
  absl::StatusOr<SessionHandle> Acquire(std::string_view id);

  // Snapshot of one session as chunks of at most ~1 MiB (snapshot.h describes the format).
  absl::Status ExportSession(std::string_view id,
                             const std::function<absl::Status(std::string_view)>& sink);
  // Starts importing chunks as the new session `new_id`; see SessionImport.
  absl::StatusOr<std::unique_ptr<SessionImport>> BeginImport(std::string_view new_id);
  // Convenience: BeginImport + every chunk + Finish.
  absl::StatusOr<SessionInfo> ImportSession(std::string_view new_id,
                                            const std::vector<std::string>& chunks);

  StoreStats Stats();
  // Ids of the resident sessions, most recently used first.
  std::vector<std::string> ResidentSessions();
  // Writes memtables to SST files (operations, tests).
  absl::Status Flush();
  uint64_t model_digest() const { return digest_; }
  const BaseMemory& base() const { return *base_; }

 private:
  friend class SessionHandle;
  friend class SessionImport;
  using Slot = SessionHandle::Slot;
  struct Footprint {
    size_t host = 0, device = 0;
  };
  static Footprint FootprintOf(const Slot& slot);
  MemoryStore() = default;
  absl::Status OpenDb(const StoreOptions& options);
  absl::Status CollectGarbage();
  absl::StatusOr<SessionRecord> ReadRecord(std::string_view id,
                                           const rocksdb::Snapshot* snapshot = nullptr);
  absl::StatusOr<uint64_t> AllocateSessionNumber() ABSL_EXCLUSIVE_LOCKS_REQUIRED(create_mu_);
  std::shared_ptr<Slot> Pin(std::string_view id);
  // Releases a pin; `footprint` is what the session holds now (zero once dropped).
  void Unpin(const std::shared_ptr<Slot>& slot, Footprint footprint);
  // Exclusive use of a session without making it resident (export).
  std::shared_ptr<Slot> PinAndLock(std::string_view id);
  void UnlockAndUnpin(const std::shared_ptr<Slot>& slot);
  void EnforceBudget() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void OnCommitted(int64_t ltm_delta, int64_t evicted, double seconds);
  absl::Status DeleteRows(uint64_t number);

  StoreOptions options_;
  std::unique_ptr<BaseMemory> base_;
  uint64_t digest_ = 0;
  std::unique_ptr<rocksdb::DB> db_;
  std::vector<rocksdb::ColumnFamilyHandle*> cf_;
  StoreHandles handles_;

  absl::Mutex create_mu_;  // session creation, import and deletion of session records
  StoreMeta meta_ ABSL_GUARDED_BY(create_mu_);

  absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::shared_ptr<Slot>> slots_ ABSL_GUARDED_BY(mu_);
  std::list<Slot*> lru_ ABSL_GUARDED_BY(mu_);  // resident sessions, most recent first
  size_t resident_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  size_t resident_device_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t total_sessions_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t ltm_tokens_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t ltm_evicted_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t spills_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t commits_ ABSL_GUARDED_BY(mu_) = 0;
  double commit_seconds_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace mplus::memstore

#endif  // MPLUS_MEMSTORE_MEMORY_STORE_H_
