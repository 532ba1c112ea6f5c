// cuBLASLt GEMM in the layout the backend uses: D[n, m] (row-major float32) =
// alpha * X[n, k] · W[m, k]^T + beta * D, with X and W row-major of the same dtype:
//  - kF32: plain float32 GEMM (CUBLAS_COMPUTE_32F, no TF32), matching the CPU reference;
//  - kBF16: bf16 inputs on tensor cores with float32 accumulation and float32 output.
// Plans (descriptors + the heuristic's algorithm) are cached per shape, dtype and pointer
// alignment. Not thread-safe: the owner serialises calls.
#ifndef MPLUS_ENGINE_CUDA_GEMM_H_
#define MPLUS_ENGINE_CUDA_GEMM_H_

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <tuple>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/dtype.h"

namespace mplus::engine::cuda {

class LtGemm {
 public:
  // `workspace` (device, `workspace_bytes`) is owned by the caller and must outlive this.
  static absl::StatusOr<std::unique_ptr<LtGemm>> Create(void* workspace, size_t workspace_bytes);
  ~LtGemm();
  LtGemm(const LtGemm&) = delete;
  LtGemm& operator=(const LtGemm&) = delete;

  absl::Status Run(DType dtype, const void* x, const void* w, float* d, int64_t n, int64_t m,
                   int64_t k, float alpha, float beta, cudaStream_t stream);

 private:
  struct Plan {
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
    cublasLtMatmulAlgo_t algo{};
  };
  // dtype, n, m, k, beta != 0, alignment of x, w, d.
  using Key = std::tuple<int, int64_t, int64_t, int64_t, bool, int, int, int>;

  LtGemm(cublasLtHandle_t handle, void* workspace, size_t workspace_bytes)
      : handle_(handle), workspace_(workspace), workspace_bytes_(workspace_bytes) {}
  absl::StatusOr<const Plan*> GetPlan(const Key& key);
  absl::Status BuildPlan(const Key& key, Plan& plan);
  static void DestroyPlan(Plan& plan);

  cublasLtHandle_t handle_;
  void* workspace_;
  size_t workspace_bytes_;
  absl::flat_hash_map<Key, Plan> plans_;
};

}  // namespace mplus::engine::cuda

#endif  // MPLUS_ENGINE_CUDA_GEMM_H_
