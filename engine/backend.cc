#include "engine/backend.h"

#include "absl/strings/str_cat.h"
#include "engine/status_macros.h"

namespace mplus::engine {
namespace {

// Rounds float32 `t` in place to the precision of `dtype` (a no-op for F32).
absl::Status RoundTo(Backend& backend, DType dtype, const Tensor& t) {
  if (dtype == DType::kF32) return absl::OkStatus();
  MPLUS_ASSIGN_OR_RETURN(Tensor narrow, backend.Allocate(dtype, t.shape()));
  MPLUS_RETURN_IF_ERROR(backend.Copy(t, narrow));
  return backend.Copy(narrow, t);
}

}  // namespace

absl::Status Backend::LoraMatMul(const Tensor& x, const Tensor& w, const Tensor& a, const Tensor& b,
                                 float scale, const Tensor& out, bool accumulate) {
  if (accumulate) {  // MatMul's accumulate would add out before the LoRA term (and mid-sum)
    MPLUS_ASSIGN_OR_RETURN(Tensor y, Allocate(DType::kF32, {out.rows(), out.cols()}));
    MPLUS_RETURN_IF_ERROR(LoraMatMul(x, w, a, b, scale, y));
    return Add(out, y, out);
  }
  MPLUS_RETURN_IF_ERROR(MatMul(x, w, out));
  if (a.empty()) return absl::OkStatus();
  MPLUS_ASSIGN_OR_RETURN(Tensor t, Allocate(DType::kF32, {x.rows(), a.rows()}));
  MPLUS_RETURN_IF_ERROR(MatMul(x, a, t));
  return MatMul(t, b, out, scale, /*accumulate=*/true);
}

absl::StatusOr<std::vector<Tensor>> Backend::UploadWeights(absl::Span<const TensorView> views) {
  std::vector<Tensor> out;
  for (const TensorView& v : views) {
    MPLUS_ASSIGN_OR_RETURN(Tensor t, UploadWeight(v));
    out.push_back(std::move(t));
  }
  return out;
}

absl::Status Backend::LoraMatMulGroup(const Tensor& x, absl::Span<const LoraLinear> group,
                                      float scale, absl::Span<const Tensor> outs) {
  if (group.size() != outs.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("LoraMatMulGroup: ", group.size(), " linears for ", outs.size(), " outputs"));
  }
  for (size_t i = 0; i < group.size(); ++i) {
    const LoraLinear& l = group[i];
    MPLUS_RETURN_IF_ERROR(LoraMatMul(x, l.w, l.a, l.b, scale, outs[i]));
  }
  return absl::OkStatus();
}

absl::Status Backend::StoreKeysValues(const Tensor& k, const Tensor& v, int64_t head_dim,
                                      absl::Span<const int64_t> positions, const Tensor& inv_freq,
                                      const Tensor& k_rows, const Tensor& v_rows) {
  MPLUS_RETURN_IF_ERROR(RoundTo(*this, k_rows.dtype(), k));
  MPLUS_RETURN_IF_ERROR(Rope(k, head_dim, positions, inv_freq));
  MPLUS_RETURN_IF_ERROR(Copy(k, k_rows));
  return Copy(v, v_rows);
}

}  // namespace mplus::engine
