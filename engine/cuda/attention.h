// Tiled online-softmax attention on CUDA (float32 math; K/V float32, bfloat16 or float8 e4m3,
// widened on load), with GQA and the bottom-right causal mask.
// No [nq, nk] score matrix is ever materialised: each block streams key/value tiles through
// shared memory keeping a running max and sum per query row. When there are too few
// (query, head) rows to fill the GPU (decode: nq = 1), keys are split across blocks
// (flash-decoding) and a second kernel merges the partial results; a single query row with
// GQA groups of 1, 2, 4 or 8 takes a dedicated decode kernel that reads each K/V row once for
// the whole group, eight elements per lane. Prefill (16 query rows or more) over bf16 or fp8 K/V
// with head_dim 128 runs on tensor cores (bf16 MMAs, fp8 widened to bf16 exactly, float32
// accumulation and softmax).
#ifndef MPLUS_ENGINE_CUDA_ATTENTION_H_
#define MPLUS_ENGINE_CUDA_ATTENTION_H_

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "engine/dtype.h"

namespace mplus::engine::cuda {

inline constexpr int64_t kMaxAttentionHeadDim = 128;

struct AttentionShape {
  int64_t nq = 0, nk = 0;
  int64_t num_heads = 0, num_kv_heads = 0, head_dim = 0;
};

// How many key splits to use on a device with `num_sms` multiprocessors (1: no split), for K/V
// of `kv_dtype`, launched with `pipelined_decode` as LaunchAttention (decode splits depend on it,
// but not on the dtype: bf16 / fp8 K/V stay bit for bit float32's).
int AttentionSplits(const AttentionShape& shape, int num_sms, DType kv_dtype,
                    bool pipelined_decode = false);
// Scratch bytes LaunchAttention needs for `splits` (0 when splits == 1).
size_t AttentionWorkspaceBytes(const AttentionShape& shape, int splits);
// q [nq, H*hd], k/v [nk, Hkv*hd], out [nq, H*hd]; row-major, on the device. q and out are
// float32; k and v are both `kv_dtype`, F32, BF16 or F8E4M3 (else cudaErrorInvalidValue). BF16
// and F8E4M3 K/V give bit for bit the output of F32 K/V holding the same (widened) values (same
// splits, same float operations), except on the tensor-core prefill path, which rounds q and the
// probabilities to bf16 for its MMAs as the official bf16 model does. `splits` from
// AttentionSplits. Requires 0 < head_dim <= kMaxAttentionHeadDim, H % Hkv == 0, nk >= nq (checked
// by caller). With `last_position` (device memory; decode only: DecodeKernelTakes), the one query
// attends to key rows [0, *last_position] of the nk given (splits for nk), read when the kernel
// runs: a recorded launch then serves every decode step. `dependent`: the decode kernel and the
// split combine launch as programmatic dependents of the kernel ahead (as kernels.h).
// `pipelined_decode`: the head_dim-128 decode kernel over bf16 / fp8 K/V loads a warp's next
// tile while it computes the current one (the same results; off until it has run on a GPU).
cudaError_t LaunchAttention(const float* q, const void* k, const void* v, DType kv_dtype,
                            float* out, const AttentionShape& shape, int splits, void* workspace,
                            cudaStream_t stream, bool dependent,
                            const int64_t* last_position = nullptr, bool pipelined_decode = false);
// Whether the shape and operands go to the dedicated decode kernel (one query row, GQA group of
// 1, 2, 4 or 8, head_dim = 8 * 2^i <= 128, K/V rows aligned to 16 bytes, fp8: 8 bytes).
bool DecodeKernelTakes(const AttentionShape& shape, const void* k, const void* v, DType kv_dtype,
                       int splits);

}  // namespace mplus::engine::cuda

#endif  // MPLUS_ENGINE_CUDA_ATTENTION_H_
