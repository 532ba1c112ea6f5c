#include "engine/backend_checks.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace mplus::engine {

bool IsFloatDType(DType dtype) {
  return dtype == DType::kF32 || dtype == DType::kBF16 || dtype == DType::kF16 ||
         dtype == DType::kF8E4M3;
}

std::string ShapeString(const Tensor& t) {
  return absl::StrCat("[", absl::StrJoin(t.shape(), ","), "]");
}

absl::Status ShapeError(const char* op, const Tensor& a, const Tensor& b) {
  return absl::InvalidArgumentError(
      absl::StrCat(op, ": incompatible shapes ", ShapeString(a), " and ", ShapeString(b)));
}

absl::Status CheckOnDevice(const Tensor& t, Device device, const char* what) {
  if (t.empty() && t.numel() != 0) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": null tensor"));
  }
  if (t.device() != device) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": tensor is not on the ", device == Device::kCpu ? "CPU" : "GPU"));
  }
  return absl::OkStatus();
}

absl::Status CheckF32(const Tensor& t, Device device, const char* what) {
  if (absl::Status s = CheckOnDevice(t, device, what); !s.ok()) return s;
  if (t.dtype() != DType::kF32) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": expected F32, got ", DTypeName(t.dtype())));
  }
  return absl::OkStatus();
}

absl::Status CheckFloat(const Tensor& t, Device device, const char* what) {
  if (absl::Status s = CheckOnDevice(t, device, what); !s.ok()) return s;
  if (!IsFloatDType(t.dtype())) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": expected a float dtype, got ", DTypeName(t.dtype())));
  }
  return absl::OkStatus();
}

bool Overlap(const void* a, size_t a_bytes, const void* b, size_t b_bytes) {
  const auto ia = reinterpret_cast<uintptr_t>(a), ib = reinterpret_cast<uintptr_t>(b);
  return ia < ib + b_bytes && ib < ia + a_bytes;
}

absl::Status CheckEmbedding(const Tensor& table, absl::Span<const int32_t> ids, const Tensor& out) {
  if (out.dtype() != DType::kF32 && out.dtype() != table.dtype()) {
    return absl::InvalidArgumentError(absl::StrCat("Embedding: out must be F32 or the table's ",
                                                   DTypeName(table.dtype()), ", got ",
                                                   DTypeName(out.dtype())));
  }
  const int64_t vocab = table.rows();
  if (out.rows() != static_cast<int64_t>(ids.size()) || out.cols() != table.cols()) {
    return ShapeError("Embedding", table, out);
  }
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab) {
      return absl::InvalidArgumentError(
          absl::StrCat("Embedding: token id ", id, " out of range [0, ", vocab, ")"));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckRope(const Tensor& x, Device device, int64_t head_dim,
                       absl::Span<const int64_t> positions, const Tensor& inv_freq) {
  if (absl::Status s = CheckF32(x, device, "Rope x"); !s.ok()) return s;
  if (absl::Status s = CheckF32(inv_freq, device, "Rope inv_freq"); !s.ok()) return s;
  if (head_dim <= 0 || head_dim % 2 != 0 || x.cols() % head_dim != 0 ||
      inv_freq.numel() != head_dim / 2 || static_cast<int64_t>(positions.size()) != x.rows()) {
    return absl::InvalidArgumentError(absl::StrCat("Rope: x ", ShapeString(x), ", head_dim ",
                                                   head_dim, ", ", positions.size(),
                                                   " positions, inv_freq ", inv_freq.numel()));
  }
  return absl::OkStatus();
}

}  // namespace mplus::engine
