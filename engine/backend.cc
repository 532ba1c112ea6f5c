#include "engine/backend.h"

#include <limits>

#include "absl/strings/str_cat.h"
#include "engine/float_range.h"
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

// The value of an int64 [1] position tensor, which must be below `rows` (cache rows).
absl::StatusOr<int64_t> ReadPosition(Backend& backend, const Tensor& position, int64_t rows,
                                     const char* what) {
  if (position.dtype() != DType::kI64 || position.numel() != 1) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": position must be one int64, got ",
                                                   DTypeName(position.dtype()), " [",
                                                   position.numel(), "]"));
  }
  int64_t value = 0;
  MPLUS_RETURN_IF_ERROR(backend.CopyToHost(position, &value));
  if (value < 0 || value >= rows) {
    return absl::OutOfRangeError(
        absl::StrCat(what, ": position ", value, " outside [0, ", rows, ")"));
  }
  return value;
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

absl::StatusOr<int64_t> Backend::Argmax(const Tensor& x) {
  if (x.dtype() != DType::kF32) {
    return absl::InvalidArgumentError(
        absl::StrCat("Argmax: need float32, got ", DTypeName(x.dtype())));
  }
  std::vector<float> host(static_cast<size_t>(x.numel()));
  MPLUS_RETURN_IF_ERROR(CopyToHost(x, host.data()));
  return ArgmaxIgnoringNaN(host.data(), x.numel());
}

absl::Status Backend::CopyRowsFromHost(int64_t rows, size_t row_bytes, DType src_dtype,
                                       HostRowsFill fill, const Tensor& dst) {
  if (rows < 0 || static_cast<size_t>(rows) * row_bytes !=
                      static_cast<size_t>(dst.numel()) * DTypeSize(src_dtype)) {
    return absl::InvalidArgumentError(absl::StrCat("CopyRowsFromHost: ", rows, " rows of ",
                                                   row_bytes, " bytes for ", dst.numel(), " ",
                                                   DTypeName(src_dtype), " elements"));
  }
  std::vector<char> host(static_cast<size_t>(rows) * row_bytes);
  fill(0, rows, host.data());
  return CopyFromHost(host.data(), src_dtype, dst);
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

absl::Status Backend::StoreKeysValuesAt(const Tensor& k, const Tensor& v, int64_t head_dim,
                                        const Tensor& position, const Tensor& inv_freq,
                                        const Tensor& k_cache, const Tensor& v_cache) {
  MPLUS_ASSIGN_OR_RETURN(const int64_t p,
                         ReadPosition(*this, position, k_cache.rows(), "StoreKeysValuesAt"));
  return StoreKeysValues(k, v, head_dim, absl::MakeConstSpan(&p, 1), inv_freq,
                         k_cache.Rows(p, p + 1), v_cache.Rows(p, p + 1));
}

absl::Status Backend::RopeStoreKeysValuesAt(const Tensor& q, const Tensor& k, const Tensor& v,
                                            int64_t head_dim, const Tensor& position,
                                            const Tensor& inv_freq, const Tensor& k_cache,
                                            const Tensor& v_cache) {
  MPLUS_RETURN_IF_ERROR(StoreKeysValuesAt(k, v, head_dim, position, inv_freq, k_cache, v_cache));
  return RopeAt(q, head_dim, position, inv_freq);
}

absl::Status Backend::RopeAt(const Tensor& x, int64_t head_dim, const Tensor& position,
                             const Tensor& inv_freq) {
  MPLUS_ASSIGN_OR_RETURN(
      const int64_t p,
      ReadPosition(*this, position, std::numeric_limits<int64_t>::max(), "RopeAt"));
  return Rope(x, head_dim, absl::MakeConstSpan(&p, 1), inv_freq);
}

absl::Status Backend::AttentionAt(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                                  const Tensor& position, int64_t num_heads, int64_t num_kv_heads,
                                  int64_t head_dim, const Tensor& out) {
  MPLUS_ASSIGN_OR_RETURN(const int64_t p,
                         ReadPosition(*this, position, k_cache.rows(), "AttentionAt"));
  return Attention(q, k_cache.Rows(0, p + 1), v_cache.Rows(0, p + 1), num_heads, num_kv_heads,
                   head_dim, out);
}

}  // namespace mplus::engine
