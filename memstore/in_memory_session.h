// A session whose whole memory lives in RAM: short-term memory per layer, long-term entries
// (LongTermMemory bookkeeping) and their token vectors. Starts from a model's checkpoint memory;
// the reference for the persistent store and what tools and tests use.
#ifndef MPLUS_MEMSTORE_IN_MEMORY_SESSION_H_
#define MPLUS_MEMSTORE_IN_MEMORY_SESSION_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "engine/model.h"
#include "engine/session_memory.h"
#include "memstore/long_term_index.h"
#include "memstore/long_term_retriever.h"
#include "memstore/short_term_pool.h"

namespace mplus::memstore {

class InMemorySession : public engine::SessionMemory {
 public:
  // STM = a copy of the checkpoint memory (ages 0); LTM = the checkpoint's long-term entries
  // (ages truncated to integers, stored recall frequencies), all merged.
  // `mode`: where retrieval scores the long-term keys (long_term_retriever.h); without
  // `prefix_cache` every generation projects the whole prefix (as --prefix_cache=false).
  static absl::StatusOr<std::unique_ptr<InMemorySession>> Create(
      const engine::Model& model, LongTermMode mode = LongTermMode::kResident,
      bool prefix_cache = true);

  // Stored in the checkpoint dtype.
  engine::ShortTermRows ShortTerm(int layer) const override;
  absl::StatusOr<std::vector<uint64_t>> SelectLongTerm(int layer,
                                                       engine::RetrievalQueries& queries) override;
  absl::Status ReadLongTerm(absl::Span<const uint64_t> ids, void* out) override;
  // Told of every ApplyInject that passes validation (PrefixCache::OnInject).
  engine::PrefixCache* prefix_cache() override {
    return use_prefix_cache_ ? &prefix_cache_ : nullptr;
  }

  // Commits an inject: STM_l <- [kept slots ascending ; delta_l rounded to the checkpoint
  // dtype] with ages [kept ; K-1 .. 0]; the dropped tokens (with their STM ages) go to the
  // long-term memory (M+) or are discarded (MemoryLLM); vectors of evicted entries are freed.
  absl::Status ApplyInject(const engine::InjectResult& inject);

  // Merged + pending long-term entries of `layer` (0 without long-term memory).
  int64_t ltm_count(int layer) const;
  const LongTermMemory* long_term() const { return ltm_.get(); }
  // Device bytes of the long-term keys mirrored on the model's backend (resident mode, GPU).
  size_t retrieval_key_bytes() const { return retriever_ ? retriever_->device_bytes() : 0; }
  int64_t stm_age(int layer, int64_t slot) const { return stm_ages_[layer][slot]; }

 private:
  InMemorySession() = default;

  int num_layers_ = 0;
  int64_t n_ = 0, d_ = 0, k_ = 0;
  engine::DType dtype_ = engine::DType::kF32;
  std::vector<ShortTermPool> stm_;              // [L]: N rows of d in dtype_
  std::vector<std::vector<int64_t>> stm_ages_;  // [L][N]
  std::unique_ptr<LongTermMemory> ltm_;
  std::unique_ptr<LongTermRetriever> retriever_;                 // with ltm_
  absl::flat_hash_map<uint64_t, std::vector<uint8_t>> vectors_;  // token id -> [d] in dtype_
  uint64_t next_token_id_ = 1;
  bool use_prefix_cache_ = true;
  engine::PrefixCache prefix_cache_;
};

}  // namespace mplus::memstore

#endif  // MPLUS_MEMSTORE_IN_MEMORY_SESSION_H_
