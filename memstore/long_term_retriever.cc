#include "memstore/long_term_retriever.h"

#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "engine/status_macros.h"

namespace mplus::memstore {

absl::StatusOr<LongTermMode> ParseLongTermMode(std::string_view name) {
  if (name == "resident") return LongTermMode::kResident;
  if (name == "offload") return LongTermMode::kOffload;
  return absl::InvalidArgumentError(
      absl::StrCat("long-term mode must be resident or offload, got '", std::string(name), "'"));
}

const char* LongTermModeName(LongTermMode mode) {
  return mode == LongTermMode::kResident ? "resident" : "offload";
}

size_t LongTermRetriever::device_bytes() const {
  size_t total = 0;
  for (const auto& m : mirrors_) total += m ? m->bytes() : 0;
  return total;
}

absl::StatusOr<engine::RetrievalKeys*> LongTermRetriever::Mirror(engine::Backend& backend,
                                                                 const LongTermMemory& ltm,
                                                                 int layer) {
  if (backend_ != &backend) {  // first use, or the session moved to another model's backend
    mirrors_.clear();
    mirrors_.resize(static_cast<size_t>(ltm.num_layers()));
    backend_ = &backend;
    backend_keeps_keys_ = true;
  }
  if (!backend_keeps_keys_) return nullptr;
  std::unique_ptr<engine::RetrievalKeys>& mirror = mirrors_[layer];
  if (mirror == nullptr) {
    MPLUS_ASSIGN_OR_RETURN(mirror,
                           backend.NewRetrievalKeys(ltm.params().key_dim, ltm.params().key_dtype));
    if (mirror == nullptr) backend_keeps_keys_ = false;
  }
  return mirror.get();
}

absl::StatusOr<std::vector<int64_t>> LongTermRetriever::Select(LongTermMemory& ltm, int layer,
                                                               engine::RetrievalQueries& queries) {
  MPLUS_ASSIGN_OR_RETURN(std::vector<int64_t> chosen, Choose(ltm, layer, queries));
  // Fewer only when the layer has no merged entry yet (otherwise retrieval wraps around to
  // K_ltm): the model needs K_ltm rows, so this is the session's state, not the request's.
  if (static_cast<int64_t>(chosen.size()) != ltm.params().retrieved_tokens) {
    return absl::FailedPreconditionError(
        absl::StrCat("layer ", layer, " has no merged long-term entries to retrieve (",
                     chosen.size(), " of ", ltm.params().retrieved_tokens, ")"));
  }
  return chosen;
}

absl::StatusOr<std::vector<int64_t>> LongTermRetriever::Choose(LongTermMemory& ltm, int layer,
                                                               engine::RetrievalQueries& queries) {
  if (layer < 0 || layer >= ltm.num_layers()) {
    return absl::InvalidArgumentError(absl::StrCat("long-term layer ", layer, " out of range"));
  }
  if (queries.count() <= 0 || queries.key_dim() != ltm.params().key_dim) {
    return absl::InvalidArgumentError(absl::StrCat("retrieval queries must be [n > 0, ",
                                                   ltm.params().key_dim, "], got [",
                                                   queries.count(), ", ", queries.key_dim(), "]"));
  }
  // The keys to score on the backend: the layer's mirror (resident), or a copy made for this
  // scoring only (offload, long prompts); none when scoring on the host.
  engine::Backend* backend = queries.backend();
  engine::RetrievalKeys* on_backend = nullptr;
  std::unique_ptr<engine::RetrievalKeys> copy;
  if (backend != nullptr && mode_ == LongTermMode::kResident) {
    MPLUS_ASSIGN_OR_RETURN(on_backend, Mirror(*backend, ltm, layer));
  } else if (backend != nullptr && offload_device_min_queries_ > 0 &&
             queries.count() >= offload_device_min_queries_) {
    MPLUS_ASSIGN_OR_RETURN(copy,
                           backend->NewRetrievalKeys(ltm.params().key_dim, ltm.params().key_dtype));
    on_backend = copy.get();
  }
  if (on_backend != nullptr) {
    // Synced only when scoring: wrap-around retrieval (fewer merged entries than K_ltm) scores
    // nothing.
    return ltm.Select(layer, [&](int64_t k) -> absl::StatusOr<std::vector<int64_t>> {
      LongTermLayer& keys = ltm.layer(layer);
      // A fresh mirror or copy holds nothing yet.
      const int64_t unchanged = on_backend->size() == 0 ? 0 : keys.keys_unchanged_rows();
      MPLUS_RETURN_IF_ERROR(
          backend->SyncRetrievalKeys(*on_backend, keys.keys(), keys.size(), unchanged));
      if (copy == nullptr) keys.MarkKeysSynced();  // the mirror stays
      return backend->TopRetrievalKeys(*on_backend, queries.device(), k);
    });
  }
  MPLUS_ASSIGN_OR_RETURN(const float* host, queries.host());
  return ltm.Select(layer, host, queries.count());
}

absl::StatusOr<std::vector<uint64_t>> LongTermRetriever::SelectTokenIds(
    LongTermMemory& ltm, int layer, engine::RetrievalQueries& queries) {
  MPLUS_ASSIGN_OR_RETURN(const std::vector<int64_t> chosen, Select(ltm, layer, queries));
  const std::vector<LongTermEntry>& entries = ltm.layer(layer).entries();
  std::vector<uint64_t> ids(chosen.size());
  for (size_t i = 0; i < chosen.size(); ++i) ids[i] = entries[chosen[i]].token_id;
  return ids;
}

}  // namespace mplus::memstore
