#include "engine/lora_merge.h"

#include <algorithm>
#include <cstring>
#include <initializer_list>
#include <string>

#include "absl/strings/str_cat.h"
#include "engine/backend_checks.h"
#include "engine/cpu/gemm.h"
#include "engine/dtype.h"
#include "engine/status_macros.h"

namespace mplus::engine {
namespace {

constexpr int64_t kRowsPerChunk = 64;  // of W: 64 x 14336 floats (3.7 MB) per thread at most

absl::Status CheckShape(const TensorView& t, int64_t rows, int64_t cols, const std::string& what) {
  if (t.data == nullptr || !IsFloatDType(t.dtype) || t.shape.size() != 2 || t.shape[0] != rows ||
      t.shape[1] != cols) {
    return absl::InvalidArgumentError(absl::StrCat("merging the decoder LoRA: ", t.name, " (", what,
                                                   ") is not a float [", rows, ", ", cols,
                                                   "] tensor"));
  }
  return absl::OkStatus();
}

TensorView View(const std::string& name, DType dtype, int64_t rows, int64_t cols,
                const std::vector<uint8_t>& bytes) {
  return TensorView{name, dtype, {rows, cols}, bytes.data(), bytes.size()};
}

// The sign bit of every element of a float storage type: negation without rounding.
void Negate(uint8_t* data, int64_t n, DType dtype) {
  const size_t size = DTypeSize(dtype);
  for (int64_t i = 0; i < n; ++i) data[(i + 1) * size - 1] ^= 0x80;  // little-endian: top byte
}

// n elements of `src_type` at `dst` in `dtype`: their bytes when the types agree, else widened
// (`dtype` is then float32).
void CopyAs(const void* src, DType src_type, int64_t n, DType dtype, uint8_t* dst) {
  if (src_type == dtype) {
    std::memcpy(dst, src, n * DTypeSize(dtype));
  } else {
    DTypeToFloats(src, src_type, n, reinterpret_cast<float*>(dst));
  }
}

// The rows of each present view (all [*, cols]) in order, in `dtype` (theirs, or float32).
std::vector<uint8_t> StackRows(std::initializer_list<const TensorView*> views, DType dtype) {
  int64_t total = 0;
  for (const TensorView* t : views) total += t->data != nullptr ? t->numel() : 0;
  std::vector<uint8_t> out(total * DTypeSize(dtype));
  uint8_t* dst = out.data();
  for (const TensorView* t : views) {
    if (t->data == nullptr) continue;
    CopyAs(t->data, t->dtype, t->numel(), dtype, dst);
    dst += t->numel() * DTypeSize(dtype);
  }
  return out;
}

// Row i of the result: row i of `left` ([rows, lc]) then row i of `right` ([rows, rc]), negated.
std::vector<uint8_t> ConcatColumnsNegatingRight(const TensorView& left, const TensorView& right,
                                                DType dtype) {
  const int64_t rows = right.shape[0], lc = left.data ? left.shape[1] : 0, rc = right.shape[1];
  const size_t size = DTypeSize(dtype);
  std::vector<uint8_t> out(rows * (lc + rc) * size);
  const auto copy_row = [&](const TensorView& t, int64_t row, int64_t cols, uint8_t* dst) {
    CopyAs(static_cast<const uint8_t*>(t.data) + row * cols * DTypeSize(t.dtype), t.dtype, cols,
           dtype, dst);
  };
  for (int64_t i = 0; i < rows; ++i) {
    uint8_t* row = out.data() + i * (lc + rc) * size;
    if (lc > 0) copy_row(left, i, lc, row);
    copy_row(right, i, rc, row + lc * size);
    Negate(row + lc * size, rc, dtype);
  }
  return out;
}

}  // namespace

absl::StatusOr<MergedLinear> MergeDecoderLora(const LinearWeights& w, float scale,
                                              ThreadPool& pool) {
  const int d = static_cast<int>(Adapter::kDecoder), e = static_cast<int>(Adapter::kEncoder);
  const TensorView &a_d = w.lora_a[d], &b_d = w.lora_b[d];
  if (w.weight.shape.size() != 2 || !IsFloatDType(w.weight.dtype) || a_d.data == nullptr ||
      a_d.shape.size() != 2) {
    return absl::InvalidArgumentError(absl::StrCat("merging the decoder LoRA: ", w.weight.name,
                                                   " has no decoder adapter to merge"));
  }
  const int64_t out_rows = w.weight.shape[0], in = w.weight.shape[1], r = a_d.shape[0];
  MPLUS_RETURN_IF_ERROR(CheckShape(a_d, r, in, "decoder A"));
  MPLUS_RETURN_IF_ERROR(CheckShape(b_d, out_rows, r, "decoder B"));
  const TensorView &a_e = w.lora_a[e], &b_e = w.lora_b[e];
  const bool has_encoder = a_e.data != nullptr;
  if (has_encoder) {
    const int64_t r_e = a_e.shape.empty() ? 0 : a_e.shape[0];
    MPLUS_RETURN_IF_ERROR(CheckShape(a_e, r_e, in, "encoder A"));
    MPLUS_RETURN_IF_ERROR(CheckShape(b_e, out_rows, r_e, "encoder B"));
  }

  MergedLinear m;
  const DType wt = w.weight.dtype;
  const size_t w_size = DTypeSize(wt);
  m.weight.resize(out_rows * in * w_size);
  // A^T in float32 for GemmNT (packed panels, register tiles): the product at k = r ran ~4x
  // faster than GemmNN reading A as stored; what is left is W's conversions and fresh pages.
  std::vector<float> b_float(out_rows * r), a_transposed(in * r);
  DTypeToFloats(b_d.data, b_d.dtype, out_rows * r, b_float.data());
  for (int64_t j = 0; j < r; ++j) {
    for (int64_t c = 0; c < in; ++c) a_transposed[c * r + j] = a_d.GetFloat(j * in + c);
  }
  pool.ParallelFor(out_rows, kRowsPerChunk, [&](int64_t begin, int64_t end) {
    std::vector<float> rows;
    for (int64_t j0 = begin; j0 < end; j0 += kRowsPerChunk) {
      const int64_t n = std::min(kRowsPerChunk, end - j0);
      rows.resize(n * in);
      DTypeToFloats(static_cast<const uint8_t*>(w.weight.data) + j0 * in * w_size, wt, n * in,
                    rows.data());
      cpu::GemmNT(n, in, r, b_float.data() + j0 * r, r, a_transposed.data(), DType::kF32, r,
                  rows.data(), in, scale, /*accumulate=*/true);
      FloatsToDType(rows.data(), n * in, wt, m.weight.data() + j0 * in * w_size);
    }
  });

  const auto shared = [](const TensorView& x, const TensorView& y) {
    return x.data == nullptr || x.dtype == y.dtype ? y.dtype : DType::kF32;
  };
  const DType a_type = shared(a_e, a_d), b_type = shared(b_e, b_d);
  const int64_t rank = r + (has_encoder ? a_e.shape[0] : 0);
  m.encoder_a = StackRows({&a_e, &a_d}, a_type);
  m.encoder_b = ConcatColumnsNegatingRight(b_e, b_d, b_type);
  m.views.weight = View(w.weight.name + " (decoder LoRA merged)", wt, out_rows, in, m.weight);
  m.views.lora_a[e] =
      View(a_d.name + " (encoder, with the decoder's)", a_type, rank, in, m.encoder_a);
  m.views.lora_b[e] = View(b_d.name + " (encoder, with the decoder's negated)", b_type, out_rows,
                           rank, m.encoder_b);
  return m;
}

}  // namespace mplus::engine
