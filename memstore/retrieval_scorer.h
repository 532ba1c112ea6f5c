// Retrieval scoring for long-term memory: mean over queries of sigmoid(query · key), and a
// deterministic top-k. Kept free of any memory bookkeeping so it can be optimised on its own.
#ifndef MPLUS_MEMSTORE_RETRIEVAL_SCORER_H_
#define MPLUS_MEMSTORE_RETRIEVAL_SCORER_H_

#include <cstdint>
#include <vector>

#include "engine/dtype.h"

namespace mplus::memstore {

// scores_out[j] = (1/nq) * sum_t sigmoid(queries[t] · keys[j]) for j in [0, n).
// queries [nq, p] are row-major float32; keys [n, p] row-major float32 or bfloat16 (`key_dtype`,
// widened exactly); dot products are float32, the sigmoid sum is accumulated in double (the
// official code scores in the model dtype; float32 or better keeps the top-k stable). nq must
// be > 0.
void MeanSigmoidScores(const float* queries, int64_t nq, const void* keys, engine::DType key_dtype,
                       int64_t n, int64_t p, float* scores_out);

// Indices of the k largest scores (all of them when k >= n), in ascending index order.
// torch.topk leaves the choice among equal scores at the boundary unspecified; we take the
// lower index, so the result is deterministic. NaN scores rank below every number.
std::vector<int64_t> TopK(const float* scores, int64_t n, int64_t k);

}  // namespace mplus::memstore

#endif  // MPLUS_MEMSTORE_RETRIEVAL_SCORER_H_
