// CUDA runtime and cuBLAS results turned into absl::Status naming the call and the source line,
// so a failure on a lent GPU can be diagnosed from the error text alone. Host (C++) code only.
#ifndef MPLUS_ENGINE_CUDA_CUDA_STATUS_H_
#define MPLUS_ENGINE_CUDA_CUDA_STATUS_H_

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace mplus::engine::cuda {

inline absl::Status CudaError(cudaError_t err, const char* call, const char* file, int line) {
  if (err == cudaSuccess) return absl::OkStatus();
  const std::string msg = absl::StrCat(call, " failed: ", cudaGetErrorName(err), " (",
                                       cudaGetErrorString(err), ") at ", file, ":", line);
  if (err == cudaErrorMemoryAllocation) return absl::ResourceExhaustedError(msg);
  return absl::InternalError(msg);
}

inline absl::Status CublasError(cublasStatus_t st, const char* call, const char* file, int line) {
  if (st == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  const std::string msg = absl::StrCat(call, " failed: ", cublasGetStatusName(st), " (",
                                       cublasGetStatusString(st), ") at ", file, ":", line);
  if (st == CUBLAS_STATUS_ALLOC_FAILED) return absl::ResourceExhaustedError(msg);
  if (st == CUBLAS_STATUS_NOT_SUPPORTED) return absl::UnimplementedError(msg);
  return absl::InternalError(msg);
}

}  // namespace mplus::engine::cuda

// Evaluates a CUDA runtime call (or a launcher returning cudaError_t) and returns its error.
#define MPLUS_CUDA_RETURN_IF_ERROR(call)                                                  \
  do {                                                                                    \
    if (cudaError_t mplus_cuda_err = (call); mplus_cuda_err != cudaSuccess) {             \
      return ::mplus::engine::cuda::CudaError(mplus_cuda_err, #call, __FILE__, __LINE__); \
    }                                                                                     \
  } while (0)

#define MPLUS_CUBLAS_RETURN_IF_ERROR(call)                                                   \
  do {                                                                                       \
    if (cublasStatus_t mplus_cublas_st = (call); mplus_cublas_st != CUBLAS_STATUS_SUCCESS) { \
      return ::mplus::engine::cuda::CublasError(mplus_cublas_st, #call, __FILE__, __LINE__); \
    }                                                                                        \
  } while (0)

#endif  // MPLUS_ENGINE_CUDA_CUDA_STATUS_H_
