#include "memstore/resident_session.h"

#include <algorithm>
#include <cstring>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "common/parallel_for.h"
#include "engine/status_macros.h"
#include "memstore/byte_codec.h"
#include "memstore/rocks_util.h"
#include "rocksdb/write_batch.h"

namespace mplus::memstore {
ResidentSession::ResidentSession(const StoreHandles& store, const SessionRecord& record)
    : store_(store), base_(*store.base), record_(record) {}

absl::StatusOr<std::unique_ptr<ResidentSession>> ResidentSession::Load(
    const StoreHandles& store, const SessionRecord& record) {
  std::unique_ptr<ResidentSession> s(new ResidentSession(store, record));
  if (static_cast<int>(record.next_ltm_seq.size()) != s->base_.num_layers()) {
    return absl::DataLossError(
        absl::StrCat("memstore: session ", record.id, ": record has the wrong number of layers"));
  }
  absl::Status st = s->LoadShortTerm();
  if (st.ok()) st = s->LoadLongTerm();
  if (!st.ok()) return st;
  return s;
}

absl::Status ResidentSession::ReadTokens(absl::Span<const uint64_t> ids, uint8_t* out_rows) const {
  // Base tokens come from the checkpoint (on several threads: a restore copies up to 100 MB a
  // layer), the others from the database, by sorted keys so MultiGet walks each block once.
  std::vector<size_t> from_base;
  std::vector<std::pair<uint64_t, size_t>> order;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (IsBaseToken(ids[i])) {
      from_base.push_back(i);
    } else {
      order.push_back({ids[i], i});
    }
  }
  const int64_t rows_per_thread = std::max<int64_t>(1, (int64_t{1} << 20) / base_.row_bytes());
  ParallelFor(static_cast<int64_t>(from_base.size()), rows_per_thread, [&](int64_t b, int64_t e) {
    for (int64_t j = b; j < e; ++j) {
      base_.CopyRow(ids[from_base[j]], out_rows + from_base[j] * base_.row_bytes());
    }
  });
  if (order.empty()) return absl::OkStatus();
  std::sort(order.begin(), order.end());
  std::vector<std::string> keys(order.size());
  std::vector<rocksdb::Slice> slices(order.size());
  for (size_t i = 0; i < order.size(); ++i) {
    keys[i] = TokenKey(record_.number, order[i].first);
    slices[i] = keys[i];
  }
  // Runs of the sorted keys on several threads: a retrieval reads thousands of rows, and each
  // thread's lookups and copies overlap the others' (cold reads keep more I/O in flight).
  constexpr int64_t kKeysPerThread = 256;
  const size_t row_bytes = base_.row_bytes();
  std::vector<rocksdb::PinnableSlice> values(order.size());
  std::vector<rocksdb::Status> statuses(order.size());
  std::vector<size_t> sizes(order.size());
  ParallelFor(static_cast<int64_t>(order.size()), kKeysPerThread, [&](int64_t b, int64_t e) {
    store_.db->MultiGet(rocksdb::ReadOptions(), store_.cf[kTokensCf], e - b, slices.data() + b,
                        values.data() + b, statuses.data() + b, /*sorted_input=*/true);
    for (int64_t i = b; i < e; ++i) {
      sizes[i] = values[i].size();
      if (statuses[i].ok() && sizes[i] == row_bytes) {
        std::memcpy(out_rows + order[i].second * row_bytes, values[i].data(), row_bytes);
      }
      values[i].Reset();  // unpins its block once copied
    }
  });
  for (size_t i = 0; i < order.size(); ++i) {
    if (!statuses[i].ok()) {
      return FromRocks(statuses[i],
                       absl::StrCat("session ", record_.id, ": token ", order[i].first));
    }
    if (sizes[i] != row_bytes) {
      return absl::DataLossError(absl::StrCat("memstore: session ", record_.id, ": token ",
                                              order[i].first, " has ", sizes[i],
                                              " bytes, expected ", row_bytes));
    }
  }
  return absl::OkStatus();
}

absl::Status ResidentSession::LoadShortTerm() {
  const int L = base_.num_layers();
  const int64_t N = base_.config().stm_tokens();
  stm_.resize(L);
  stm_rows_.resize(L);
  for (int l = 0; l < L; ++l) {
    std::string v;
    rocksdb::Status s =
        store_.db->Get(rocksdb::ReadOptions(), store_.cf[kStmCf], StmKey(record_.number, l), &v);
    if (s.IsNotFound() && record_.inject_count == 0) {
      stm_[l].ids.resize(N);
      stm_[l].ages.assign(N, 0);  // the checkpoint's short-term memory has age 0
      for (int64_t i = 0; i < N; ++i) stm_[l].ids[i] = BaseShortTermId(l, i);
    } else if (!s.ok()) {
      return FromRocks(s, absl::StrCat("session ", record_.id, ": short-term list of layer ", l));
    } else {
      absl::StatusOr<ShortTermList> list = DecodeShortTermList(v, N);
      if (!list.ok()) return list.status();
      stm_[l] = *std::move(list);
    }
    stm_rows_[l] = ShortTermPool(N, base_.row_bytes());
    MPLUS_RETURN_IF_ERROR(ReadTokens(stm_[l].ids, stm_rows_[l].initial_rows()));
  }
  return absl::OkStatus();
}

absl::Status ResidentSession::LoadLongTerm() {
  if (!base_.config().has_long_term()) return absl::OkStatus();
  const int L = base_.num_layers();
  ltm_ = std::make_unique<LongTermMemory>(base_.long_term_params(), L);
  retriever_ =
      std::make_unique<LongTermRetriever>(store_.ltm_mode, store_.offload_device_min_queries);
  ltm_->set_update_step(record_.update_step);
  ltm_slots_.assign(L, {});
  ltm_meta_.assign(L, {});
  // Layers on several threads: each reads its own key range (mplus-8b: ~150k entries a layer).
  std::vector<absl::Status> loaded(static_cast<size_t>(L));
  ParallelFor(L, 1, [&](int64_t first, int64_t last) {
    for (int64_t l = first; l < last; ++l) loaded[l] = LoadLongTermLayer(static_cast<int>(l));
  });
  for (const absl::Status& s : loaded) MPLUS_RETURN_IF_ERROR(s);
  return absl::OkStatus();
}

absl::Status ResidentSession::LoadLongTermLayer(int l) {
  const int64_t K = base_.config().num_tokens, p = base_.config().selector_hidden_dim;
  const int64_t age_shift = K * record_.inject_count;
  auto corrupt = [&](std::string_view why) {
    return absl::DataLossError(absl::StrCat("memstore: session ", record_.id,
                                            ": long-term memory of layer ", l, ": ",
                                            std::string(why)));
  };
  LongTermRecord entry;  // reused for every record of the layer
  const int64_t n0 = base_.long_term_size(l);
  const std::string prefix = LtmLayerPrefix(record_.number, l);
  std::unique_ptr<rocksdb::Iterator> it(
      store_.db->NewIterator(rocksdb::ReadOptions(), store_.cf[kLtmCf]));
  // The layer's rows in key order: its meta, its session entries by seq, then the checkpoint
  // entries it evicted. Those go first in storage order, so a first pass reads the meta and
  // the evictions and the second adds the session entries straight from the database.
  std::optional<LongTermLayerMeta> meta;
  absl::flat_hash_set<uint64_t> evicted_base;
  for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix);) {
    ByteReader r(std::string_view(it->key().data(), it->key().size()).substr(prefix.size()));
    const uint8_t kind = r.U8();
    if (kind == kLtmLayerMeta && r.done()) {
      absl::StatusOr<LongTermLayerMeta> m = DecodeLongTermLayerMeta(it->value().ToStringView());
      if (!m.ok()) return m.status();
      meta = *std::move(m);
      it->Next();
      continue;
    }
    const uint64_t seq = r.U64();
    if (!r.done()) return corrupt("malformed key");
    if (kind == kLtmEntry) {
      it->Seek(LtmKey(record_.number, l, kLtmBaseEvicted, 0));  // past them: the second pass's
      continue;
    }
    if (kind != kLtmBaseEvicted || static_cast<int64_t>(seq) >= n0) {
      return corrupt("unknown row");
    }
    evicted_base.insert(seq);
    it->Next();
  }
  if (!it->status().ok()) return FromRocks(it->status(), "reading long-term memory");
  const uint64_t merged_end = meta ? meta->merged_end : static_cast<uint64_t>(n0);
  // Merged recall frequencies: from the runs once a merge happened, else the checkpoint's.
  std::vector<double> merged_rf;
  if (meta) {
    for (const auto& [count, rf] : meta->rf_runs) merged_rf.insert(merged_rf.end(), count, rf);
  }
  size_t merged_index = 0;
  LongTermLayer& layer = ltm_->layer(l);
  // The record counts every layer's entries; layers hold about as many each. Room for the
  // pending entries of one merge period on top: an exact fit would make the next inject move
  // the whole layer (mplus-8b: 77 MB of keys a layer) to grow it.
  const LongTermParams& params = ltm_->params();
  const int64_t expected = std::max<int64_t>(n0 - static_cast<int64_t>(evicted_base.size()),
                                             record_.ltm_tokens / base_.num_layers()) +
                           params.tokens_per_inject * params.update_ltm_frequency;
  layer.Reserve(expected);
  ltm_slots_[l].reserve(static_cast<size_t>(expected));
  auto add = [&](uint64_t seq, uint64_t id, LongTermLayer::StoredKey key, int64_t age,
                 double initial_rf, double pending_rf) -> absl::Status {
    if (seq < merged_end) {
      if (meta && merged_index >= merged_rf.size()) return corrupt("too few frequencies");
      layer.AddMerged(id, key, age, meta ? merged_rf[merged_index] : initial_rf);
      ++merged_index;
    } else {
      layer.AddPending(id, key, age, pending_rf);
    }
    ltm_slots_[l].push_back({seq, id});
    return absl::OkStatus();
  };
  for (int64_t i = 0; i < n0; ++i) {
    if (evicted_base.contains(i)) continue;
    const double rf = base_.InitialRecallFrequency(l, i);
    MPLUS_RETURN_IF_ERROR(add(i, BaseLongTermId(l, i), base_.LongTermKey(l, i),
                              base_.InitialAge(l, i) + age_shift, rf, rf));
  }
  const std::string entries = prefix + static_cast<char>(kLtmEntry);
  for (it->Seek(entries); it->Valid() && it->key().starts_with(entries); it->Next()) {
    ByteReader r(std::string_view(it->key().data(), it->key().size()).substr(entries.size()));
    const uint64_t seq = r.U64();
    if (!r.done() || static_cast<int64_t>(seq) < n0) return corrupt("malformed entry key");
    if (!meta && seq < merged_end) return corrupt("merged entry without frequencies");
    MPLUS_RETURN_IF_ERROR(
        DecodeLongTermRecord(it->value().ToStringView(), p, ltm_->params().key_dtype, &entry));
    MPLUS_RETURN_IF_ERROR(add(seq, entry.token_id, {entry.key.data()}, entry.age_base + age_shift,
                              0.0, entry.pending_recall_frequency));
  }
  if (!it->status().ok()) return FromRocks(it->status(), "reading long-term memory");
  if (meta && merged_index != merged_rf.size()) return corrupt("frequency count mismatch");
  ltm_meta_[l] = meta ? *meta : LayerMeta(l, ltm_slots_[l], record_.next_ltm_seq[l]);
  return absl::OkStatus();
}

LongTermLayerMeta ResidentSession::LayerMeta(int l, const std::vector<LongTermSlot>& slots,
                                             uint64_t next_seq) const {
  const LongTermLayer& layer = ltm_->layer(l);
  LongTermLayerMeta m;
  const int64_t merged = layer.merged_count();
  m.merged_end = merged < layer.size() ? slots[merged].seq : next_seq;
  for (int64_t i = 0; i < merged; ++i) {
    const double rf = layer.entries()[i].recall_frequency;
    if (!m.rf_runs.empty() && std::memcmp(&m.rf_runs.back().second, &rf, sizeof rf) == 0) {
      ++m.rf_runs.back().first;
    } else {
      m.rf_runs.push_back({1, rf});
    }
  }
  return m;
}

engine::ShortTermRows ResidentSession::ShortTerm(int layer) const {
  return stm_rows_[layer].View(base_.storage_dtype(), base_.hidden());
}

absl::StatusOr<std::vector<uint64_t>> ResidentSession::SelectLongTerm(
    int layer, engine::RetrievalQueries& queries) {
  if (ltm_ == nullptr) return absl::FailedPreconditionError("model has no long-term memory");
  return retriever_->SelectTokenIds(*ltm_, layer, queries);
}

absl::Status ResidentSession::ReadLongTerm(absl::Span<const uint64_t> ids, void* out) {
  return ReadTokens(ids, static_cast<uint8_t*>(out));
}

size_t ResidentSession::ResidentBytes() const {
  size_t bytes = sizeof(*this) + prefix_cache_.bytes(engine::Device::kCpu);
  for (size_t l = 0; l < stm_.size(); ++l) {
    bytes += stm_rows_[l].bytes() + stm_[l].ids.size() * (sizeof(uint64_t) + sizeof(int32_t));
  }
  if (ltm_) {
    for (int l = 0; l < ltm_->num_layers(); ++l) {
      bytes += ltm_->layer(l).keys_bytes() +
               ltm_->layer(l).entries().size() * (sizeof(LongTermEntry) + sizeof(LongTermSlot));
    }
  }
  return bytes;
}

size_t ResidentSession::DeviceBytes() const {
  return prefix_cache_.bytes(engine::Device::kCuda) + (retriever_ ? retriever_->device_bytes() : 0);
}

}  // namespace mplus::memstore
