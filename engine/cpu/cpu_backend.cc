#include "engine/cpu/cpu_backend.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "engine/backend_checks.h"
#include "engine/cpu/gemm.h"
#include "engine/dot.h"

namespace mplus::engine::cpu {
namespace {

using engine::Dot;

absl::Status CheckCpu(const Tensor& t, const char* what) {
  return CheckOnDevice(t, Device::kCpu, what);
}
absl::Status CheckF32(const Tensor& t, const char* what) {
  return engine::CheckF32(t, Device::kCpu, what);
}
absl::Status CheckFloat(const Tensor& t, const char* what) {
  return engine::CheckFloat(t, Device::kCpu, what);
}

inline float SiluF(float x) { return x / (1.0f + std::exp(-x)); }

}  // namespace

void LoadFloats(const void* data, DType dtype, int64_t offset, int64_t n, float* out) {
  switch (dtype) {
    case DType::kF32:
      std::memcpy(out, static_cast<const float*>(data) + offset, n * sizeof(float));
      return;
    case DType::kBF16: {
      const uint16_t* p = static_cast<const uint16_t*>(data) + offset;
      for (int64_t i = 0; i < n; ++i) out[i] = BF16ToFloat(p[i]);
      return;
    }
    case DType::kF16: {
      const uint16_t* p = static_cast<const uint16_t*>(data) + offset;
      for (int64_t i = 0; i < n; ++i) out[i] = F16ToFloat(p[i]);
      return;
    }
    case DType::kF8E4M3: {
      const uint8_t* p = static_cast<const uint8_t*>(data) + offset;
      for (int64_t i = 0; i < n; ++i) out[i] = F8E4M3ToFloat(p[i]);
      return;
    }
    case DType::kI64:
    case DType::kI32:
      std::abort();  // callers check IsFloatDType first
  }
}

absl::StatusOr<Tensor> CpuBackend::Allocate(DType dtype, std::vector<int64_t> shape) {
  int64_t n = 1;
  for (int64_t s : shape) {
    if (s < 0) return absl::InvalidArgumentError("Allocate: negative dimension");
    n *= s;
  }
  const size_t bytes = std::max<size_t>(1, static_cast<size_t>(n) * DTypeSize(dtype));
  std::shared_ptr<void> storage(std::malloc(bytes), std::free);
  if (storage == nullptr) {
    return absl::ResourceExhaustedError(
        absl::StrCat("Allocate: cannot allocate ", bytes, " bytes"));
  }
  return Tensor::Own(dtype, std::move(shape), Device::kCpu, std::move(storage));
}

absl::StatusOr<Tensor> CpuBackend::UploadWeight(const TensorView& view) {
  if (view.data == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("UploadWeight: ", view.name, " has no data"));
  }
  // Weights are only ever read by the ops, so borrowing the mapped (read-only) bytes is safe.
  return Tensor::Borrow(view.dtype, view.shape, Device::kCpu, const_cast<void*>(view.data));
}

absl::Status CpuBackend::CopyFromHost(const void* src, DType src_dtype, const Tensor& dst) {
  if (absl::Status s = CheckCpu(dst, "CopyFromHost"); !s.ok()) return s;
  if (src_dtype == dst.dtype()) {
    std::memcpy(dst.data(), src, dst.nbytes());
    return absl::OkStatus();
  }
  if (dst.dtype() != DType::kF32 || !IsFloatDType(src_dtype)) {
    return absl::InvalidArgumentError(absl::StrCat("CopyFromHost: cannot convert ",
                                                   std::string(DTypeName(src_dtype)), " to ",
                                                   std::string(DTypeName(dst.dtype()))));
  }
  LoadFloats(src, src_dtype, 0, dst.numel(), dst.data_as<float>());
  return absl::OkStatus();
}

absl::Status CpuBackend::CopyToHost(const Tensor& src, void* dst) {
  if (absl::Status s = CheckCpu(src, "CopyToHost"); !s.ok()) return s;
  std::memcpy(dst, src.data(), src.nbytes());
  return absl::OkStatus();
}

absl::Status CpuBackend::Copy(const Tensor& src, const Tensor& dst) {
  if (absl::Status s = CheckCpu(src, "Copy"); !s.ok()) return s;
  if (absl::Status s = CheckCpu(dst, "Copy"); !s.ok()) return s;
  if (src.numel() != dst.numel()) return ShapeError("Copy", src, dst);
  if (src.dtype() == dst.dtype()) {
    std::memmove(dst.data(), src.data(), src.nbytes());
    return absl::OkStatus();
  }
  if (Overlap(src.data(), src.nbytes(), dst.data(), dst.nbytes())) {
    return absl::InvalidArgumentError("Copy: a converting copy must not alias");
  }
  if (src.dtype() == DType::kF32 && dst.dtype() == DType::kBF16) {
    const float* from = src.data_as<const float>();
    uint16_t* to = dst.data_as<uint16_t>();
    for (int64_t i = 0; i < src.numel(); ++i) to[i] = FloatToBF16(from[i]);
    return absl::OkStatus();
  }
  if (src.dtype() == DType::kF32 && dst.dtype() == DType::kF8E4M3) {
    const float* from = src.data_as<const float>();
    uint8_t* to = dst.data_as<uint8_t>();
    for (int64_t i = 0; i < src.numel(); ++i) to[i] = FloatToF8E4M3(from[i]);
    return absl::OkStatus();
  }
  if ((src.dtype() == DType::kBF16 || src.dtype() == DType::kF8E4M3) &&
      dst.dtype() == DType::kF32) {
    LoadFloats(src.data(), src.dtype(), 0, src.numel(), dst.data_as<float>());
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(absl::StrCat("Copy: cannot convert ", DTypeName(src.dtype()),
                                                 " to ", DTypeName(dst.dtype())));
}

absl::Status CpuBackend::MatMul(const Tensor& x, const Tensor& w, const Tensor& out, float alpha,
                                bool accumulate) {
  if (absl::Status s = CheckF32(x, "MatMul x"); !s.ok()) return s;
  if (absl::Status s = CheckFloat(w, "MatMul w"); !s.ok()) return s;
  if (absl::Status s = CheckF32(out, "MatMul out"); !s.ok()) return s;
  const int64_t n = x.rows(), k = x.cols(), m = w.rows();
  if (w.cols() != k) return ShapeError("MatMul", x, w);
  if (out.rows() != n || out.cols() != m) return ShapeError("MatMul out", out, w);
  const float* xd = x.data_as<const float>();
  float* od = out.data_as<float>();
  const void* wd = w.data();
  const DType wt = w.dtype();
  const size_t wsize = DTypeSize(wt);
  if (n <= kGemvMaxRows) {
    // Decode: memory-bound, so split the weight rows evenly and stream each once.
    constexpr int64_t kRows = 16;
    pool_.ParallelFor((m + kRows - 1) / kRows, 1, [&](int64_t b0, int64_t b1) {
      const int64_t j0 = b0 * kRows, j1 = std::min(m, b1 * kRows);
      GemvNT(n, j1 - j0, k, xd, k, static_cast<const char*>(wd) + j0 * k * wsize, wt, k, od + j0, m,
             alpha, accumulate);
    });
    return absl::OkStatus();
  }
  // Prefill: tasks are (row block of x, column block of out); each packs its weight block.
  constexpr int64_t kColBlock = 128, kRowBlock = 384;
  const int64_t col_blocks = (m + kColBlock - 1) / kColBlock;
  const int64_t row_blocks = (n + kRowBlock - 1) / kRowBlock;
  pool_.ParallelFor(col_blocks * row_blocks, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t i0 = (t / col_blocks) * kRowBlock, i1 = std::min(n, i0 + kRowBlock);
      const int64_t j0 = (t % col_blocks) * kColBlock, j1 = std::min(m, j0 + kColBlock);
      GemmNT(i1 - i0, j1 - j0, k, xd + i0 * k, k, static_cast<const char*>(wd) + j0 * k * wsize, wt,
             k, od + i0 * m + j0, m, alpha, accumulate);
    }
  });
  return absl::OkStatus();
}

absl::Status CpuBackend::RmsNorm(const Tensor& x, const Tensor& weight, float eps,
                                 const Tensor& out) {
  if (absl::Status s = CheckF32(x, "RmsNorm x"); !s.ok()) return s;
  if (absl::Status s = CheckFloat(weight, "RmsNorm weight"); !s.ok()) return s;
  if (absl::Status s = CheckF32(out, "RmsNorm out"); !s.ok()) return s;
  const int64_t n = x.rows(), d = x.cols();
  if (weight.numel() != d || out.rows() != n || out.cols() != d) {
    return ShapeError("RmsNorm", x, weight);
  }
  std::vector<float> wf(static_cast<size_t>(d));
  LoadFloats(weight.data(), weight.dtype(), 0, d, wf.data());
  const float* xd = x.data_as<const float>();
  float* od = out.data_as<float>();
  pool_.ParallelFor(n, 8, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = xd + r * d;
      float* orow = od + r * d;
      const float mean_sq = Dot(xr, xr, d) / static_cast<float>(d);
      const float inv = 1.0f / std::sqrt(mean_sq + eps);
      for (int64_t i = 0; i < d; ++i) orow[i] = wf[i] * (xr[i] * inv);
    }
  });
  return absl::OkStatus();
}

absl::Status CpuBackend::Rope(const Tensor& x, int64_t head_dim,
                              absl::Span<const int64_t> positions, const Tensor& inv_freq) {
  if (absl::Status s = CheckRope(x, Device::kCpu, head_dim, positions, inv_freq); !s.ok()) {
    return s;
  }
  const int64_t n = x.rows(), cols = x.cols(), half = head_dim / 2;
  const float* freq = inv_freq.data_as<const float>();
  float* xd = x.data_as<float>();
  pool_.ParallelFor(n, 4, [&](int64_t r0, int64_t r1) {
    std::vector<float> cos_t(static_cast<size_t>(half)), sin_t(static_cast<size_t>(half));
    for (int64_t r = r0; r < r1; ++r) {
      // As HF: the angle is a float32 product, cos/sin of it in float32.
      const float pos = static_cast<float>(positions[r]);
      for (int64_t j = 0; j < half; ++j) {
        const float angle = pos * freq[j];
        cos_t[j] = std::cos(angle);
        sin_t[j] = std::sin(angle);
      }
      for (int64_t h = 0; h < cols / head_dim; ++h) {
        float* v = xd + r * cols + h * head_dim;
        for (int64_t j = 0; j < half; ++j) {
          const float a = v[j], b = v[j + half];
          v[j] = a * cos_t[j] - b * sin_t[j];
          v[j + half] = b * cos_t[j] + a * sin_t[j];
        }
      }
    }
  });
  return absl::OkStatus();
}

absl::Status CpuBackend::Attention(const Tensor& q, const Tensor& k, const Tensor& v,
                                   int64_t num_heads, int64_t num_kv_heads, int64_t head_dim,
                                   const Tensor& out) {
  for (const Tensor* t : {&q, &out}) {
    if (absl::Status s = CheckF32(*t, "Attention"); !s.ok()) return s;
  }
  for (const Tensor* t : {&k, &v}) {
    if (absl::Status s = CheckCpu(*t, "Attention"); !s.ok()) return s;
  }
  const DType kv_dtype = k.dtype();
  if ((kv_dtype != DType::kF32 && kv_dtype != DType::kBF16 && kv_dtype != DType::kF8E4M3) ||
      v.dtype() != kv_dtype) {
    return absl::InvalidArgumentError(
        absl::StrCat("Attention: K and V must both be F32, BF16 or F8_E4M3, got ",
                     DTypeName(k.dtype()), " and ", DTypeName(v.dtype())));
  }
  const int64_t nq = q.rows(), nk = k.rows();
  if (num_kv_heads <= 0 || num_heads % num_kv_heads != 0 || q.cols() != num_heads * head_dim ||
      k.cols() != num_kv_heads * head_dim || v.rows() != nk || v.cols() != k.cols() ||
      out.rows() != nq || out.cols() != q.cols() || nk < nq) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Attention: q ", ShapeString(q), " k ", ShapeString(k), " v ", ShapeString(v), " out ",
        ShapeString(out), " heads ", num_heads, "/", num_kv_heads, " head_dim ", head_dim));
  }
  const int64_t group = num_heads / num_kv_heads, kv_cols = k.cols();
  const int64_t q_cols = q.cols(), o_cols = out.cols();
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  const float* qd = q.data_as<const float>();
  const char* kd = static_cast<const char*>(k.data());
  const char* vd = static_cast<const char*>(v.data());
  const size_t kv_size = DTypeSize(kv_dtype);
  float* od = out.data_as<float>();
  // Tasks are (kv head, block of queries). The group's heads are stacked as rows (row
  // hh * nb + ii is head g * group + hh of query i0 + ii), so K and V are packed or streamed
  // once per task: S = scale * Q·K^T over the keys the block's last query sees, a row softmax
  // up to each row's causal limit, then O = P·V.
  constexpr int64_t kQueryBlock = 32;
  const int64_t q_blocks = (nq + kQueryBlock - 1) / kQueryBlock;
  pool_.ParallelFor(num_kv_heads * q_blocks, 1, [&](int64_t t0, int64_t t1) {
    thread_local std::vector<float> qbuf, scores, obuf;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t g = t / q_blocks, i0 = (t % q_blocks) * kQueryBlock;
      const int64_t nb = std::min(nq, i0 + kQueryBlock) - i0, rows = group * nb;
      const int64_t keys = nk - nq + i0 + nb;  // seen by the block's last query
      qbuf.resize(static_cast<size_t>(rows * head_dim));
      obuf.resize(static_cast<size_t>(rows * head_dim));
      scores.resize(static_cast<size_t>(rows * keys));
      for (int64_t hh = 0; hh < group; ++hh) {
        for (int64_t ii = 0; ii < nb; ++ii) {
          const float* src = qd + (i0 + ii) * q_cols + (g * group + hh) * head_dim;
          std::copy(src, src + head_dim, qbuf.data() + (hh * nb + ii) * head_dim);
        }
      }
      float* s = scores.data();
      const char* kg = kd + g * head_dim * kv_size;
      if (rows <= kGemvMaxRows) {
        GemvNT(rows, keys, head_dim, qbuf.data(), head_dim, kg, kv_dtype, kv_cols, s, keys, scale,
               false);
      } else {
        GemmNT(rows, keys, head_dim, qbuf.data(), head_dim, kg, kv_dtype, kv_cols, s, keys, scale,
               false);
      }
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t visible = nk - nq + i0 + r % nb + 1;
        float* p = s + r * keys;
        float mx = -INFINITY;
        for (int64_t j = 0; j < visible; ++j) mx = std::max(mx, p[j]);
        float sum = 0;
        for (int64_t j = 0; j < visible; ++j) {
          p[j] = std::exp(p[j] - mx);
          sum += p[j];
        }
        const float inv = 1.0f / sum;
        for (int64_t j = 0; j < visible; ++j) p[j] *= inv;
        std::fill(p + visible, p + keys, 0.0f);
      }
      GemmNN(rows, head_dim, keys, s, keys, vd + g * head_dim * kv_size, kv_dtype, kv_cols,
             obuf.data(), head_dim, 1.0f, false);
      for (int64_t hh = 0; hh < group; ++hh) {
        for (int64_t ii = 0; ii < nb; ++ii) {
          const float* src = obuf.data() + (hh * nb + ii) * head_dim;
          std::copy(src, src + head_dim, od + (i0 + ii) * o_cols + (g * group + hh) * head_dim);
        }
      }
    }
  });
  return absl::OkStatus();
}

absl::Status CpuBackend::SiluMul(const Tensor& gate, const Tensor& up, const Tensor& out) {
  for (const Tensor* t : {&gate, &up, &out}) {
    if (absl::Status s = CheckF32(*t, "SiluMul"); !s.ok()) return s;
  }
  if (gate.numel() != up.numel() || out.numel() != gate.numel())
    return ShapeError("SiluMul", gate, up);
  const float* g = gate.data_as<const float>();
  const float* u = up.data_as<const float>();
  float* o = out.data_as<float>();
  pool_.ParallelFor(gate.numel(), 4096, [&](int64_t a, int64_t b) {
    for (int64_t i = a; i < b; ++i) o[i] = SiluF(g[i]) * u[i];
  });
  return absl::OkStatus();
}

absl::Status CpuBackend::Silu(const Tensor& x) {
  if (absl::Status s = CheckF32(x, "Silu"); !s.ok()) return s;
  float* d = x.data_as<float>();
  pool_.ParallelFor(x.numel(), 4096, [&](int64_t a, int64_t b) {
    for (int64_t i = a; i < b; ++i) d[i] = SiluF(d[i]);
  });
  return absl::OkStatus();
}

absl::Status CpuBackend::Add(const Tensor& a, const Tensor& b, const Tensor& out) {
  for (const Tensor* t : {&a, &b, &out}) {
    if (absl::Status s = CheckF32(*t, "Add"); !s.ok()) return s;
  }
  if (a.numel() != b.numel() || out.numel() != a.numel()) return ShapeError("Add", a, b);
  const float* ad = a.data_as<const float>();
  const float* bd = b.data_as<const float>();
  float* o = out.data_as<float>();
  for (int64_t i = 0; i < a.numel(); ++i) o[i] = ad[i] + bd[i];
  return absl::OkStatus();
}

absl::Status CpuBackend::AddRow(const Tensor& x, const Tensor& row) {
  if (absl::Status s = CheckF32(x, "AddRow x"); !s.ok()) return s;
  if (absl::Status s = CheckFloat(row, "AddRow row"); !s.ok()) return s;
  const int64_t d = x.cols();
  if (row.numel() != d) return ShapeError("AddRow", x, row);
  std::vector<float> rf(static_cast<size_t>(d));
  LoadFloats(row.data(), row.dtype(), 0, d, rf.data());
  float* xd = x.data_as<float>();
  for (int64_t r = 0; r < x.rows(); ++r) {
    for (int64_t i = 0; i < d; ++i) xd[r * d + i] += rf[i];
  }
  return absl::OkStatus();
}

absl::Status CpuBackend::Embedding(const Tensor& table, absl::Span<const int32_t> ids,
                                   const Tensor& out) {
  if (absl::Status s = CheckFloat(table, "Embedding table"); !s.ok()) return s;
  if (absl::Status s = CheckCpu(out, "Embedding out"); !s.ok()) return s;
  // Every id is checked before any row is written: a bad id leaves `out` untouched.
  if (absl::Status s = CheckEmbedding(table, ids, out); !s.ok()) return s;
  const int64_t d = table.cols();
  for (size_t i = 0; i < ids.size(); ++i) {
    if (out.dtype() == table.dtype()) {  // plain row gather
      const size_t row_bytes = static_cast<size_t>(d) * DTypeSize(table.dtype());
      std::memcpy(static_cast<char*>(out.data()) + i * row_bytes,
                  static_cast<const char*>(table.data()) + ids[i] * row_bytes, row_bytes);
    } else {
      LoadFloats(table.data(), table.dtype(), ids[i] * d, d, out.data_as<float>() + i * d);
    }
  }
  return absl::OkStatus();
}

}  // namespace mplus::engine::cpu
