// The CUDA backend: every Backend op on one GPU, enqueued on one compute stream per backend.
//
// Precision (vs. the float32 CPU reference):
//  - MatMul with float32 weights: float32 GEMM (no TF32) — same math, different summation order.
//  - MatMul with bfloat16 weights: activations are rounded to bfloat16 (round to nearest even,
//    as torch does in a bf16 model) and multiplied on tensor cores with float32 accumulation and
//    float32 output: relative error per product term ~2^-9 from the activation rounding. With
//    1-4 rows (decode) a GEMV kernel reads the float32 activations instead (gemv.h): no
//    activation rounding, float32 sums. LoraMatMul adds the LoRA term in that GEMV's epilogue.
//  - float16 weights are widened to float32 by UploadWeight (no fp16 activations: Llama
//    activations can exceed the fp16 range); a float16 tensor from Allocate is widened per call.
//  - Everything else (RMSNorm, RoPE with float32 angles and precise sinf/cosf, attention with an
//    online softmax, SiLU, adds, embedding) computes in float32.
//  - bfloat16 KV caches: Copy float32 -> bfloat16 rounds bit for bit as engine/dtype.h's
//    FloatToBF16 (nearest even, NaN kept), so a cache written on the GPU equals the CPU's.
//    Attention over bf16 K/V widens each element exactly as it loads a tile and then runs the
//    float32 kernel code unchanged: its output is bitwise that of float32 K/V holding the widened
//    values (only the K/V bytes read, and so decode bandwidth, halve) — except prefill with
//    head_dim 128, which runs on tensor cores with q and the probabilities rounded to bf16 (as
//    the official bf16 model's attention). Embedding into a bf16 tensor copies the table's rows
//    bit for bit.
//
// Thread-safety: ops may be called from several threads; enqueueing is serialised by a mutex,
// ordering across threads is the caller's business (as with the CPU backend).
#ifndef MPLUS_ENGINE_CUDA_CUDA_BACKEND_H_
#define MPLUS_ENGINE_CUDA_CUDA_BACKEND_H_

#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "engine/backend.h"

namespace mplus::engine::cuda {

// Creates a backend on GPU `device_ordinal`; FailedPrecondition without a usable device.
absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(int device_ordinal);

// Device memory a CUDA backend currently holds, by what it is for.
struct CudaMemoryStats {
  int64_t weights_bytes = 0;     // UploadWeight
  int64_t workspace_bytes = 0;   // cuBLASLt workspace, op scratch (bf16 activations, splits)
  int64_t other_bytes = 0;       // Allocate (activations, KV caches, ...)
  int64_t peak_total_bytes = 0;  // since the backend was made or ResetCudaMemoryPeak
  int64_t total() const { return weights_bytes + workspace_bytes + other_bytes; }
};

// Stats of a backend made by CreateCudaBackend; InvalidArgument for any other backend.
absl::StatusOr<CudaMemoryStats> GetCudaMemoryStats(const Backend& backend);
// Restarts peak_total_bytes from the bytes held now; InvalidArgument for another backend.
absl::Status ResetCudaMemoryPeak(Backend& backend);
// Seconds the host has spent waiting for the GPU (CopyToHost, Synchronize) since the backend was
// made: a step's wall time minus its growth is what enqueueing the step cost the host.
absl::StatusOr<double> GetCudaHostWaitSeconds(const Backend& backend);

}  // namespace mplus::engine::cuda

#endif  // MPLUS_ENGINE_CUDA_CUDA_BACKEND_H_
