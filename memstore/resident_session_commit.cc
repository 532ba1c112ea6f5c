// ResidentSession::StageCommit and FinishBatch: one inject → applied in RAM + one WriteBatch to
// make it durable.
#include <cstring>
#include <memory>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "common/parallel_for.h"
#include "memstore/resident_session.h"
#include "rocksdb/write_batch.h"

namespace mplus::memstore {

absl::Status ResidentSession::CheckResult(const engine::InjectResult& r) const {
  const engine::ModelConfig& c = base_.config();
  const size_t L = base_.num_layers();
  const int64_t K = c.num_tokens, N = c.stm_tokens(), d = c.hidden_size;
  if (r.delta.size() != L || r.dropped.size() != L ||
      (c.has_long_term() && r.dropped_keys.size() != L)) {
    return absl::InvalidArgumentError(
        absl::StrCat("inject result must have ", L, " layers of delta, dropped slots and keys"));
  }
  for (size_t l = 0; l < L; ++l) {
    if (static_cast<int64_t>(r.delta[l].size()) != K * d) {
      return absl::InvalidArgumentError(absl::StrCat("layer ", l, ": delta has ", r.delta[l].size(),
                                                     " floats, expected ", K * d));
    }
    if (absl::Status st = CheckDroppedSlots(r.dropped[l], N, K); !st.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("layer ", l, ": ", st.message()));
    }
    if (c.has_long_term() &&
        static_cast<int64_t>(r.dropped_keys[l].size()) != K * c.selector_hidden_dim) {
      return absl::InvalidArgumentError(absl::StrCat("layer ", l, ": dropped keys have ",
                                                     r.dropped_keys[l].size(), " floats, expected ",
                                                     K * c.selector_hidden_dim));
    }
  }
  return absl::OkStatus();
}

absl::Status ResidentSession::StageCommit(const engine::InjectResult& result,
                                          int64_t tokens_in_chunk,
                                          std::optional<std::string_view> request_id,
                                          int64_t now_micros, rocksdb::WriteBatch* out_batch,
                                          int64_t* evicted_ltm_tokens) {
  absl::Status st = CheckResult(result);
  if (!st.ok()) return st;
  prefix_cache_.OnInject(result.dropped);  // the short-term memory is about to change
  const engine::ModelConfig& c = base_.config();
  const int L = base_.num_layers();
  const int64_t K = c.num_tokens;
  const uint64_t number = record_.number;
  SessionRecord rec = record_;
  rec.inject_count += 1;
  rec.injected_tokens += tokens_in_chunk;
  rec.updated_micros = now_micros;
  out_batch->Clear();  // keeps its buffer: a reused batch costs no fresh pages
  rocksdb::WriteBatch& batch = *out_batch;
  auto* tokens_cf = store_.cf[kTokensCf];
  auto* ltm_cf = store_.cf[kLtmCf];

  // New tokens' ids (their rows go into the batch in FinishBatch, from the pool).
  std::vector<std::vector<uint64_t>> new_ids(L);
  for (int l = 0; l < L; ++l) {
    new_ids[l].resize(static_cast<size_t>(K));
    for (uint64_t& id : new_ids[l]) id = rec.next_token_id++;
  }

  // Dropped tokens leave short-term memory: into long-term memory (M+) or gone (MemoryLLM).
  std::vector<DroppedTokens> dropped(L);
  for (int l = 0; l < L; ++l) {
    for (int32_t slot : result.dropped[l]) {
      dropped[l].token_ids.push_back(stm_[l].ids[slot]);
      dropped[l].stm_ages.push_back(stm_[l].ages[slot]);
    }
    if (ltm_) {
      dropped[l].keys = result.dropped_keys[l];
    } else {
      for (uint64_t id : dropped[l].token_ids) {
        if (!IsBaseToken(id)) batch.Delete(tokens_cf, TokenKey(number, id));
      }
    }
  }

  int64_t evicted_total = 0;
  if (ltm_) {
    // From here on the in-RAM long-term index (and the slots beside it, updated in place) is
    // ahead of the database until the write succeeds; a failure drops the session's RAM state.
    const std::vector<std::vector<uint64_t>> evicted = ltm_->ApplyInject(dropped);
    rec.update_step = ltm_->update_step();
    rec.ltm_tokens = 0;
    for (int l = 0; l < L; ++l) {
      const int64_t n0 = base_.long_term_size(l);
      std::vector<LongTermSlot>& slots = ltm_slots_[l];
      if (!evicted[l].empty()) {  // only at merges: between them this stays O(K), not O(entries)
        const absl::flat_hash_set<uint64_t> gone(evicted[l].begin(), evicted[l].end());
        evicted_total += static_cast<int64_t>(evicted[l].size());
        size_t kept = 0;
        for (const LongTermSlot& s : slots) {
          if (!gone.contains(s.token_id)) {
            slots[kept++] = s;
            continue;
          }
          if (static_cast<int64_t>(s.seq) < n0) {
            batch.Put(ltm_cf, LtmKey(number, l, kLtmBaseEvicted, s.seq), "");
          } else {
            batch.Delete(ltm_cf, LtmKey(number, l, kLtmEntry, s.seq));
          }
          if (!IsBaseToken(s.token_id)) batch.Delete(tokens_cf, TokenKey(number, s.token_id));
        }
        slots.resize(kept);
      }
      const LongTermLayer& layer = ltm_->layer(l);
      const size_t first_new = slots.size();
      if (first_new + dropped[l].token_ids.size() != layer.entries().size()) {
        return absl::InternalError(
            absl::StrCat("memstore: layer ", l, ": long-term index changed unexpectedly"));
      }
      for (size_t j = 0; j < dropped[l].token_ids.size(); ++j) {
        const LongTermEntry& e = layer.entries()[first_new + j];
        if (e.token_id != dropped[l].token_ids[j]) {
          return absl::InternalError(
              absl::StrCat("memstore: layer ", l, ": long-term entry order mismatch"));
        }
        slots.push_back({rec.next_ltm_seq[l]++, e.token_id});  // its record: FinishBatch
      }
      rec.ltm_tokens += layer.size();
    }
    // A layer's meta (merged entries' end and recall frequencies) changes only when the pending
    // entries merge: appended pending entries start where the merged ones end either way.
    if (rec.update_step == 0) {
      for (int l = 0; l < L; ++l) {
        LongTermLayerMeta meta = LayerMeta(l, ltm_slots_[l], rec.next_ltm_seq[l]);
        if (!SameLayerMeta(meta, ltm_meta_[l])) {
          batch.Put(ltm_cf, LtmKey(number, l, kLtmLayerMeta, 0), EncodeLongTermLayerMeta(meta));
          ltm_meta_[l] = std::move(meta);
        }
      }
    }
  }

  // Nothing fails from here on: the in-RAM state is updated in place.
  // New short-term lists: kept slots in order, then the new tokens (ages K-1 .. 0).
  std::vector<int32_t> new_ages(static_cast<size_t>(K));
  for (int64_t j = 0; j < K; ++j) new_ages[j] = static_cast<int32_t>(K - 1 - j);
  for (int l = 0; l < L; ++l) {
    ShortTermList& s = stm_[l];
    ReplaceSlots<uint64_t>(s.ids, result.dropped[l], new_ids[l]);
    ReplaceSlots<int32_t>(s.ages, result.dropped[l], new_ages);
  }

  batch.Put(store_.cf[kSessionsCf], SessionKey(rec.id), EncodeSessionRecord(rec));
  if (request_id) {
    RequestRecord q{rec.inject_count, tokens_in_chunk, now_micros};
    batch.Put(store_.cf[kRequestsCf], RequestKey(number, *request_id), EncodeRequestRecord(q));
  }

  // The new tokens' rows take the dropped ones' places in the short-term pools, narrowed to the
  // storage dtype there (FinishBatch copies them from the pool: what a reload reads, bit for bit).
  ParallelFor(L, 1, [&](int64_t first, int64_t last) {
    for (int64_t l = first; l < last; ++l)
      stm_rows_[l].Replace(result.dropped[l], result.delta[l].data(), base_.storage_dtype());
  });
  record_ = std::move(rec);
  if (evicted_ltm_tokens) *evicted_ltm_tokens = evicted_total;
  return absl::OkStatus();
}

void ResidentSession::FinishBatch(rocksdb::WriteBatch* batch) const {
  const engine::ModelConfig& c = base_.config();
  const int64_t K = c.num_tokens, first_new_slot = c.stm_tokens() - K;
  const size_t row_bytes = base_.row_bytes();
  const uint64_t number = record_.number;
  for (int l = 0; l < base_.num_layers(); ++l) {
    const ShortTermList& s = stm_[l];
    for (int64_t slot = first_new_slot; slot < first_new_slot + K; ++slot) {
      batch->Put(store_.cf[kTokensCf], TokenKey(number, s.ids[slot]),
                 rocksdb::Slice(reinterpret_cast<const char*>(stm_rows_[l].row(slot)), row_bytes));
    }
    batch->Put(store_.cf[kStmCf], StmKey(number, l), EncodeShortTermList(s));
    if (!ltm_) continue;
    // The K tokens this inject moved are the layer's last entries (checked by StageCommit).
    const LongTermLayer& layer = ltm_->layer(l);
    const std::vector<LongTermSlot>& slots = ltm_slots_[l];
    LongTermRecord r;
    for (size_t i = layer.entries().size() - static_cast<size_t>(K); i < layer.entries().size();
         ++i) {
      const LongTermEntry& e = layer.entries()[i];
      r.token_id = e.token_id;
      r.age_base = e.age - K * record_.inject_count;
      r.pending_recall_frequency = e.recall_frequency;
      r.key.assign(static_cast<const char*>(layer.key(i)), layer.key_bytes());
      batch->Put(store_.cf[kLtmCf], LtmKey(number, l, kLtmEntry, slots[i].seq),
                 EncodeLongTermRecord(r));
    }
  }
}

}  // namespace mplus::memstore
