#include "engine/cuda/gemm.h"

#include <algorithm>
#include <cstdint>
#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/cuda/cuda_status.h"
#include "engine/status_macros.h"

namespace mplus::engine::cuda {
namespace {

// Largest power of two (<= 256) dividing the address: cuBLASLt otherwise assumes 256-byte
// alignment and may pick a kernel that faults on a row view of a tensor.
int Alignment(const void* p) {
  const auto addr = reinterpret_cast<uintptr_t>(p);
  int a = 1;
  while (a < 256 && addr % (2 * a) == 0) a *= 2;
  return a;
}

}  // namespace

absl::StatusOr<std::unique_ptr<LtGemm>> LtGemm::Create(void* workspace, size_t workspace_bytes) {
  cublasLtHandle_t handle = nullptr;
  MPLUS_CUBLAS_RETURN_IF_ERROR(cublasLtCreate(&handle));
  return std::unique_ptr<LtGemm>(new LtGemm(handle, workspace, workspace_bytes));
}

LtGemm::~LtGemm() {
  for (auto& [key, plan] : plans_) DestroyPlan(plan);
  cublasLtDestroy(handle_);  // nothing to report to from a destructor
}

void LtGemm::DestroyPlan(Plan& plan) {
  if (plan.a != nullptr) cublasLtMatrixLayoutDestroy(plan.a);
  if (plan.b != nullptr) cublasLtMatrixLayoutDestroy(plan.b);
  if (plan.c != nullptr) cublasLtMatrixLayoutDestroy(plan.c);
  if (plan.desc != nullptr) cublasLtMatmulDescDestroy(plan.desc);
  plan = Plan{};
}

absl::StatusOr<const LtGemm::Plan*> LtGemm::GetPlan(const Key& key) {
  if (auto it = plans_.find(key); it != plans_.end()) return &it->second;
  Plan plan;
  if (absl::Status s = BuildPlan(key, plan); !s.ok()) {
    DestroyPlan(plan);
    return s;
  }
  return &plans_.emplace(key, plan).first->second;
}

absl::Status LtGemm::BuildPlan(const Key& key, Plan& plan) {
  const auto [dtype_int, n, m, k, accumulate, align_x, align_w, align_d] = key;
  const cudaDataType_t ab_type =
      static_cast<DType>(dtype_int) == DType::kBF16 ? CUDA_R_16BF : CUDA_R_32F;
  // Column-major view: D^T [m, n] = W [m, k] (W^T stored, so op A = T) · X^T [k, n].
  MPLUS_CUBLAS_RETURN_IF_ERROR(
      cublasLtMatmulDescCreate(&plan.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t trans = CUBLAS_OP_T, no_trans = CUBLAS_OP_N;
  MPLUS_CUBLAS_RETURN_IF_ERROR(
      cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSA, &trans, sizeof trans));
  MPLUS_CUBLAS_RETURN_IF_ERROR(cublasLtMatmulDescSetAttribute(
      plan.desc, CUBLASLT_MATMUL_DESC_TRANSB, &no_trans, sizeof no_trans));
  MPLUS_CUBLAS_RETURN_IF_ERROR(cublasLtMatrixLayoutCreate(&plan.a, ab_type, k, m, k));
  MPLUS_CUBLAS_RETURN_IF_ERROR(cublasLtMatrixLayoutCreate(&plan.b, ab_type, k, n, k));
  MPLUS_CUBLAS_RETURN_IF_ERROR(cublasLtMatrixLayoutCreate(&plan.c, CUDA_R_32F, m, n, m));

  cublasLtMatmulPreference_t pref = nullptr;
  MPLUS_CUBLAS_RETURN_IF_ERROR(cublasLtMatmulPreferenceCreate(&pref));
  const uint64_t ws = workspace_bytes_;
  const uint32_t ax = align_x, aw = align_w, ad = align_d;
  const std::pair<cublasLtMatmulPreferenceAttributes_t, const void*> attrs[] = {
      {CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &aw},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &ax},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &ad},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &ad}};
  cublasStatus_t st = CUBLAS_STATUS_SUCCESS;
  for (const auto& [attr, value] : attrs) {
    const size_t size = attr == CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES ? sizeof ws : sizeof ax;
    if (st == CUBLAS_STATUS_SUCCESS)
      st = cublasLtMatmulPreferenceSetAttribute(pref, attr, value, size);
  }
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  if (st == CUBLAS_STATUS_SUCCESS) {
    st = cublasLtMatmulAlgoGetHeuristic(handle_, plan.desc, plan.a, plan.b, plan.c, plan.c, pref, 1,
                                        &result, &found);
  }
  cublasLtMatmulPreferenceDestroy(pref);
  MPLUS_CUBLAS_RETURN_IF_ERROR(st);
  if (found == 0) {
    return absl::UnimplementedError(absl::StrCat("cuBLASLt has no algorithm for ",
                                                 DTypeName(static_cast<DType>(dtype_int)),
                                                 " GEMM n=", n, " m=", m, " k=", k));
  }
  plan.algo = result.algo;
  return absl::OkStatus();
}

absl::Status LtGemm::Run(DType dtype, const void* x, const void* w, float* d, int64_t n, int64_t m,
                         int64_t k, float alpha, float beta, cudaStream_t stream) {
  if (dtype != DType::kF32 && dtype != DType::kBF16) {
    return absl::InvalidArgumentError(absl::StrCat("LtGemm: unsupported dtype ", DTypeName(dtype)));
  }
  const Key key{
      static_cast<int>(dtype), n, m, k, beta != 0.0f, Alignment(x), Alignment(w), Alignment(d)};
  const Plan* plan;
  MPLUS_ASSIGN_OR_RETURN(plan, GetPlan(key));
  MPLUS_CUBLAS_RETURN_IF_ERROR(cublasLtMatmul(handle_, plan->desc, &alpha, w, plan->a, x, plan->b,
                                              &beta, d, plan->c, d, plan->c, &plan->algo,
                                              workspace_, workspace_bytes_, stream));
  return absl::OkStatus();
}

}  // namespace mplus::engine::cuda
