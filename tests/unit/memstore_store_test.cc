// MemoryStore: session lifecycle, copy-on-write isolation, restart, deletion, residency,
// corruption handling.
#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "memstore/memory_store.h"
#include "rocksdb/db.h"
#include "rocksdb/env.h"
#include "rocksdb/file_system.h"
#include "tests/unit/key_keeping_backend.h"
#include "tests/unit/memstore_test_util.h"

namespace mplus::memstore {
namespace {

using testing::CompareWithReference;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing::MakeInject;
using testing::MakeTinyModel;
using testing::ReferenceSession;
using testing::TempDir;

std::unique_ptr<MemoryStore> OpenStore(const testing::TinyModel& m, const std::string& path,
                                       size_t budget = size_t{1} << 30, rocksdb::Env* env = nullptr,
                                       std::function<void(double)> on_session_load = nullptr) {
  StoreOptions o;
  o.path = path;
  o.resident_budget_bytes = budget;
  o.env = env;
  o.on_session_load = std::move(on_session_load);
  absl::StatusOr<std::unique_ptr<MemoryStore>> s = MemoryStore::Open(o, m.config, m.weights);
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? *std::move(s) : nullptr;
}

void Inject(MemoryStore& store, const std::string& id, uint64_t stream, int64_t n,
            ReferenceSession* ref = nullptr) {
  absl::StatusOr<SessionHandle> h = store.Acquire(id);
  ASSERT_TRUE(h.ok()) << h.status();
  const engine::InjectResult r = MakeInject(store.base().config(), stream, n);
  ASSERT_TRUE(h->Commit(r, 100 + n).ok());
  if (ref) ref->Apply(r);
}

// The store's RocksDB database opened directly, every column family, as another program would.
class RawStore {
 public:
  RawStore(const std::string& path, bool read_only) {
    std::vector<rocksdb::ColumnFamilyDescriptor> cfs;
    for (int i = 0; i < kNumColumnFamilies; ++i)
      cfs.emplace_back(ColumnFamilyName(i), rocksdb::ColumnFamilyOptions());
    const rocksdb::Status s =
        read_only ? rocksdb::DB::OpenForReadOnly(rocksdb::DBOptions(), path, cfs, &handles_, &db_)
                  : rocksdb::DB::Open(rocksdb::DBOptions(), path, cfs, &handles_, &db_);
    EXPECT_TRUE(s.ok()) << s.ToString();
  }
  ~RawStore() {
    for (auto* h : handles_) db_->DestroyColumnFamilyHandle(h);
    delete db_;
  }
  rocksdb::DB* db() const { return db_; }
  rocksdb::ColumnFamilyHandle* cf(int i) const { return handles_[i]; }
  StoreMeta Meta() const {
    std::string v;
    EXPECT_TRUE(db_->Get(rocksdb::ReadOptions(), cf(kDefaultCf), MetaKey(), &v).ok());
    return DecodeStoreMeta(v).value();
  }

 private:
  rocksdb::DB* db_ = nullptr;
  std::vector<rocksdb::ColumnFamilyHandle*> handles_;
};

// RocksDB files whose WAL appends fail while `fail` is set (nothing is written then), and wait
// while `hold` is set (at most 5 s, so that a test expecting otherwise fails instead of hanging).
class WalFaults : public rocksdb::FileSystemWrapper {
 public:
  WalFaults() : FileSystemWrapper(rocksdb::FileSystem::Default()) {}
  const char* Name() const override { return "WalFaults"; }
  std::atomic<bool> fail{false}, hold{false};
  std::atomic<int> appends{0};  // WAL appends done

  rocksdb::IOStatus NewWritableFile(const std::string& name, const rocksdb::FileOptions& options,
                                    std::unique_ptr<rocksdb::FSWritableFile>* file,
                                    rocksdb::IODebugContext* dbg) override {
    rocksdb::IOStatus s = target()->NewWritableFile(name, options, file, dbg);
    if (s.ok() && name.size() > 4 && name.compare(name.size() - 4, 4, ".log") == 0) {
      *file = std::make_unique<WalFile>(std::move(*file), this);
    }
    return s;
  }

 private:
  class WalFile : public rocksdb::FSWritableFileOwnerWrapper {
   public:
    WalFile(std::unique_ptr<rocksdb::FSWritableFile> file, WalFaults* faults)
        : FSWritableFileOwnerWrapper(std::move(file)), faults_(faults) {}
    rocksdb::IOStatus Append(const rocksdb::Slice& data, const rocksdb::IOOptions& options,
                             rocksdb::IODebugContext* dbg) override {
      return Done(Before() ? target()->Append(data, options, dbg) : Failure());
    }
    rocksdb::IOStatus Append(const rocksdb::Slice& data, const rocksdb::IOOptions& options,
                             const rocksdb::DataVerificationInfo& info,
                             rocksdb::IODebugContext* dbg) override {
      return Done(Before() ? target()->Append(data, options, info, dbg) : Failure());
    }

   private:
    // Waits out `hold`; false when the append must fail.
    bool Before() const {
      const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
      while (faults_->hold && std::chrono::steady_clock::now() < until) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
      return !faults_->fail;
    }
    static rocksdb::IOStatus Failure() {
      return rocksdb::IOStatus::IOError("injected WAL failure");
    }
    rocksdb::IOStatus Done(rocksdb::IOStatus s) {
      if (s.ok()) ++faults_->appends;
      return s;
    }
    WalFaults* faults_;
  };
};

TEST(MemstoreStoreTest, SessionLifecycleAndListing) {
  auto m = MakeTinyModel();
  auto store = OpenStore(*m, TempDir("lifecycle"));
  EXPECT_TRUE(absl::IsInvalidArgument(store->CreateSession("", {}, 1).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(store->CreateSession("bad/id", {}, 1).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(store->CreateSession(std::string(129, 'a'), {}, 1).status()));
  for (const char* id : {"c", "a", "b.2", "b_1", "Z-9"}) {
    ASSERT_TRUE(store->CreateSession(id, {{"k", id}}, 42).ok());
  }
  EXPECT_TRUE(absl::IsAlreadyExists(store->CreateSession("a", {}, 1).status()));
  absl::StatusOr<SessionInfo> a = store->GetSession("a");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->seed, 42u);
  EXPECT_EQ(a->labels.at("k"), "a");
  EXPECT_GT(a->created_micros, 0);
  EXPECT_EQ(a->ltm_tokens, 20);  // the checkpoint's 10 entries on each of 2 layers

  std::vector<std::string> seen;
  std::string token;
  do {
    absl::StatusOr<SessionPage> page = store->ListSessions(2, token);
    ASSERT_TRUE(page.ok());
    for (const SessionInfo& s : page->sessions) seen.push_back(s.id);
    token = page->next_page_token;
  } while (!token.empty());
  EXPECT_THAT(seen, ElementsAre("Z-9", "a", "b.2", "b_1", "c"));

  Inject(*store, "a", 1, 0);
  a = store->GetSession("a");
  EXPECT_EQ(a->inject_count, 1);
  EXPECT_EQ(a->injected_tokens, 100);
  ASSERT_TRUE(store->DeleteSession("a").ok());
  EXPECT_TRUE(absl::IsNotFound(store->GetSession("a").status()));
  EXPECT_TRUE(absl::IsNotFound(store->Acquire("a").status()));
  EXPECT_TRUE(absl::IsNotFound(store->DeleteSession("a")));
  EXPECT_EQ(store->Stats().total_sessions, 4);
}

TEST(MemstoreStoreTest, CopyOnWriteIsolation) {
  auto m = MakeTinyModel(engine::DType::kBF16);
  const std::vector<uint8_t> base_before = *m->buffers[0];
  auto store = OpenStore(*m, TempDir("cow"));
  ASSERT_TRUE(store->CreateSession("a", {}, 1).ok());
  ASSERT_TRUE(store->CreateSession("b", {}, 2).ok());
  ReferenceSession ref_a(store->base()), ref_b(store->base());
  for (int n = 0; n < 8; ++n) Inject(*store, "a", 7, n, &ref_a);
  EXPECT_EQ(*m->buffers[0], base_before);  // the checkpoint memory is never written
  for (const auto& [id, ref] :
       {std::pair<const char*, ReferenceSession*>{"a", &ref_a}, {"b", &ref_b}}) {
    absl::StatusOr<SessionHandle> h = store->Acquire(id);
    ASSERT_TRUE(h.ok());
    ResidentSession& s = const_cast<ResidentSession&>(h->resident());
    EXPECT_EQ(CompareWithReference(s, *ref), "") << id;
  }
  // b still sees exactly the checkpoint's memory.
  absl::StatusOr<SessionHandle> b = store->Acquire("b");
  const engine::TensorView t = b->memory().ShortTerm(1).pool;
  EXPECT_EQ(std::memcmp(t.data, m->buffers[0]->data() + t.nbytes, t.nbytes), 0);
}

// A session's layers store the checkpoint's long-term keys in their key dtype: read in place
// when the checkpoint holds them so (f32, bf16), converted once otherwise (f16 keys, kept f32).
TEST(MemstoreStoreTest, BaseLongTermKeysComeInTheSessionsKeyDtype) {
  for (engine::DType dtype : {engine::DType::kF32, engine::DType::kBF16, engine::DType::kF16}) {
    auto m = MakeTinyModel(dtype);
    const std::unique_ptr<BaseMemory> base = BaseMemory::Create(m->config, m->weights).value();
    const LongTermParams params = base->long_term_params();
    const int64_t p = params.key_dim;
    const size_t key_bytes = static_cast<size_t>(p) * engine::DTypeSize(params.key_dtype);
    for (int l = 0; l < base->num_layers(); ++l) {
      const engine::TensorView& keys = m->weights.ltm_keys[l];
      for (int64_t i = 0; i < base->long_term_size(l); ++i) {
        std::vector<float> widened(static_cast<size_t>(p));
        engine::DTypeToFloats(
            static_cast<const uint8_t*>(keys.data) + i * p * engine::DTypeSize(keys.dtype),
            keys.dtype, p, widened.data());
        std::vector<uint8_t> expected(key_bytes);
        engine::FloatsToDType(widened.data(), p, params.key_dtype, expected.data());
        ASSERT_EQ(std::memcmp(base->LongTermKey(l, i).data, expected.data(), key_bytes), 0)
            << engine::DTypeName(dtype) << " layer " << l << " key " << i;
      }
    }
    const bool in_place = dtype != engine::DType::kF16;
    EXPECT_EQ(base->LongTermKey(0, 0).data == m->weights.ltm_keys[0].data, in_place);
  }
}

TEST(MemstoreStoreTest, RestartRestoresBitwiseIdenticalState) {
  for (engine::DType dtype : {engine::DType::kF32, engine::DType::kBF16}) {
    for (bool mplus : {true, false}) {
      auto m = MakeTinyModel(dtype, mplus);
      const std::string path = TempDir("restart");
      // The references read the checkpoint through their own BaseMemory: the first store (and
      // its base) is gone before they are compared.
      const std::unique_ptr<BaseMemory> base = BaseMemory::Create(m->config, m->weights).value();
      std::vector<std::unique_ptr<ReferenceSession>> refs;
      {
        auto store = OpenStore(*m, path);
        for (int s = 0; s < 3; ++s) {
          const std::string id = "s" + std::to_string(s);
          ASSERT_TRUE(store->CreateSession(id, {}, s).ok());
          refs.push_back(std::make_unique<ReferenceSession>(*base));
          // Enough injects for several merges and evictions.
          for (int n = 0; n < 5 + 7 * s; ++n) Inject(*store, id, s, n, refs.back().get());
        }
      }
      auto store = OpenStore(*m, path);
      EXPECT_EQ(store->Stats().resident_sessions, 0);
      for (int s = 0; s < 3; ++s) {
        absl::StatusOr<SessionHandle> h = store->Acquire("s" + std::to_string(s));
        ASSERT_TRUE(h.ok()) << h.status();
        EXPECT_EQ(CompareWithReference(const_cast<ResidentSession&>(h->resident()), *refs[s]), "")
            << "session " << s << " dtype " << static_cast<int>(dtype) << " mplus " << mplus;
      }
      if (mplus) {
        EXPECT_GT(store->Stats().ltm_tokens, 0);
      }
    }
  }
}

// StartCommit applies an inject in RAM at once (what the next Model::Inject reads) and writes it
// in the background; the writes land in order, and one still in flight when the handle goes is
// finished by it.
TEST(MemstoreStoreTest, OverlappedCommitsApplyAtOnceAndLandInOrder) {
  auto m = MakeTinyModel(engine::DType::kBF16, /*mplus=*/true);
  const std::string path = TempDir("overlapped");
  const std::unique_ptr<BaseMemory> base = BaseMemory::Create(m->config, m->weights).value();
  ReferenceSession ref(*base);
  {
    auto store = OpenStore(*m, path);
    ASSERT_TRUE(store->CreateSession("p", {}, 3).ok());
    absl::StatusOr<SessionHandle> h = store->Acquire("p");
    ASSERT_TRUE(h.ok()) << h.status();
    for (int n = 0; n < 9; ++n) {  // several merges and evictions
      const engine::InjectResult r = MakeInject(m->config, 3, n);
      ASSERT_TRUE(h->StartCommit(r, 100 + n, "req-" + std::to_string(n)).ok());
      ref.Apply(r);
      EXPECT_EQ(CompareWithReference(const_cast<ResidentSession&>(h->resident()), ref), "")
          << "inject " << n;
    }
  }  // the last write is finished by the handle
  auto store = OpenStore(*m, path);
  absl::StatusOr<SessionHandle> h = store->Acquire("p");
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(CompareWithReference(const_cast<ResidentSession&>(h->resident()), ref), "");
  absl::StatusOr<std::optional<RequestRecord>> last = h->FindRequest("req-8");
  ASSERT_TRUE(last.ok() && last->has_value());
  EXPECT_EQ((*last)->inject_count, 9);
}

// StartCommit returns with the inject applied in RAM while its write is still under way.
TEST(MemstoreStoreTest, StartCommitReturnsWhileItsWriteIsInFlight) {
  auto m = MakeTinyModel(engine::DType::kBF16, /*mplus=*/true);
  auto faults = std::make_shared<WalFaults>();
  const std::unique_ptr<rocksdb::Env> env = rocksdb::NewCompositeEnv(faults);
  auto store = OpenStore(*m, TempDir("in-flight"), size_t{1} << 30, env.get());
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(store->CreateSession("w", {}, 6).ok());
  absl::StatusOr<SessionHandle> h = store->Acquire("w");
  ASSERT_TRUE(h.ok()) << h.status();
  faults->hold = true;
  const int appends = faults->appends;
  ASSERT_TRUE(h->StartCommit(MakeInject(m->config, 6, 0), 10).ok());
  EXPECT_EQ(h->info().inject_count, 1);
  EXPECT_EQ(faults->appends, appends) << "StartCommit waited for its write";
  faults->hold = false;
  ASSERT_TRUE(h->FinishCommit().ok());
  EXPECT_GT(faults->appends, appends);
}

// A write that fails leaves the session as its last durable inject: the RAM state, which had
// moved ahead, is dropped and reloaded from the database.
TEST(MemstoreStoreTest, FailedWriteDropsTheStateAheadOfTheDatabase) {
  auto m = MakeTinyModel(engine::DType::kBF16, /*mplus=*/true);
  const std::string path = TempDir("failed-write");
  const std::unique_ptr<BaseMemory> base = BaseMemory::Create(m->config, m->weights).value();
  ReferenceSession ref(*base);
  auto faults = std::make_shared<WalFaults>();
  const std::unique_ptr<rocksdb::Env> env = rocksdb::NewCompositeEnv(faults);
  {
    auto store = OpenStore(*m, path, size_t{1} << 30, env.get());
    ASSERT_NE(store, nullptr);
    ASSERT_TRUE(store->CreateSession("f", {}, 5).ok());
    absl::StatusOr<SessionHandle> h = store->Acquire("f");
    ASSERT_TRUE(h.ok()) << h.status();
    for (int n = 0; n < 2; ++n) {
      const engine::InjectResult r = MakeInject(m->config, 5, n);
      ASSERT_TRUE(h->Commit(r, 10).ok());
      ref.Apply(r);
    }
    faults->fail = true;
    ASSERT_TRUE(h->StartCommit(MakeInject(m->config, 5, 2), 10).ok());  // applied in RAM
    EXPECT_EQ(h->info().inject_count, 3);
    const absl::Status failed = h->FinishCommit();
    EXPECT_TRUE(absl::IsUnavailable(failed)) << failed;
    EXPECT_THAT(failed.message(), HasSubstr("inject not committed"));
    const absl::Status after = h->StartCommit(MakeInject(m->config, 5, 3), 10);
    EXPECT_THAT(after.message(), HasSubstr("dropped after a failed write"));
  }
  faults->fail = false;
  auto store = OpenStore(*m, path);
  absl::StatusOr<SessionHandle> h = store->Acquire("f");
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(CompareWithReference(const_cast<ResidentSession&>(h->resident()), ref), "");
}

TEST(MemstoreStoreTest, MergeEveryInjectAndLongRuns) {
  auto m = MakeTinyModel(engine::DType::kF32, true, 3, /*update_ltm_frequency=*/1);
  const std::string path = TempDir("merge1");
  const std::unique_ptr<BaseMemory> base = BaseMemory::Create(m->config, m->weights).value();
  ReferenceSession ref(*base);
  {
    auto store = OpenStore(*m, path);
    ASSERT_TRUE(store->CreateSession("x", {}, 0).ok());
    for (int n = 0; n < 30; ++n) Inject(*store, "x", 3, n, &ref);
    EXPECT_GT(store->Stats().ltm_evicted_tokens, 0);
  }
  auto store = OpenStore(*m, path);
  absl::StatusOr<SessionHandle> h = store->Acquire("x");
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(CompareWithReference(const_cast<ResidentSession&>(h->resident()), ref), "");
}

TEST(MemstoreStoreTest, DeletionLeavesNoKeys) {
  auto m = MakeTinyModel();
  const std::string path = TempDir("delete");
  {
    auto store = OpenStore(*m, path);
    ASSERT_TRUE(store->CreateSession("gone", {}, 1).ok());
    ASSERT_TRUE(store->CreateSession("kept", {}, 1).ok());
    for (int n = 0; n < 10; ++n) Inject(*store, "gone", 1, n);
    {
      absl::StatusOr<SessionHandle> h = store->Acquire("gone");
      ASSERT_TRUE(h->Commit(MakeInject(m->config, 1, 10), 5, "req-1").ok());
    }
    ASSERT_TRUE(store->Flush().ok());
    ASSERT_TRUE(store->DeleteSession("gone").ok());
    EXPECT_EQ(store->Stats().ltm_tokens, 20);  // only "kept"'s checkpoint entries
  }
  RawStore raw(path, /*read_only=*/true);
  for (int cf = kSessionsCf; cf < kNumColumnFamilies; ++cf) {
    std::unique_ptr<rocksdb::Iterator> it(
        raw.db()->NewIterator(rocksdb::ReadOptions(), raw.cf(cf)));
    int keys = 0;
    for (it->SeekToFirst(); it->Valid(); it->Next()) ++keys;
    // "kept" never injected: it has only its session record.
    EXPECT_EQ(keys, cf == kSessionsCf ? 1 : 0) << ColumnFamilyName(cf);
  }
}

TEST(MemstoreStoreTest, ResidencySpillsLeastRecentlyUsedSessions) {
  auto m = MakeTinyModel();
  const std::string path = TempDir("lru");
  size_t one = 0;
  {
    auto store = OpenStore(*m, path);
    ASSERT_TRUE(store->CreateSession("probe", {}, 0).ok());
    { ASSERT_TRUE(store->Acquire("probe").ok()); }
    one = store->Stats().resident_bytes;
  }
  ASSERT_GT(one, 0u);
  std::vector<double> loads;  // seconds of each session made resident
  auto store = OpenStore(*m, path, 2 * one + one / 2, nullptr,  // room for two sessions
                         [&](double seconds) { loads.push_back(seconds); });
  std::vector<ReferenceSession> refs;
  for (const char* id : {"a", "b", "c", "d"}) {
    ASSERT_TRUE(store->CreateSession(id, {}, 0).ok());
    refs.emplace_back(store->base());
  }
  auto touch = [&](const char* id) {
    const int i = id[0] - 'a';
    Inject(*store, id, i, refs[i].inject_count(), &refs[i]);
  };
  touch("a");
  touch("b");
  EXPECT_THAT(store->ResidentSessions(), ElementsAre("b", "a"));
  touch("c");  // a is least recently used
  EXPECT_THAT(store->ResidentSessions(), ElementsAre("c", "b"));
  touch("b");
  touch("d");  // c now
  EXPECT_THAT(store->ResidentSessions(), ElementsAre("d", "b"));
  EXPECT_EQ(store->Stats().session_spills, 2);
  EXPECT_LE(store->Stats().resident_bytes, 2 * one + one / 2);
  EXPECT_EQ(loads.size(), 4u);  // each session's first use; b's second touch found it resident
  touch("a");                   // restored transparently
  ASSERT_EQ(loads.size(), 5u);
  for (double seconds : loads) EXPECT_GE(seconds, 0.0);
  for (const char* id : {"a", "b", "c", "d"}) {
    absl::StatusOr<SessionHandle> h = store->Acquire(id);
    ASSERT_TRUE(h.ok());
    EXPECT_EQ(CompareWithReference(const_cast<ResidentSession&>(h->resident()), refs[id[0] - 'a']),
              "");
  }
}

// Resident-mode retrieval on a backend that keeps keys (GPU memory) counts toward
// device_budget_bytes: beyond it least-recently-used sessions spill, in offload mode nothing is
// held on the device.
TEST(MemstoreStoreTest, DeviceBudgetSpillsSessionsHoldingGpuMemory) {
  auto m = MakeTinyModel();
  testing::KeyKeepingBackend backend;
  const int64_t p = m->config.selector_hidden_dim;
  absl::StatusOr<engine::Tensor> device =
      testing::DeviceQueries(backend, {std::vector<float>(2 * p, 0.5f)}, p);
  ASSERT_TRUE(device.ok());
  std::vector<float> out(  // float32 checkpoint: rows of floats
      static_cast<size_t>(m->config.ltm_retrieved_tokens() * m->config.hidden_size));
  auto retrieve_all_layers = [&](MemoryStore& store, const char* id) {
    absl::StatusOr<SessionHandle> h = store.Acquire(id);
    ASSERT_TRUE(h.ok()) << h.status();
    for (int l = 0; l < m->config.num_hidden_layers; ++l) {
      engine::RetrievalQueries queries(backend, *device);
      ASSERT_TRUE(h->memory().RetrieveLongTerm(l, queries, out.data()).ok());
    }
  };
  // One session's mirrors: every layer's initial long-term keys in float32.
  const size_t one =
      static_cast<size_t>(m->config.num_hidden_layers * m->config.ltm_initial_size * p) *
      sizeof(float);
  for (LongTermMode mode : {LongTermMode::kResident, LongTermMode::kOffload}) {
    SCOPED_TRACE(LongTermModeName(mode));
    StoreOptions o;
    o.path = TempDir(std::string("device-budget-") + LongTermModeName(mode));
    o.ltm_mode = mode;
    o.device_budget_bytes = one + one / 2;  // room for one session's keys
    absl::StatusOr<std::unique_ptr<MemoryStore>> store =
        MemoryStore::Open(o, m->config, m->weights);
    ASSERT_TRUE(store.ok()) << store.status();
    for (const char* id : {"a", "b"}) ASSERT_TRUE((*store)->CreateSession(id, {}, 0).ok());
    retrieve_all_layers(**store, "a");
    retrieve_all_layers(**store, "b");
    const StoreStats stats = (*store)->Stats();
    if (mode == LongTermMode::kResident) {
      EXPECT_EQ(stats.resident_device_bytes, one);
      EXPECT_THAT((*store)->ResidentSessions(), ElementsAre("b"));
      EXPECT_EQ(stats.session_spills, 1);
    } else {
      EXPECT_EQ(stats.resident_device_bytes, 0u);
      EXPECT_THAT((*store)->ResidentSessions(), ElementsAre("b", "a"));
    }
  }
}

TEST(MemstoreStoreTest, IdempotencyRecordsAndValidation) {
  auto m = MakeTinyModel();
  auto store = OpenStore(*m, TempDir("idem"));
  ASSERT_TRUE(store->CreateSession("s", {}, 0).ok());
  absl::StatusOr<SessionHandle> h = store->Acquire("s");
  engine::InjectResult bad = MakeInject(m->config, 0, 0);
  bad.dropped[1][0] = bad.dropped[1][1];
  EXPECT_TRUE(absl::IsInvalidArgument(h->Commit(bad, 1)));
  bad = MakeInject(m->config, 0, 0);
  bad.delta[0].pop_back();
  EXPECT_TRUE(absl::IsInvalidArgument(h->Commit(bad, 1)));
  EXPECT_FALSE(h->FindRequest("r1")->has_value());
  ASSERT_TRUE(h->Commit(MakeInject(m->config, 0, 0), 9, "r1").ok());
  absl::StatusOr<std::optional<RequestRecord>> r = h->FindRequest("r1");
  ASSERT_TRUE(r.ok() && r->has_value());
  EXPECT_EQ((*r)->inject_count, 1);
  EXPECT_EQ((*r)->tokens, 9);
  EXPECT_EQ(h->info().inject_count, 1);
}

TEST(MemstoreStoreTest, ConcurrentSessions) {
  auto m = MakeTinyModel();
  auto store = OpenStore(*m, TempDir("threads"));
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    ASSERT_TRUE(store->CreateSession("t" + std::to_string(t), {}, t).ok());
  }
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int n = 0; n < 10; ++n) Inject(*store, "t" + std::to_string(t), t, n);
    });
  }
  for (auto& th : threads) th.join();
  for (int t = 0; t < 4; ++t) {
    EXPECT_EQ(store->GetSession("t" + std::to_string(t))->inject_count, 10);
  }
  EXPECT_EQ(store->Stats().commits, 40);
}

TEST(MemstoreStoreTest, RejectsOtherModel) {
  auto m = MakeTinyModel();
  const std::string path = TempDir("digest");
  { OpenStore(*m, path); }
  auto other = MakeTinyModel(engine::DType::kBF16);
  StoreOptions o;
  o.path = path;
  absl::StatusOr<std::unique_ptr<MemoryStore>> s =
      MemoryStore::Open(o, other->config, other->weights);
  EXPECT_TRUE(absl::IsFailedPrecondition(s.status())) << s.status();
}

void SetFormatVersion(const RawStore& raw, uint32_t version, rocksdb::WriteBatch* batch) {
  StoreMeta meta = raw.Meta();
  meta.format_version = version;
  batch->Put(raw.cf(kDefaultCf), MetaKey(), EncodeStoreMeta(meta));
}

// A store of format 1 (long-term records with float32 keys) as an earlier build left it: the
// store at `path`, closed, rewritten in place.
void RewriteAsFormatOne(const std::string& path, int64_t key_dim, engine::DType key_dtype) {
  RawStore raw(path, /*read_only=*/false);
  rocksdb::WriteBatch batch;
  int records = 0;
  std::unique_ptr<rocksdb::Iterator> it(
      raw.db()->NewIterator(rocksdb::ReadOptions(), raw.cf(kLtmCf)));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    // [v][session u64][layer u32][kind u8][seq u64]
    const std::string_view key = it->key().ToStringView();
    if (key.size() != 22 || static_cast<uint8_t>(key[13]) != kLtmEntry) continue;
    LongTermRecord r;
    ASSERT_TRUE(DecodeLongTermRecord(it->value().ToStringView(), key_dim, key_dtype, &r).ok());
    std::vector<float> f32(static_cast<size_t>(key_dim));
    engine::DTypeToFloats(r.key.data(), key_dtype, key_dim, f32.data());
    r.key.assign(reinterpret_cast<const char*>(f32.data()), f32.size() * sizeof(float));
    batch.Put(raw.cf(kLtmCf), it->key(), EncodeLongTermRecord(r));
    ++records;
  }
  EXPECT_GT(records, 0);
  SetFormatVersion(raw, 1, &batch);
  ASSERT_TRUE(raw.db()->Write(rocksdb::WriteOptions(), &batch).ok());
}

uint32_t StoredFormatVersion(const std::string& path) {
  return RawStore(path, /*read_only=*/true).Meta().format_version;
}

// bf16 checkpoints keep bf16 keys in long-term records (format 2); a format-1 store (float32
// keys) opens, is marked format 2 (so that the builds that wrote it refuse it from then on), and
// its sessions restore and go on bitwise as before.
TEST(MemstoreStoreTest, ReadsFormatOneStoresAndMarksThemCurrent) {
  auto m = MakeTinyModel(engine::DType::kBF16);
  const std::string path = TempDir("format1");
  const std::unique_ptr<BaseMemory> base = BaseMemory::Create(m->config, m->weights).value();
  ReferenceSession ref(*base);
  {
    auto store = OpenStore(*m, path);
    ASSERT_TRUE(store->CreateSession("old", {}, 0).ok());
    for (int n = 0; n < 9; ++n) Inject(*store, "old", 1, n, &ref);  // merges and evictions
  }
  const int64_t p = m->config.selector_hidden_dim;
  RewriteAsFormatOne(path, p, engine::DType::kBF16);
  ASSERT_EQ(StoredFormatVersion(path), 1u);
  {
    auto store = OpenStore(*m, path);
    absl::StatusOr<SessionHandle> h = store->Acquire("old");
    ASSERT_TRUE(h.ok()) << h.status();
    EXPECT_EQ(CompareWithReference(const_cast<ResidentSession&>(h->resident()), ref), "");
  }
  EXPECT_EQ(StoredFormatVersion(path), kFormatVersion);
  {
    auto store = OpenStore(*m, path);
    for (int n = 9; n < 12; ++n) Inject(*store, "old", 1, n, &ref);  // format-2 records beside
  }
  auto store = OpenStore(*m, path);
  absl::StatusOr<SessionHandle> h = store->Acquire("old");
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(CompareWithReference(const_cast<ResidentSession&>(h->resident()), ref), "");
  EXPECT_EQ(h->resident().long_term()->layer(0).key_bytes(), p * sizeof(uint16_t));
}

TEST(MemstoreStoreTest, RefusesStoresOfALaterFormat) {
  auto m = MakeTinyModel();
  const std::string path = TempDir("format3");
  { OpenStore(*m, path); }
  {
    RawStore raw(path, /*read_only=*/false);
    rocksdb::WriteBatch batch;
    SetFormatVersion(raw, kFormatVersion + 1, &batch);
    ASSERT_TRUE(raw.db()->Write(rocksdb::WriteOptions(), &batch).ok());
  }
  StoreOptions o;
  o.path = path;
  absl::StatusOr<std::unique_ptr<MemoryStore>> s = MemoryStore::Open(o, m->config, m->weights);
  EXPECT_TRUE(absl::IsFailedPrecondition(s.status())) << s.status();
  EXPECT_THAT(s.status().message(), HasSubstr("format version 3"));
}

// Flips bytes in the middle of every file whose name ends with `suffix`.
int CorruptFiles(const std::string& dir, const std::string& suffix) {
  int n = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (name.size() < suffix.size() ||
        name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0)
      continue;
    const auto size = std::filesystem::file_size(e.path());
    if (size < 64) continue;
    std::fstream f(e.path(), std::ios::in | std::ios::out | std::ios::binary);
    for (uint64_t off = size / 3; off < size / 3 + 64; ++off) {
      f.seekg(off);
      const char c = static_cast<char>(f.get());
      f.seekp(off);
      f.put(static_cast<char>(c ^ 0x5a));
    }
    ++n;
  }
  return n;
}

// Opens the store and restores every session: the corruption must surface as an error status.
absl::Status OpenAndReadAll(const testing::TinyModel& m, const std::string& path) {
  StoreOptions o;
  o.path = path;
  absl::StatusOr<std::unique_ptr<MemoryStore>> store = MemoryStore::Open(o, m.config, m.weights);
  if (!store.ok()) return store.status();
  for (const char* id : {"s0", "s1"}) {
    absl::StatusOr<SessionHandle> h = (*store)->Acquire(id);
    if (!h.ok()) return h.status();
  }
  return absl::OkStatus();
}

TEST(MemstoreStoreTest, CorruptedSstIsAClearError) {
  auto m = MakeTinyModel();
  const std::string path = TempDir("sst");
  {
    auto store = OpenStore(*m, path);
    for (const char* id : {"s0", "s1"}) {
      ASSERT_TRUE(store->CreateSession(id, {}, 0).ok());
      for (int n = 0; n < 12; ++n) Inject(*store, id, 1, n);
    }
    ASSERT_TRUE(store->Flush().ok());
  }
  ASSERT_GT(CorruptFiles(path, ".sst"), 0);
  const absl::Status s = OpenAndReadAll(*m, path);
  EXPECT_TRUE(absl::IsDataLoss(s)) << s;
  EXPECT_THAT(s.message(), HasSubstr("Corruption"));
}

TEST(MemstoreStoreTest, CorruptedWalIsAClearError) {
  auto m = MakeTinyModel();
  const std::string path = TempDir("wal");
  {
    auto store = OpenStore(*m, path);
    for (const char* id : {"s0", "s1"}) {
      ASSERT_TRUE(store->CreateSession(id, {}, 0).ok());
      for (int n = 0; n < 12; ++n) Inject(*store, id, 1, n);
    }
  }
  ASSERT_GT(CorruptFiles(path, ".log"), 0);
  const absl::Status s = OpenAndReadAll(*m, path);
  EXPECT_TRUE(absl::IsDataLoss(s)) << s;
  EXPECT_THAT(s.message(), HasSubstr("Corruption"));
}

}  // namespace
}  // namespace mplus::memstore
