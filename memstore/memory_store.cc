#include "memstore/memory_store.h"

#include <algorithm>
#include <chrono>
#include <system_error>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "memstore/rocks_util.h"
#include "rocksdb/cache.h"
#include "rocksdb/table.h"
#include "rocksdb/write_batch.h"

namespace mplus::memstore {

struct SessionHandle::Slot {
  std::string id;
  absl::Mutex mu;  // held by the SessionHandle: one operation at a time per session
  // Accessed under `mu` while pinned; the store drops it under its own mutex only when unpinned.
  std::unique_ptr<ResidentSession> state;
  int pins = 0;                        // store mutex
  size_t bytes = 0, device_bytes = 0;  // store mutex: what `state` held at last release
  bool in_lru = false;
  std::list<Slot*>::iterator lru_it;
};

namespace {

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// FNV-1a over everything that decides the meaning of stored rows.
uint64_t ModelDigest(const engine::ModelConfig& c) {
  const std::string canon = absl::StrCat(
      "mplus-memstore|", static_cast<int>(c.kind), "|", engine::DTypeName(c.dtype), "|",
      c.num_hidden_layers, "|", c.hidden_size, "|", c.num_tokens, "|", c.num_blocks, "|",
      c.num_ltm_blocks, "|", c.selector_hidden_dim, "|", c.ltm_initial_size, "|",
      c.update_ltm_frequency, "|", c.decay_frequency, "|", c.initial_rf_when_moving_stm_to_ltm);
  uint64_t h = 1469598103934665603ull;
  for (unsigned char ch : canon) h = (h ^ ch) * 1099511628211ull;
  return h;
}

// Runs `fn` on a thread of its own, or here when no thread can be had.
template <typename Fn>
auto RunOnOwnThread(Fn fn) -> std::future<decltype(fn())> {
  try {
    return std::async(std::launch::async, fn);
  } catch (const std::system_error&) {
    std::promise<decltype(fn())> done;
    done.set_value(fn());
    return done.get_future();
  }
}

SessionInfo InfoOf(const SessionRecord& r) {
  SessionInfo i;
  i.id = r.id;
  i.labels = r.labels;
  i.seed = r.seed;
  i.created_micros = r.created_micros;
  i.updated_micros = r.updated_micros;
  i.injected_tokens = r.injected_tokens;
  i.inject_count = r.inject_count;
  i.ltm_tokens = r.ltm_tokens;
  return i;
}

}  // namespace

absl::Status ValidateSessionId(std::string_view id) {
  if (id.empty() || id.size() > 128) {
    return absl::InvalidArgumentError("session id must be 1 to 128 characters");
  }
  for (char ch : id) {
    const bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                    (ch >= '0' && ch <= '9') || ch == '.' || ch == '_' || ch == '-';
    if (!ok) {
      return absl::InvalidArgumentError(
          absl::StrCat("session id \"", std::string(id), "\" may only contain [A-Za-z0-9._-]"));
    }
  }
  return absl::OkStatus();
}

// ---- SessionHandle ----------------------------------------------------------------------

SessionHandle::SessionHandle(MemoryStore* store, std::shared_ptr<Slot> slot)
    : store_(store), slot_(std::move(slot)) {}

SessionHandle::SessionHandle(SessionHandle&& other) noexcept
    : store_(other.store_),
      slot_(std::move(other.slot_)),
      pending_(std::move(other.pending_)),
      batch_(std::move(other.batch_)) {
  other.pending_.reset();
}

SessionHandle::~SessionHandle() {
  if (!slot_) return;
  (void)FinishCommit();  // a failed write drops the state; the caller has gone
  const MemoryStore::Footprint footprint = MemoryStore::FootprintOf(*slot_);
  slot_->mu.Unlock();
  store_->Unpin(slot_, footprint);
}

engine::SessionMemory& SessionHandle::memory() { return *slot_->state; }
const ResidentSession& SessionHandle::resident() const { return *slot_->state; }
SessionInfo SessionHandle::info() const { return InfoOf(slot_->state->record()); }

absl::StatusOr<std::optional<RequestRecord>> SessionHandle::FindRequest(
    std::string_view request_id) const {
  std::string v;
  const rocksdb::Status s =
      store_->db_->Get(rocksdb::ReadOptions(), store_->cf_[kRequestsCf],
                       RequestKey(slot_->state->record().number, request_id), &v);
  if (s.IsNotFound()) return std::optional<RequestRecord>();
  if (!s.ok()) return FromRocks(s, "reading request record");
  absl::StatusOr<RequestRecord> r = DecodeRequestRecord(v);
  if (!r.ok()) return r.status();
  return std::optional<RequestRecord>(*r);
}

absl::Status SessionHandle::Commit(const engine::InjectResult& result, int64_t tokens_in_chunk,
                                   std::optional<std::string_view> request_id) {
  absl::Status s = StartCommit(result, tokens_in_chunk, request_id);
  return s.ok() ? FinishCommit() : s;
}

absl::Status SessionHandle::StartCommit(const engine::InjectResult& result, int64_t tokens_in_chunk,
                                        std::optional<std::string_view> request_id) {
  if (absl::Status s = FinishCommit(); !s.ok()) return s;
  if (!slot_->state) {
    return absl::UnavailableError("memstore: session state was dropped after a failed write");
  }
  PendingWrite pending;
  const auto start = std::chrono::steady_clock::now();
  const int64_t ltm_before = slot_->state->record().ltm_tokens;
  if (!batch_) batch_ = std::make_unique<rocksdb::WriteBatch>();
  if (absl::Status s = slot_->state->StageCommit(result, tokens_in_chunk, request_id, NowMicros(),
                                                 batch_.get(), &pending.evicted);
      !s.ok()) {
    // Validation errors leave the state untouched; anything later may have advanced it in RAM.
    if (!absl::IsInvalidArgument(s)) slot_->state.reset();
    return s;
  }
  pending.ltm_delta = slot_->state->record().ltm_tokens - ltm_before;
  pending.stage_seconds = SecondsSince(start);
  // The writer only reads the session (FinishBatch) while the caller goes on using it (the next
  // chunk's Model::Inject, which reads it too); the next StartCommit, the only change, waits for
  // it. Nothing may throw past here with the inject staged but unwritten: its RAM state would
  // outlive the request.
  try {
    pending.written =
        RunOnOwnThread([db = store_->db_.get(), options = store_->handles_.write_options,
                        state = slot_->state.get(), batch = batch_.get()]() -> WriteOutcome {
          WriteOutcome out;
          try {
            const auto begin = std::chrono::steady_clock::now();
            state->FinishBatch(batch);
            const rocksdb::Status ws = db->Write(options, batch);
            out.seconds = SecondsSince(begin);
            if (!ws.ok()) {
              out.status =
                  absl::UnavailableError(absl::StrCat("memstore: session ", state->record().id,
                                                      ": inject not committed: ", ws.ToString()));
            }
          } catch (const std::exception& e) {
            out.status = absl::InternalError(absl::StrCat("memstore: session ", state->record().id,
                                                          ": inject not committed: ", e.what()));
          }
          return out;
        });
  } catch (const std::exception& e) {
    slot_->state.reset();  // applied in RAM, never written: reload on next use
    return absl::ResourceExhaustedError(
        absl::StrCat("memstore: inject not committed: cannot start its write: ", e.what()));
  }
  pending_ = std::move(pending);
  return absl::OkStatus();
}

absl::Status SessionHandle::FinishCommit() {
  if (!pending_) return absl::OkStatus();
  PendingWrite pending = *std::move(pending_);
  pending_.reset();
  const WriteOutcome written = pending.written.get();
  if (!written.status.ok()) {
    slot_->state.reset();  // RAM is ahead of the database: reload on next use
    return written.status;
  }
  store_->OnCommitted(pending.ltm_delta, pending.evicted, pending.stage_seconds + written.seconds);
  return absl::OkStatus();
}

// ---- MemoryStore ------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<MemoryStore>> MemoryStore::Open(
    const StoreOptions& options, const engine::ModelConfig& config,
    const engine::ModelWeights& weights) {
  if (options.path.empty()) return absl::InvalidArgumentError("memstore: empty database path");
  std::unique_ptr<MemoryStore> store(new MemoryStore());
  store->options_ = options;
  absl::StatusOr<std::unique_ptr<BaseMemory>> base = BaseMemory::Create(config, weights);
  if (!base.ok()) return base.status();
  store->base_ = *std::move(base);
  store->digest_ = ModelDigest(config);
  absl::Status s = store->OpenDb(options);
  if (s.ok()) s = store->CollectGarbage();
  if (!s.ok()) return s;
  return store;
}

absl::Status MemoryStore::OpenDb(const StoreOptions& options) {
  rocksdb::DBOptions db_options;
  db_options.create_if_missing = true;
  db_options.create_missing_column_families = true;
  db_options.paranoid_checks = true;
  if (options.env != nullptr) db_options.env = options.env;
  // A torn final record is an unacknowledged write cut by a crash; corruption anywhere else in
  // the WAL must fail the open rather than silently drop acknowledged injects.
  db_options.wal_recovery_mode = rocksdb::WALRecoveryMode::kTolerateCorruptedTailRecords;
  rocksdb::BlockBasedTableOptions table;
  table.block_cache = rocksdb::NewLRUCache(options.block_cache_bytes);
  rocksdb::ColumnFamilyOptions cf_options;
  cf_options.table_factory.reset(rocksdb::NewBlockBasedTableFactory(table));
  std::vector<rocksdb::ColumnFamilyDescriptor> descriptors;
  for (int i = 0; i < kNumColumnFamilies; ++i) {
    descriptors.emplace_back(ColumnFamilyName(i), cf_options);
  }
  rocksdb::DB* db = nullptr;
  rocksdb::Status rs = rocksdb::DB::Open(db_options, options.path, descriptors, &cf_, &db);
  if (!rs.ok()) return FromRocks(rs, absl::StrCat("opening ", options.path));
  db_.reset(db);
  handles_.db = db;
  handles_.cf = cf_;
  handles_.write_options.sync = options.sync_writes;
  handles_.base = base_.get();
  handles_.prefix_cache = options.prefix_cache;
  handles_.ltm_mode = options.ltm_mode;
  handles_.offload_device_min_queries = options.offload_device_min_queries;

  std::string v;
  rs = db->Get(rocksdb::ReadOptions(), cf_[kDefaultCf], MetaKey(), &v);
  absl::MutexLock lock(&create_mu_);
  if (rs.IsNotFound()) {
    meta_.model_digest = digest_;
    rs = db->Put(handles_.write_options, cf_[kDefaultCf], MetaKey(), EncodeStoreMeta(meta_));
    return FromRocks(rs, "writing store meta");
  }
  if (!rs.ok()) return FromRocks(rs, "reading store meta");
  absl::StatusOr<StoreMeta> meta = DecodeStoreMeta(v);
  if (!meta.ok()) return meta.status();
  if (meta->format_version < kOldestReadableFormatVersion ||
      meta->format_version > kFormatVersion) {
    return absl::FailedPreconditionError(absl::StrCat(
        "memstore: ", options.path, " has format version ", meta->format_version,
        "; this build reads versions ", kOldestReadableFormatVersion, " to ", kFormatVersion));
  }
  if (meta->model_digest != digest_) {
    return absl::FailedPreconditionError(absl::StrCat(
        "memstore: ", options.path, " was written for a different model configuration"));
  }
  if (meta->format_version < kFormatVersion) {
    // Older records stay readable; marked current before anything is written in the new layout,
    // so that the builds that wrote it refuse the store instead of misreading it.
    meta->format_version = kFormatVersion;
    rs = db->Put(handles_.write_options, cf_[kDefaultCf], MetaKey(), EncodeStoreMeta(*meta));
    if (!rs.ok()) return FromRocks(rs, "upgrading the store meta");
  }
  meta_ = *meta;
  return absl::OkStatus();
}

absl::Status MemoryStore::CollectGarbage() {
  // Rows whose session record is gone come from an import or a delete cut short by a crash.
  absl::flat_hash_set<uint64_t> live;
  int64_t sessions = 0, ltm_tokens = 0;
  {
    std::unique_ptr<rocksdb::Iterator> it(
        db_->NewIterator(rocksdb::ReadOptions(), cf_[kSessionsCf]));
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      absl::StatusOr<SessionRecord> r = DecodeSessionRecord(it->value().ToStringView());
      if (!r.ok()) return r.status();
      live.insert(r->number);
      ++sessions;
      ltm_tokens += r->ltm_tokens;
    }
    if (!it->status().ok()) return FromRocks(it->status(), "listing sessions");
  }
  for (int cf : {kTokensCf, kStmCf, kLtmCf, kRequestsCf}) {
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), cf_[cf]));
    for (it->SeekToFirst(); it->Valid();) {
      uint64_t number;
      if (!DecodeSessionNumber(it->key().ToStringView(), &number)) {
        return absl::DataLossError(
            absl::StrCat("memstore: malformed key in ", ColumnFamilyName(cf)));
      }
      if (!live.contains(number)) {
        absl::Status s = DeleteRows(number);
        if (!s.ok()) return s;
      }
      if (number == UINT64_MAX) break;
      it->Seek(SessionPrefix(number + 1));
    }
    if (!it->status().ok()) return FromRocks(it->status(), "scanning for orphaned rows");
  }
  absl::MutexLock lock(&mu_);
  total_sessions_ = sessions;
  ltm_tokens_ = ltm_tokens;
  return absl::OkStatus();
}

MemoryStore::~MemoryStore() {
  {
    absl::MutexLock lock(&mu_);
    slots_.clear();
    lru_.clear();
  }
  for (rocksdb::ColumnFamilyHandle* h : cf_) {
    if (db_) db_->DestroyColumnFamilyHandle(h);
  }
  if (db_) db_->Close();
}

absl::Status MemoryStore::DeleteRows(uint64_t number) {
  rocksdb::WriteBatch batch;
  const std::string begin = SessionPrefix(number);
  const std::string end =
      number == UINT64_MAX ? std::string(1, kKeyVersion + 1) : SessionPrefix(number + 1);
  for (int cf : {kTokensCf, kStmCf, kLtmCf, kRequestsCf}) batch.DeleteRange(cf_[cf], begin, end);
  return FromRocks(db_->Write(handles_.write_options, &batch), "deleting session rows");
}

absl::StatusOr<SessionRecord> MemoryStore::ReadRecord(std::string_view id,
                                                      const rocksdb::Snapshot* snapshot) {
  rocksdb::ReadOptions ro;
  ro.snapshot = snapshot;
  std::string v;
  const rocksdb::Status s = db_->Get(ro, cf_[kSessionsCf], SessionKey(id), &v);
  if (s.IsNotFound())
    return absl::NotFoundError(absl::StrCat("session \"", std::string(id), "\" not found"));
  if (!s.ok()) return FromRocks(s, absl::StrCat("reading session ", std::string(id)));
  return DecodeSessionRecord(v);
}

absl::StatusOr<uint64_t> MemoryStore::AllocateSessionNumber() {
  StoreMeta next = meta_;
  const uint64_t number = next.next_session_number++;
  absl::Status s =
      FromRocks(db_->Put(handles_.write_options, cf_[kDefaultCf], MetaKey(), EncodeStoreMeta(next)),
                "writing store meta");
  if (!s.ok()) return s;
  meta_ = next;
  return number;
}

absl::StatusOr<SessionInfo> MemoryStore::CreateSession(
    std::string_view id, const std::map<std::string, std::string>& labels, uint64_t seed) {
  absl::Status s = ValidateSessionId(id);
  if (!s.ok()) return s;
  absl::MutexLock lock(&create_mu_);
  absl::StatusOr<SessionRecord> existing = ReadRecord(id);
  if (existing.ok())
    return absl::AlreadyExistsError(absl::StrCat("session \"", std::string(id), "\" exists"));
  if (!absl::IsNotFound(existing.status())) return existing.status();

  SessionRecord r;
  r.id = std::string(id);
  r.labels = labels;
  r.seed = seed;
  r.created_micros = r.updated_micros = NowMicros();
  for (int l = 0; l < base_->num_layers(); ++l) {
    r.next_ltm_seq.push_back(static_cast<uint64_t>(base_->long_term_size(l)));
    r.ltm_tokens += base_->long_term_size(l);
  }
  StoreMeta next = meta_;
  r.number = next.next_session_number++;
  // Only the record: the session's memory is the checkpoint's until its first inject.
  rocksdb::WriteBatch batch;
  batch.Put(cf_[kDefaultCf], MetaKey(), EncodeStoreMeta(next));
  batch.Put(cf_[kSessionsCf], SessionKey(id), EncodeSessionRecord(r));
  s = FromRocks(db_->Write(handles_.write_options, &batch), "creating session");
  if (!s.ok()) return s;
  meta_ = next;
  absl::MutexLock stats(&mu_);
  ++total_sessions_;
  ltm_tokens_ += r.ltm_tokens;
  return InfoOf(r);
}

absl::StatusOr<SessionInfo> MemoryStore::GetSession(std::string_view id) {
  absl::StatusOr<SessionRecord> r = ReadRecord(id);
  if (!r.ok()) return r.status();
  return InfoOf(*r);
}

absl::StatusOr<SessionPage> MemoryStore::ListSessions(int page_size, std::string_view page_token) {
  if (page_size <= 0) page_size = 100;
  page_size = std::min(page_size, 1000);
  SessionPage page;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), cf_[kSessionsCf]));
  const std::string start = SessionKey(page_token);
  for (it->Seek(start); it->Valid(); it->Next()) {
    if (!page_token.empty() && it->key() == start) continue;
    if (static_cast<int>(page.sessions.size()) == page_size) {
      page.next_page_token = page.sessions.back().id;
      break;
    }
    absl::StatusOr<SessionRecord> r = DecodeSessionRecord(it->value().ToStringView());
    if (!r.ok()) return r.status();
    page.sessions.push_back(InfoOf(*r));
  }
  if (!it->status().ok()) return FromRocks(it->status(), "listing sessions");
  return page;
}

std::shared_ptr<SessionHandle::Slot> MemoryStore::Pin(std::string_view id) {
  absl::MutexLock lock(&mu_);
  std::shared_ptr<Slot>& slot = slots_[std::string(id)];
  if (!slot) {
    slot = std::make_shared<Slot>();
    slot->id = std::string(id);
  }
  ++slot->pins;
  return slot;
}

MemoryStore::Footprint MemoryStore::FootprintOf(const Slot& slot) {
  if (!slot.state) return {};
  return {slot.state->ResidentBytes(), slot.state->DeviceBytes()};
}

void MemoryStore::Unpin(const std::shared_ptr<Slot>& slot, Footprint footprint) {
  absl::MutexLock lock(&mu_);
  resident_bytes_ = resident_bytes_ - slot->bytes + footprint.host;
  resident_device_bytes_ = resident_device_bytes_ - slot->device_bytes + footprint.device;
  slot->bytes = footprint.host;
  slot->device_bytes = footprint.device;
  --slot->pins;
  if (footprint.host == 0 && slot->in_lru) {
    lru_.erase(slot->lru_it);
    slot->in_lru = false;
  }
  if (slot->pins == 0 && !slot->in_lru) {
    auto it = slots_.find(slot->id);
    if (it != slots_.end() && it->second == slot) slots_.erase(it);
  }
  EnforceBudget();
}

std::shared_ptr<SessionHandle::Slot> MemoryStore::PinAndLock(std::string_view id) {
  std::shared_ptr<Slot> slot = Pin(id);
  slot->mu.Lock();
  return slot;
}

void MemoryStore::UnlockAndUnpin(const std::shared_ptr<Slot>& slot) {
  const Footprint footprint = FootprintOf(*slot);
  slot->mu.Unlock();
  Unpin(slot, footprint);
}

void MemoryStore::EnforceBudget() {
  // Spill least-recently-used unpinned sessions; their rows are already durable.
  auto over_budget = [&] {
    return resident_bytes_ > options_.resident_budget_bytes ||
           (options_.device_budget_bytes > 0 &&
            resident_device_bytes_ > options_.device_budget_bytes);
  };
  for (auto it = lru_.end(); over_budget() && it != lru_.begin();) {
    --it;
    Slot* victim = *it;
    if (victim->pins > 0) continue;
    victim->state.reset();
    resident_bytes_ -= victim->bytes;
    resident_device_bytes_ -= victim->device_bytes;
    victim->bytes = 0;
    victim->device_bytes = 0;
    victim->in_lru = false;
    ++spills_;
    it = lru_.erase(it);
    slots_.erase(victim->id);  // destroys victim: nothing may touch it below
  }
}

absl::StatusOr<SessionHandle> MemoryStore::Acquire(std::string_view id) {
  std::shared_ptr<Slot> slot = Pin(id);
  slot->mu.Lock();
  auto fail = [&](absl::Status s) -> absl::Status {
    slot->state.reset();
    slot->mu.Unlock();
    Unpin(slot, {});
    return s;
  };
  if (!slot->state) {
    const auto start = std::chrono::steady_clock::now();
    absl::StatusOr<SessionRecord> r = ReadRecord(id);
    if (!r.ok()) return fail(r.status());
    absl::StatusOr<std::unique_ptr<ResidentSession>> state = ResidentSession::Load(handles_, *r);
    if (!state.ok()) return fail(state.status());
    slot->state = *std::move(state);
    if (options_.on_session_load) options_.on_session_load(SecondsSince(start));
  }
  {
    absl::MutexLock lock(&mu_);
    if (slot->in_lru) lru_.erase(slot->lru_it);
    lru_.push_front(slot.get());
    slot->lru_it = lru_.begin();
    slot->in_lru = true;
  }
  return SessionHandle(this, std::move(slot));
}

absl::Status MemoryStore::DeleteSession(std::string_view id) {
  std::shared_ptr<Slot> slot = Pin(id);
  slot->mu.Lock();
  absl::Status s;
  {
    absl::MutexLock create(&create_mu_);
    absl::StatusOr<SessionRecord> r = ReadRecord(id);
    if (!r.ok()) {
      s = r.status();
    } else {
      rocksdb::WriteBatch batch;
      batch.Delete(cf_[kSessionsCf], SessionKey(id));
      const std::string begin = SessionPrefix(r->number), end = SessionPrefix(r->number + 1);
      for (int cf : {kTokensCf, kStmCf, kLtmCf, kRequestsCf})
        batch.DeleteRange(cf_[cf], begin, end);
      s = FromRocks(db_->Write(handles_.write_options, &batch), "deleting session");
      if (s.ok()) {
        absl::MutexLock lock(&mu_);
        --total_sessions_;
        ltm_tokens_ -= r->ltm_tokens;
      }
    }
  }
  slot->state.reset();
  slot->mu.Unlock();
  Unpin(slot, {});
  return s;
}

void MemoryStore::OnCommitted(int64_t ltm_delta, int64_t evicted, double seconds) {
  {
    absl::MutexLock lock(&mu_);
    ltm_tokens_ += ltm_delta;
    ltm_evicted_ += evicted;
    ++commits_;
    commit_seconds_ += seconds;
  }
  if (options_.on_commit_latency) options_.on_commit_latency(seconds);
}

StoreStats MemoryStore::Stats() {
  StoreStats st;
  uint64_t bytes = 0;
  for (int cf = 0; cf < kNumColumnFamilies; ++cf) {
    uint64_t v = 0;
    if (db_->GetIntProperty(cf_[cf], "rocksdb.live-sst-files-size", &v)) bytes += v;
    if (db_->GetIntProperty(cf_[cf], "rocksdb.cur-size-all-mem-tables", &v)) bytes += v;
  }
  st.disk_bytes = bytes;
  absl::MutexLock lock(&mu_);
  st.total_sessions = total_sessions_;
  st.resident_sessions = static_cast<int64_t>(lru_.size());
  st.resident_bytes = resident_bytes_;
  st.resident_device_bytes = resident_device_bytes_;
  st.ltm_tokens = ltm_tokens_;
  st.ltm_evicted_tokens = ltm_evicted_;
  st.session_spills = spills_;
  st.commits = commits_;
  st.commit_seconds = commit_seconds_;
  return st;
}

std::vector<std::string> MemoryStore::ResidentSessions() {
  absl::MutexLock lock(&mu_);
  std::vector<std::string> ids;
  for (const Slot* s : lru_) ids.push_back(s->id);
  return ids;
}

absl::Status MemoryStore::Flush() {
  rocksdb::FlushOptions fo;
  return FromRocks(db_->Flush(fo, cf_), "flushing memtables");
}

}  // namespace mplus::memstore
