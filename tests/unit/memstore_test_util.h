// Shared by the memstore tests: a small synthetic M+ / MemoryLLM checkpoint held in RAM,
// deterministic synthetic inject results, and an independent in-RAM replay of the same injects
// to compare a stored session against, bit for bit.
#ifndef MPLUS_TESTS_UNIT_MEMSTORE_TEST_UTIL_H_
#define MPLUS_TESTS_UNIT_MEMSTORE_TEST_UTIL_H_

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "engine/dtype.h"
#include "engine/model_config.h"
#include "engine/model_weights.h"
#include "engine/session_memory.h"
#include "gtest/gtest.h"
#include "memstore/base_memory.h"
#include "memstore/long_term_index.h"
#include "memstore/resident_session.h"
#include "tests/temp_dir.h"

namespace mplus::memstore::testing {

struct TinyModel {
  engine::ModelConfig config;
  engine::ModelWeights weights;
  std::vector<std::unique_ptr<std::vector<uint8_t>>> buffers;  // backing the views
};

inline engine::TensorView MakeTensor(TinyModel& m, const std::string& name, engine::DType dtype,
                                     std::vector<int64_t> shape, const std::vector<float>& v) {
  auto buf = std::make_unique<std::vector<uint8_t>>(v.size() * engine::DTypeSize(dtype));
  engine::FloatsToDType(v.data(), static_cast<int64_t>(v.size()), dtype, buf->data());
  engine::TensorView t;
  t.name = name;
  t.dtype = dtype;
  t.shape = std::move(shape);
  t.data = buf->data();
  t.nbytes = buf->size();
  m.buffers.push_back(std::move(buf));
  return t;
}

// L layers, d 16, K 4, N 12, K_ltm 8, p 6, 10 initial long-term entries per layer, merge every
// 3 injects, recall frequency 2 decaying by 1: evictions start after a few merges.
inline std::unique_ptr<TinyModel> MakeTinyModel(engine::DType dtype = engine::DType::kF32,
                                                bool mplus = true, int layers = 2,
                                                int64_t update_ltm_frequency = 3) {
  auto m = std::make_unique<TinyModel>();
  engine::ModelConfig& c = m->config;
  c.kind = mplus ? engine::ModelKind::kMPlus : engine::ModelKind::kMemoryLLM;
  c.dtype = dtype;
  c.num_hidden_layers = layers;
  c.hidden_size = 16;
  c.num_tokens = 4;
  c.num_blocks = 5;
  c.num_ltm_blocks = mplus ? 2 : 0;
  if (mplus) {
    c.selector_hidden_dim = 6;
    c.ltm_initial_size = 10;
    c.update_ltm_frequency = update_ltm_frequency;
    c.decay_frequency = 1;
    c.initial_rf_when_moving_stm_to_ltm = 2;
  }
  std::mt19937 rng(1234);
  std::normal_distribution<float> normal;
  auto randn = [&](size_t n) {
    std::vector<float> v(n);
    for (float& x : v) x = normal(rng);
    return v;
  };
  const int64_t N = c.stm_tokens(), d = c.hidden_size;
  m->weights.memory = MakeTensor(*m, "memory", dtype, {layers, N, d}, randn(layers * N * d));
  if (mplus) {
    const int64_t n0 = c.ltm_initial_size, p = c.selector_hidden_dim;
    for (int l = 0; l < layers; ++l) {
      std::vector<float> ages(n0), rfs(n0);
      for (int64_t i = 0; i < n0; ++i) {
        ages[i] = static_cast<float>(100 + (i * 7) % 5) + 0.75f;  // ties, truncated on read
        rfs[i] = 0.5f + static_cast<float>(i % 4);
      }
      const std::string s = std::to_string(l);
      m->weights.ltm.push_back(MakeTensor(*m, "ltm." + s, dtype, {n0, d}, randn(n0 * d)));
      m->weights.ltm_keys.push_back(MakeTensor(*m, "ltm_keys." + s, dtype, {n0, p}, randn(n0 * p)));
      m->weights.ltm_ages.push_back(MakeTensor(*m, "ltm_ages." + s, dtype, {n0}, ages));
      m->weights.ltm_recall_frequencies.push_back(
          MakeTensor(*m, "ltm_recall_frequencies." + s, dtype, {n0}, rfs));
    }
  }
  return m;
}

// The n-th (0-based) inject of a session whose content stream is `stream`.
inline engine::InjectResult MakeInject(const engine::ModelConfig& c, uint64_t stream, int64_t n) {
  std::mt19937_64 rng(stream * 1000003 + static_cast<uint64_t>(n));
  std::normal_distribution<float> normal;
  const int64_t K = c.num_tokens, N = c.stm_tokens(), d = c.hidden_size;
  engine::InjectResult r;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    std::vector<float> delta(K * d);
    for (float& x : delta) x = normal(rng);
    r.delta.push_back(std::move(delta));
    std::vector<int32_t> slots(N);
    for (int64_t i = 0; i < N; ++i) slots[i] = static_cast<int32_t>(i);
    std::shuffle(slots.begin(), slots.end(), rng);
    slots.resize(K);
    std::sort(slots.begin(), slots.end());
    r.dropped.push_back(slots);
    if (c.has_long_term()) {
      std::vector<float> keys(K * c.selector_hidden_dim);
      for (float& x : keys) x = normal(rng);
      r.dropped_keys.push_back(std::move(keys));
    }
  }
  return r;
}

// The expected state of a session, replayed in RAM with the same bookkeeping rules.
class ReferenceSession {
 public:
  explicit ReferenceSession(const BaseMemory& base) : base_(base) {
    const int64_t N = base.config().stm_tokens();
    for (int l = 0; l < base.num_layers(); ++l) {
      ShortTermList s;
      std::vector<uint8_t> rows(N * base.row_bytes());
      for (int64_t i = 0; i < N; ++i) {
        s.ids.push_back(BaseShortTermId(l, i));
        s.ages.push_back(0);
        base.CopyRow(s.ids.back(), rows.data() + i * base.row_bytes());
      }
      stm_.push_back(s);
      rows_.push_back(rows);
    }
    if (base.config().has_long_term()) {  // the checkpoint's entries, all merged
      ltm_ = std::make_unique<LongTermMemory>(base.long_term_params(), base.num_layers());
      for (int l = 0; l < base.num_layers(); ++l) {
        for (int64_t i = 0; i < base.long_term_size(l); ++i) {
          ltm_->layer(l).AddMerged(BaseLongTermId(l, i), base.LongTermKey(l, i),
                                   base.InitialAge(l, i), base.InitialRecallFrequency(l, i));
        }
      }
    }
  }

  void Apply(const engine::InjectResult& r) {
    const int64_t K = base_.config().num_tokens, d = base_.hidden();
    const size_t rb = base_.row_bytes();
    std::vector<DroppedTokens> dropped(base_.num_layers());
    for (int l = 0; l < base_.num_layers(); ++l) {
      ShortTermList next;
      std::vector<uint8_t> rows;
      size_t k = 0;
      for (size_t i = 0; i < stm_[l].ids.size(); ++i) {
        if (k < r.dropped[l].size() && r.dropped[l][k] == static_cast<int32_t>(i)) {
          ++k;
          dropped[l].token_ids.push_back(stm_[l].ids[i]);
          dropped[l].stm_ages.push_back(stm_[l].ages[i]);
          vectors_[stm_[l].ids[i]].assign(rows_[l].begin() + i * rb,
                                          rows_[l].begin() + (i + 1) * rb);
          continue;
        }
        next.ids.push_back(stm_[l].ids[i]);
        next.ages.push_back(stm_[l].ages[i]);
        rows.insert(rows.end(), rows_[l].begin() + i * rb, rows_[l].begin() + (i + 1) * rb);
      }
      std::vector<uint8_t> fresh(K * rb);
      engine::FloatsToDType(r.delta[l].data(), K * d, base_.storage_dtype(), fresh.data());
      for (int64_t j = 0; j < K; ++j) {
        next.ids.push_back(next_id_++);
        next.ages.push_back(static_cast<int32_t>(K - 1 - j));
      }
      rows.insert(rows.end(), fresh.begin(), fresh.end());
      stm_[l] = next;
      rows_[l] = rows;
      if (ltm_) dropped[l].keys = r.dropped_keys[l];
    }
    if (ltm_) ltm_->ApplyInject(dropped);
    ++inject_count_;
  }

  // Long-term retrieval the reference way: Select, then the vectors it remembers.
  std::vector<float> Retrieve(int l, const std::vector<float>& queries) const {
    const int64_t p = base_.config().selector_hidden_dim, d = base_.hidden();
    const std::vector<int64_t> chosen =
        ltm_->Select(l, queries.data(), static_cast<int64_t>(queries.size()) / p);
    std::vector<float> out(chosen.size() * d);
    for (size_t i = 0; i < chosen.size(); ++i) {
      const uint64_t id = ltm_->layer(l).entries()[chosen[i]].token_id;
      if (IsBaseToken(id) && (id & kBaseLongTermBit)) {
        base_.RowToFloats(id, out.data() + i * d);
      } else {
        engine::DTypeToFloats(vectors_.at(id).data(), base_.storage_dtype(), d, out.data() + i * d);
      }
    }
    return out;
  }

  int64_t inject_count() const { return inject_count_; }
  const ShortTermList& stm(int l) const { return stm_[l]; }
  const std::vector<uint8_t>& rows(int l) const { return rows_[l]; }
  const LongTermMemory* ltm() const { return ltm_.get(); }

 private:
  const BaseMemory& base_;
  std::vector<ShortTermList> stm_;
  std::vector<std::vector<uint8_t>> rows_;
  std::unique_ptr<LongTermMemory> ltm_;
  absl::flat_hash_map<uint64_t, std::vector<uint8_t>> vectors_;
  uint64_t next_id_ = 1;
  int64_t inject_count_ = 0;
};

inline bool SameBits(double a, double b) { return std::memcmp(&a, &b, sizeof a) == 0; }

// Bitwise comparison of a stored session with the reference; returns "" or the first mismatch.
inline std::string CompareWithReference(ResidentSession& s, const ReferenceSession& ref) {
  if (s.record().inject_count != ref.inject_count()) {
    return "inject_count " + std::to_string(s.record().inject_count) + " vs " +
           std::to_string(ref.inject_count());
  }
  const int L = static_cast<int>(s.record().next_ltm_seq.size());
  for (int l = 0; l < L; ++l) {
    const std::string at = " (layer " + std::to_string(l) + ")";
    if (s.short_term_list(l).ids != ref.stm(l).ids) return "stm ids" + at;
    if (s.short_term_list(l).ages != ref.stm(l).ages) return "stm ages" + at;
    const engine::ShortTermRows t = s.ShortTerm(l);
    std::vector<uint8_t> slot_order(t.slots() * t.row_bytes());
    t.CopySlots(0, t.slots(), slot_order.data());
    if (slot_order != ref.rows(l)) return "stm vectors" + at;
    if (!ref.ltm()) continue;
    const LongTermLayer& a = s.long_term()->layer(l);
    const LongTermLayer& b = ref.ltm()->layer(l);
    if (a.merged_count() != b.merged_count() || a.size() != b.size()) return "ltm sizes" + at;
    for (int64_t i = 0; i < a.size(); ++i) {
      const LongTermEntry &x = a.entries()[i], &y = b.entries()[i];
      if (x.token_id != y.token_id || x.age != y.age ||
          !SameBits(x.recall_frequency, y.recall_frequency)) {
        return "ltm entry " + std::to_string(i) + at;
      }
    }
    if (a.key_dtype() != b.key_dtype() || a.keys_bytes() != b.keys_bytes() ||
        std::memcmp(a.keys(), b.keys(), a.keys_bytes()) != 0) {
      return "ltm keys" + at;
    }
    const int64_t p = s.long_term()->params().key_dim;
    std::mt19937 rng(static_cast<uint32_t>(l + 17 * ref.inject_count()));
    std::normal_distribution<float> normal;
    std::vector<float> q(3 * p);
    for (float& x : q) x = normal(rng);
    const std::vector<float> want = ref.Retrieve(l, q);
    const engine::DType dtype = t.pool.dtype;
    std::vector<uint8_t> rows(want.size() * engine::DTypeSize(dtype));
    engine::RetrievalQueries queries(q.data(), 3, p);
    const absl::Status st = s.RetrieveLongTerm(l, queries, rows.data());
    if (!st.ok()) return "retrieve: " + st.ToString();
    std::vector<float> got(want.size());
    engine::DTypeToFloats(rows.data(), dtype, static_cast<int64_t>(got.size()), got.data());
    if (std::memcmp(want.data(), got.data(), want.size() * sizeof(float)) != 0) {
      return "retrieved vectors" + at;
    }
  }
  if (ref.ltm() && s.long_term()->update_step() != ref.ltm()->update_step()) return "update_step";
  return "";
}

inline std::string TempDir(const std::string& name) {
  static std::atomic<int> counter{0};
  const std::filesystem::path p =
      std::filesystem::temp_directory_path() /
      ("mplus-" + name + "-" + std::to_string(getpid()) + "-" + std::to_string(counter++));
  std::filesystem::remove_all(p);
  mplus::testing::RemoveAtExit(p.string());
  return p.string();
}

}  // namespace mplus::memstore::testing

#endif  // MPLUS_TESTS_UNIT_MEMSTORE_TEST_UTIL_H_
