#include "memstore/snapshot.h"

#include <chrono>

#include "absl/strings/str_cat.h"
#include "memstore/byte_codec.h"
#include "memstore/rocks_util.h"

namespace mplus::memstore {
namespace {

constexpr char kMagic[4] = {'M', 'P', 'S', 'N'};
constexpr size_t kChunkHeaderBytes = 4 + 4 + 4 + 1 + 4;
enum ChunkKind : uint8_t { kHeaderChunk = 1, kDataChunk = 2, kTrailerChunk = 3 };
constexpr int kDataCfs[] = {kTokensCf, kStmCf, kLtmCf, kRequestsCf};

std::string MakeChunk(uint32_t index, ChunkKind kind, std::string_view payload) {
  std::string c(kMagic, 4);
  ByteWriter w(&c);
  w.U32(kSnapshotVersion);
  w.U32(index);
  w.U8(kind);
  w.U32(static_cast<uint32_t>(payload.size()));
  w.Raw(payload.data(), payload.size());
  w.U32(Crc32c(c.data(), c.size()));
  return c;
}

}  // namespace

absl::Status MemoryStore::ExportSession(std::string_view id,
                                        const std::function<absl::Status(std::string_view)>& sink) {
  // Hold the session like a handle does, so no inject lands mid-export.
  std::shared_ptr<Slot> slot = PinAndLock(id);
  const rocksdb::Snapshot* snap = db_->GetSnapshot();
  auto run = [&]() -> absl::Status {
    absl::StatusOr<SessionRecord> rec = ReadRecord(id, snap);
    if (!rec.ok()) return rec.status();
    uint32_t index = 0;
    std::string payload;
    ByteWriter(&payload).U64(digest_);
    ByteWriter(&payload).Bytes(EncodeSessionRecord(*rec));
    absl::Status s = sink(MakeChunk(index++, kHeaderChunk, payload));
    if (!s.ok()) return s;
    payload.clear();
    uint64_t records = 0;
    const std::string prefix = SessionPrefix(rec->number);
    rocksdb::ReadOptions ro;
    ro.snapshot = snap;
    for (int cf : kDataCfs) {
      std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ro, cf_[cf]));
      for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) {
        ByteWriter w(&payload);
        w.U8(static_cast<uint8_t>(cf));
        w.Bytes(it->key().ToStringView().substr(prefix.size()));
        w.Bytes(it->value().ToStringView());
        ++records;
        if (payload.size() >= kSnapshotChunkBytes - 64 * 1024) {
          s = sink(MakeChunk(index++, kDataChunk, payload));
          if (!s.ok()) return s;
          payload.clear();
        }
      }
      if (!it->status().ok()) return FromRocks(it->status(), "exporting session");
    }
    if (!payload.empty()) {
      s = sink(MakeChunk(index++, kDataChunk, payload));
      if (!s.ok()) return s;
      payload.clear();
    }
    ByteWriter w(&payload);
    w.U64(records);
    w.U32(index + 1);
    return sink(MakeChunk(index, kTrailerChunk, payload));
  };
  const absl::Status s = run();
  db_->ReleaseSnapshot(snap);
  UnlockAndUnpin(slot);
  return s;
}

absl::StatusOr<std::unique_ptr<SessionImport>> MemoryStore::BeginImport(std::string_view new_id) {
  absl::Status s = ValidateSessionId(new_id);
  if (!s.ok()) return s;
  absl::MutexLock lock(&create_mu_);
  absl::StatusOr<SessionRecord> existing = ReadRecord(new_id);
  if (existing.ok()) {
    return absl::AlreadyExistsError(absl::StrCat("session \"", std::string(new_id), "\" exists"));
  }
  if (!absl::IsNotFound(existing.status())) return existing.status();
  absl::StatusOr<uint64_t> number = AllocateSessionNumber();
  if (!number.ok()) return number.status();
  return std::unique_ptr<SessionImport>(new SessionImport(this, std::string(new_id), *number));
}

absl::StatusOr<SessionInfo> MemoryStore::ImportSession(std::string_view new_id,
                                                       const std::vector<std::string>& chunks) {
  absl::StatusOr<std::unique_ptr<SessionImport>> import = BeginImport(new_id);
  if (!import.ok()) return import.status();
  for (const std::string& c : chunks) {
    absl::Status s = (*import)->AddChunk(c);
    if (!s.ok()) return s;
  }
  return (*import)->Finish();
}

SessionImport::SessionImport(MemoryStore* store, std::string id, uint64_t number)
    : store_(store), id_(std::move(id)), number_(number) {}

SessionImport::~SessionImport() {
  if (!finished_) store_->DeleteRows(number_).IgnoreError();  // best effort; Open collects rest
}

absl::Status SessionImport::FlushBatch() {
  if (batch_.Count() == 0) return absl::OkStatus();
  rocksdb::WriteOptions wo;  // durability comes with the final, synced record write
  const absl::Status s = FromRocks(store_->db_->Write(wo, &batch_), "importing session");
  batch_.Clear();
  return s;
}

absl::Status SessionImport::AddChunk(std::string_view chunk) {
  const std::string where = absl::StrCat("snapshot chunk ", next_index_, ": ");
  if (finished_ || have_trailer_) {
    return absl::InvalidArgumentError(where + "chunk after the end of the snapshot");
  }
  if (chunk.size() < kChunkHeaderBytes + 4 || chunk.substr(0, 4) != std::string_view(kMagic, 4)) {
    return absl::InvalidArgumentError(where + "not a memstore snapshot chunk");
  }
  ByteReader r(chunk.substr(4));
  const uint32_t version = r.U32();
  if (version < kOldestReadableSnapshotVersion || version > kSnapshotVersion) {
    return absl::FailedPreconditionError(
        absl::StrCat(where, "snapshot format version ", version, ", this build reads versions ",
                     kOldestReadableSnapshotVersion, " to ", kSnapshotVersion));
  }
  const uint32_t index = r.U32();
  const uint8_t kind = r.U8();
  const uint32_t length = r.U32();
  if (chunk.size() != kChunkHeaderBytes + length + 4) {
    return absl::DataLossError(where + "truncated or oversized chunk");
  }
  ByteReader crc_reader(chunk.substr(chunk.size() - 4));
  if (Crc32c(chunk.data(), chunk.size() - 4) != crc_reader.U32()) {
    return absl::DataLossError(where + "checksum mismatch (the snapshot is corrupted)");
  }
  if (index != next_index_) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, "got chunk ", index, " (chunks lost or out of order)"));
  }
  ++next_index_;
  ByteReader p(chunk.substr(kChunkHeaderBytes, length));
  if (!have_header_) {
    if (kind != kHeaderChunk) return absl::InvalidArgumentError(where + "missing header");
    const uint64_t digest = p.U64();
    const std::string_view rec = p.Bytes();
    if (!p.done()) return absl::DataLossError(where + "malformed header");
    if (digest != store_->model_digest()) {
      return absl::FailedPreconditionError(
          "snapshot was taken with a different model configuration than this server's");
    }
    absl::StatusOr<SessionRecord> r = DecodeSessionRecord(rec);
    if (!r.ok()) return r.status();
    if (static_cast<int>(r->next_ltm_seq.size()) != store_->base().num_layers()) {
      return absl::DataLossError(where + "session record has the wrong number of layers");
    }
    record_ = *std::move(r);
    have_header_ = true;
    return absl::OkStatus();
  }
  if (kind == kTrailerChunk) {
    const uint64_t records = p.U64();
    const uint32_t chunks = p.U32();
    if (!p.done() || records != records_ || chunks != next_index_) {
      return absl::DataLossError(where + "trailer does not match the chunks received");
    }
    have_trailer_ = true;
    return FlushBatch();
  }
  if (kind != kDataChunk) return absl::InvalidArgumentError(where + "unknown chunk kind");
  const std::string prefix = SessionPrefix(number_);
  while (p.ok() && p.remaining() > 0) {
    const uint8_t cf = p.U8();
    const std::string_view key = p.Bytes();
    const std::string_view value = p.Bytes();
    if (!p.ok() || (cf != kTokensCf && cf != kStmCf && cf != kLtmCf && cf != kRequestsCf)) {
      return absl::DataLossError(where + "malformed record");
    }
    batch_.Put(store_->cf_[cf], prefix + std::string(key), value);
    ++records_;
  }
  if (batch_.GetDataSize() >= 8 * kSnapshotChunkBytes) return FlushBatch();
  return absl::OkStatus();
}

absl::StatusOr<SessionInfo> SessionImport::Finish() {
  if (!have_trailer_) {
    return absl::InvalidArgumentError("snapshot incomplete: the trailer chunk never arrived");
  }
  absl::MutexLock lock(&store_->create_mu_);
  absl::StatusOr<SessionRecord> existing = store_->ReadRecord(id_);
  if (existing.ok()) return absl::AlreadyExistsError(absl::StrCat("session \"", id_, "\" exists"));
  SessionRecord rec = record_;
  rec.id = id_;
  rec.number = number_;
  rec.updated_micros = NowMicros();
  rocksdb::WriteBatch batch;
  batch.Put(store_->cf_[kSessionsCf], SessionKey(id_), EncodeSessionRecord(rec));
  // The synced record write also makes the unsynced row batches before it durable.
  rocksdb::WriteOptions wo = store_->handles_.write_options;
  wo.sync = true;
  absl::Status s = FromRocks(store_->db_->Write(wo, &batch), "importing session");
  if (!s.ok()) return s;
  finished_ = true;
  {
    absl::MutexLock stats(&store_->mu_);
    ++store_->total_sessions_;
    store_->ltm_tokens_ += rec.ltm_tokens;
  }
  absl::StatusOr<SessionInfo> info = store_->GetSession(id_);
  return info;
}

}  // namespace mplus::memstore
