#include "engine/cpu/gemm.h"

#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "common/cpu_features.h"

namespace mplus::engine::cpu {
namespace {

// Register tile: kMr x rows times kNr output columns (12 of the 16 ymm registers accumulate).
// Cache blocks: a packed weight block of kKc x kNc floats (128 KiB) stays in L2 while every x
// row streams past it; one kKc x kNr panel (16 KiB) stays in L1.
constexpr int64_t kMr = 6, kNr = kPanelRows, kKc = 256, kNc = 128;

// Every float8 e4m3 value, by its bits (widening is a table lookup, or a gather of eight).
const float* F8E4M3Table() {
  static const auto* table = [] {
    auto* t = new float[256];
    for (int b = 0; b < 256; ++b) t[b] = F8E4M3ToFloat(static_cast<uint8_t>(b));
    return t;
  }();
  return table;
}

inline float Widen(const void* w, DType wt, int64_t i) {
  switch (wt) {
    case DType::kBF16:
      return BF16ToFloat(static_cast<const uint16_t*>(w)[i]);
    case DType::kF16:
      return F16ToFloat(static_cast<const uint16_t*>(w)[i]);
    case DType::kF8E4M3:
      return F8E4M3Table()[static_cast<const uint8_t*>(w)[i]];
    default:
      return static_cast<const float*>(w)[i];
  }
}

// Portable fallbacks (CPUs without AVX2): plain loops with several accumulators.
float DotPortable(const float* a, const void* w, DType wt, int64_t off, int64_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int j = 0; j < 8; ++j) acc[j] += a[i + j] * Widen(w, wt, off + i + j);
  }
  float sum = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; i < n; ++i) sum += a[i] * Widen(w, wt, off + i);
  return sum;
}

void GemmNTPortable(int64_t n, int64_t m, int64_t k, const float* x, int64_t ldx, const void* w,
                    DType wt, int64_t ldw, float* out, int64_t ldo, float alpha, bool accumulate) {
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < m; ++j) {
      const float v = alpha * DotPortable(x + i * ldx, w, wt, j * ldw, k);
      out[i * ldo + j] = accumulate ? out[i * ldo + j] + v : v;
    }
  }
}

// Elements [kk0, kc) of one panel (the part the register transposes leave, or all of it).
void PackTransposedTail(const void* w, DType wt, int64_t ldw, int64_t row0, int64_t cols,
                        int64_t kk0, int64_t kc, float* panel) {
  for (int64_t kk = kk0; kk < kc; ++kk) {
    for (int64_t jj = 0; jj < kNr; ++jj) {
      panel[kk * kNr + jj] = jj < cols ? Widen(w, wt, row0 + jj * ldw + kk) : 0.0f;
    }
  }
}

// --- AVX2 ---------------------------------------------------------------------------------

// 8 weights from element i, widened to float32.
template <DType T>
MPLUS_TARGET_AVX2_FMA inline __m256 Load8(const void* w, int64_t i) {
  if constexpr (T == DType::kF32) {
    return _mm256_loadu_ps(static_cast<const float*>(w) + i);
  } else if constexpr (T == DType::kF8E4M3) {
    const __m128i b =
        _mm_loadl_epi64(reinterpret_cast<const __m128i*>(static_cast<const uint8_t*>(w) + i));
    return _mm256_i32gather_ps(F8E4M3Table(), _mm256_cvtepu8_epi32(b), 4);
  } else {
    const __m128i h =
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(w) + i));
    if constexpr (T == DType::kBF16) {
      return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    } else {
      return _mm256_cvtph_ps(h);
    }
  }
}

MPLUS_TARGET_AVX2_FMA inline float HSum(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)));
}

// In-register 8 x 8 transpose: r[i] holds row i on entry and column i on return.
MPLUS_TARGET_AVX2_FMA inline void Transpose8(__m256 r[8]) {
  __m256 t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    u[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
    r[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
  }
}

// Packs columns [j0, j0 + nc) x k-range [k0, k0 + kc) of w^T into panels of kNr columns:
// buf[p * kc * kNr + kk * kNr + jj] = w[(j0 + p * kNr + jj) * ldw + k0 + kk], zero past nc.
// Full panels go through 8 x 8 register transposes; the ragged edges element by element.
template <DType T>
MPLUS_TARGET_AVX2_FMA void PackTransposed(const void* w, int64_t ldw, int64_t j0, int64_t nc,
                                          int64_t k0, int64_t kc, float* buf) {
  constexpr int64_t kElementBytes = T == DType::kF32 ? 4 : T == DType::kF8E4M3 ? 1 : 2;
  for (int64_t p = 0; p * kNr < nc; ++p) {
    float* panel = buf + p * kc * kNr;
    const int64_t cols = std::min(kNr, nc - p * kNr);
    const int64_t row0 = (j0 + p * kNr) * ldw + k0;
    // Rows read eight at a time defeat the hardware prefetcher (it follows one stream per
    // row), so the next full panel's rows are prefetched at the offset being read.
    const bool prefetch_next = (p + 2) * kNr <= nc;
    int64_t kk = 0;
    if (cols == kNr) {
      for (; kk + 8 <= kc; kk += 8) {
        for (int64_t half = 0; half < kNr; half += 8) {
          __m256 r[8];
#pragma GCC unroll 8
          for (int i = 0; i < 8; ++i) r[i] = Load8<T>(w, row0 + (half + i) * ldw + kk);
          if (prefetch_next) {
            const char* next =
                static_cast<const char*>(w) + (row0 + (kNr + half) * ldw + kk) * kElementBytes;
#pragma GCC unroll 8
            for (int i = 0; i < 8; ++i) {
              _mm_prefetch(next + i * ldw * kElementBytes, _MM_HINT_T0);
            }
          }
          Transpose8(r);
#pragma GCC unroll 8
          for (int i = 0; i < 8; ++i) _mm256_storeu_ps(panel + (kk + i) * kNr + half, r[i]);
        }
      }
    }
    PackTransposedTail(w, T, ldw, row0, cols, kk, kc, panel);
  }
}

// Packs rows [k0, k0 + kc) x columns [j0, j0 + nc) of a row-major v into the same panel layout.
template <DType T>
MPLUS_TARGET_AVX2_FMA void PackRows(const void* v, int64_t ldv, int64_t j0, int64_t nc, int64_t k0,
                                    int64_t kc, float* buf) {
  for (int64_t p = 0; p * kNr < nc; ++p) {
    float* panel = buf + p * kc * kNr;
    const int64_t cols = std::min(kNr, nc - p * kNr);
    const int64_t src = k0 * ldv + j0 + p * kNr;  // element index of the panel's first value
    if (cols == kNr) {
      for (int64_t kk = 0; kk < kc; ++kk) {
        _mm256_storeu_ps(panel + kk * kNr, Load8<T>(v, src + kk * ldv));
        _mm256_storeu_ps(panel + kk * kNr + 8, Load8<T>(v, src + kk * ldv + 8));
      }
      continue;
    }
    for (int64_t kk = 0; kk < kc; ++kk) {
      for (int64_t jj = 0; jj < kNr; ++jj)
        panel[kk * kNr + jj] = jj < cols ? Widen(v, T, src + kk * ldv + jj) : 0.f;
    }
  }
}

// out[MR x ncols] (+)= alpha * x[MR x kc] · panel[kc x kNr].
template <int MR>
MPLUS_TARGET_AVX2_FMA void MicroKernel(const float* a, const float* panel, int64_t kc, float* out,
                                       int64_t ldo, int64_t ncols, float alpha, bool add) {
  __m256 c0[MR], c1[MR];
#pragma GCC unroll 6
  for (int r = 0; r < MR; ++r) c0[r] = c1[r] = _mm256_setzero_ps();
  for (int64_t kk = 0; kk < kc; ++kk) {
    const __m256 b0 = _mm256_loadu_ps(panel + kk * kNr);
    const __m256 b1 = _mm256_loadu_ps(panel + kk * kNr + 8);
#pragma GCC unroll 6
    for (int r = 0; r < MR; ++r) {
      const __m256 av = _mm256_broadcast_ss(a + kk * kMr + r);
      c0[r] = _mm256_fmadd_ps(av, b0, c0[r]);
      c1[r] = _mm256_fmadd_ps(av, b1, c1[r]);
    }
  }
  const __m256 va = _mm256_set1_ps(alpha);
#pragma GCC unroll 6
  for (int r = 0; r < MR; ++r) {
    float* o = out + r * ldo;
    if (ncols == kNr) {
      const __m256 o0 = add ? _mm256_loadu_ps(o) : _mm256_setzero_ps();
      const __m256 o1 = add ? _mm256_loadu_ps(o + 8) : _mm256_setzero_ps();
      _mm256_storeu_ps(o, _mm256_fmadd_ps(va, c0[r], o0));
      _mm256_storeu_ps(o + 8, _mm256_fmadd_ps(va, c1[r], o1));
    } else {
      alignas(32) float t[kNr];
      _mm256_store_ps(t, c0[r]);
      _mm256_store_ps(t + 8, c1[r]);
      for (int64_t j = 0; j < ncols; ++j) o[j] = (add ? o[j] : 0.0f) + alpha * t[j];
    }
  }
}

MPLUS_TARGET_AVX2_FMA void RunMicroKernel(int64_t mr, const float* a, const float* panel,
                                          int64_t kc, float* out, int64_t ldo, int64_t ncols,
                                          float alpha, bool add) {
  switch (mr) {
    case 6:
      return MicroKernel<6>(a, panel, kc, out, ldo, ncols, alpha, add);
    case 5:
      return MicroKernel<5>(a, panel, kc, out, ldo, ncols, alpha, add);
    case 4:
      return MicroKernel<4>(a, panel, kc, out, ldo, ncols, alpha, add);
    case 3:
      return MicroKernel<3>(a, panel, kc, out, ldo, ncols, alpha, add);
    case 2:
      return MicroKernel<2>(a, panel, kc, out, ldo, ncols, alpha, add);
    default:
      return MicroKernel<1>(a, panel, kc, out, ldo, ncols, alpha, add);
  }
}

// Packs x rows [0, mr) x [0, kc) interleaved (a[kk * kMr + r]) so the kernel's broadcasts read
// one contiguous stream instead of kMr rows whose equal strides alias in L1.
void PackA(const float* x, int64_t ldx, int64_t mr, int64_t kc, float* a) {
  for (int64_t r = 0; r < mr; ++r) {
    for (int64_t kk = 0; kk < kc; ++kk) a[kk * kMr + r] = x[r * ldx + kk];
  }
}

float* PackBuffer() {
  thread_local std::vector<float> buf(static_cast<size_t>(kKc * kNc));
  return buf.data();
}

float* PackABuffer() {
  thread_local std::vector<float> buf(static_cast<size_t>(kKc * kMr));
  return buf.data();
}

// Blocked GEMM over packed panels; `pack(j0, nc, k0, kc, buf)` fills one weight block.
template <typename Pack>
MPLUS_TARGET_AVX2_FMA void BlockedGemm(int64_t n, int64_t m, int64_t k, const float* x, int64_t ldx,
                                       float* out, int64_t ldo, float alpha, bool accumulate,
                                       const Pack& pack) {
  float* buf = PackBuffer();
  float* abuf = PackABuffer();
  for (int64_t j0 = 0; j0 < m; j0 += kNc) {
    const int64_t nc = std::min(kNc, m - j0);
    for (int64_t k0 = 0; k0 < k; k0 += kKc) {
      const int64_t kc = std::min(kKc, k - k0);
      pack(j0, nc, k0, kc, buf);
      const bool add = accumulate || k0 > 0;
      for (int64_t i0 = 0; i0 < n; i0 += kMr) {
        const int64_t mr = std::min(kMr, n - i0);
        PackA(x + i0 * ldx + k0, ldx, mr, kc, abuf);
        for (int64_t p = 0; p * kNr < nc; ++p) {
          RunMicroKernel(mr, abuf, buf + p * kc * kNr, kc, out + i0 * ldo + j0 + p * kNr, ldo,
                         std::min(kNr, nc - p * kNr), alpha, add);
        }
      }
    }
    if (k == 0 && !accumulate) {
      for (int64_t i = 0; i < n; ++i) std::fill(out + i * ldo + j0, out + i * ldo + j0 + nc, 0.f);
    }
  }
}

template <DType T>
MPLUS_TARGET_AVX2_FMA void GemmNTAvx2(int64_t n, int64_t m, int64_t k, const float* x, int64_t ldx,
                                      const void* w, int64_t ldw, float* out, int64_t ldo,
                                      float alpha, bool accumulate) {
  BlockedGemm(n, m, k, x, ldx, out, ldo, alpha, accumulate,
              [&](int64_t j0, int64_t nc, int64_t k0, int64_t kc, float* buf) {
                PackTransposed<T>(w, ldw, j0, nc, k0, kc, buf);
              });
}

// Four weight rows against R x rows: each weight vector is loaded and widened once.
template <DType T, int R>
MPLUS_TARGET_AVX2_FMA void Gemv4(const float* x, int64_t ldx, const void* w, const int64_t* rows,
                                 int64_t k, float sums[R][4]) {
  __m256 acc[R][4];
#pragma GCC unroll 2
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int q = 0; q < 4; ++q) acc[r][q] = _mm256_setzero_ps();
  }
  int64_t c = 0;
  for (; c + 8 <= k; c += 8) {
    __m256 xv[R];
#pragma GCC unroll 2
    for (int r = 0; r < R; ++r) xv[r] = _mm256_loadu_ps(x + r * ldx + c);
#pragma GCC unroll 4
    for (int q = 0; q < 4; ++q) {
      const __m256 wv = Load8<T>(w, rows[q] + c);
#pragma GCC unroll 2
      for (int r = 0; r < R; ++r) acc[r][q] = _mm256_fmadd_ps(xv[r], wv, acc[r][q]);
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int q = 0; q < 4; ++q) {
      float s = HSum(acc[r][q]);
      for (int64_t t = c; t < k; ++t) s += x[r * ldx + t] * Widen(w, T, rows[q] + t);
      sums[r][q] = s;
    }
  }
}

template <DType T>
MPLUS_TARGET_AVX2_FMA void GemvNTAvx2(int64_t n, int64_t m, int64_t k, const float* x, int64_t ldx,
                                      const void* w, int64_t ldw, float* out, int64_t ldo,
                                      float alpha, bool accumulate) {
  for (int64_t j = 0; j < m; j += 4) {
    const int64_t valid = std::min<int64_t>(4, m - j);
    int64_t rows[4];
    // Missing rows of the last group repeat the last valid row and are not stored.
    for (int q = 0; q < 4; ++q) rows[q] = (j + std::min<int64_t>(q, valid - 1)) * ldw;
    for (int64_t i = 0; i < n;) {
      float sums[2][4];
      const int r = n - i >= 2 ? 2 : 1;
      if (r == 2) {
        Gemv4<T, 2>(x + i * ldx, ldx, w, rows, k, sums);
      } else {
        Gemv4<T, 1>(x + i * ldx, ldx, w, rows, k, sums);
      }
      for (int rr = 0; rr < r; ++rr) {
        for (int q = 0; q < valid; ++q) {
          float& o = out[(i + rr) * ldo + j + q];
          const float v = alpha * sums[rr][q];
          o = accumulate ? o + v : v;
        }
      }
      i += r;
    }
  }
}

// Few rows of P times V without packing: keys in blocks of kKeyBlock rows (kept in L1 while
// every 16-column slice passes over them), partial sums in `acc` [R x m].
template <int R, DType T>
MPLUS_TARGET_AVX2_FMA void GemvNNAvx2(int64_t m, int64_t k, const float* p, int64_t ldp,
                                      const void* v, int64_t ldv, float* out, int64_t ldo,
                                      float alpha, bool accumulate) {
  constexpr int64_t kKeyBlock = 64;
  thread_local std::vector<float> acc_buf;
  acc_buf.assign(static_cast<size_t>(R * m), 0.0f);
  float* acc = acc_buf.data();
  const int64_t full = m / 16 * 16;
  for (int64_t j0 = 0; j0 < k; j0 += kKeyBlock) {
    const int64_t j1 = std::min(k, j0 + kKeyBlock);
    for (int64_t c0 = 0; c0 < full; c0 += 16) {
      __m256 a[R][2];
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) {
        a[r][0] = _mm256_loadu_ps(acc + r * m + c0);
        a[r][1] = _mm256_loadu_ps(acc + r * m + c0 + 8);
      }
      for (int64_t j = j0; j < j1; ++j) {
        const __m256 v0 = Load8<T>(v, j * ldv + c0);
        const __m256 v1 = Load8<T>(v, j * ldv + c0 + 8);
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) {
          const __m256 pb = _mm256_broadcast_ss(p + r * ldp + j);
          a[r][0] = _mm256_fmadd_ps(pb, v0, a[r][0]);
          a[r][1] = _mm256_fmadd_ps(pb, v1, a[r][1]);
        }
      }
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) {
        _mm256_storeu_ps(acc + r * m + c0, a[r][0]);
        _mm256_storeu_ps(acc + r * m + c0 + 8, a[r][1]);
      }
    }
    for (int r = 0; r < R; ++r) {
      for (int64_t c = full; c < m; ++c) {
        for (int64_t j = j0; j < j1; ++j)
          acc[r * m + c] += p[r * ldp + j] * Widen(v, T, j * ldv + c);
      }
    }
  }
  for (int r = 0; r < R; ++r) {
    float* o = out + r * ldo;
    for (int64_t c = 0; c < m; ++c) o[c] = (accumulate ? o[c] : 0.0f) + alpha * acc[r * m + c];
  }
}

// Calls f(std::integral_constant<DType, T>{}) with T the element type wt (float32 for any type
// without its own kernels), so each entry point picks its AVX2 instantiation in one line.
template <typename F>
void WithElementType(DType wt, F&& f) {
  switch (wt) {
    case DType::kBF16:
      return f(std::integral_constant<DType, DType::kBF16>{});
    case DType::kF16:
      return f(std::integral_constant<DType, DType::kF16>{});
    case DType::kF8E4M3:
      return f(std::integral_constant<DType, DType::kF8E4M3>{});
    default:
      return f(std::integral_constant<DType, DType::kF32>{});
  }
}

}  // namespace

void GemmNT(int64_t n, int64_t m, int64_t k, const float* x, int64_t ldx, const void* w, DType wt,
            int64_t ldw, float* out, int64_t ldo, float alpha, bool accumulate) {
  if (!HasAvx2Fma()) {
    return GemmNTPortable(n, m, k, x, ldx, w, wt, ldw, out, ldo, alpha, accumulate);
  }
  WithElementType(wt, [&](auto t) {
    GemmNTAvx2<decltype(t)::value>(n, m, k, x, ldx, w, ldw, out, ldo, alpha, accumulate);
  });
}

void PackTransposedPanels(const void* w, DType wt, int64_t ldw, int64_t j0, int64_t nc, int64_t k,
                          float* buf) {
  if (!HasAvx2Fma()) {
    for (int64_t p = 0; p * kNr < nc; ++p) {
      PackTransposedTail(w, wt, ldw, (j0 + p * kNr) * ldw, std::min(kNr, nc - p * kNr), 0, k,
                         buf + p * k * kNr);
    }
    return;
  }
  WithElementType(wt,
                  [&](auto t) { PackTransposed<decltype(t)::value>(w, ldw, j0, nc, 0, k, buf); });
}

void GemvNT(int64_t n, int64_t m, int64_t k, const float* x, int64_t ldx, const void* w, DType wt,
            int64_t ldw, float* out, int64_t ldo, float alpha, bool accumulate) {
  if (!HasAvx2Fma()) {
    return GemmNTPortable(n, m, k, x, ldx, w, wt, ldw, out, ldo, alpha, accumulate);
  }
  WithElementType(wt, [&](auto t) {
    GemvNTAvx2<decltype(t)::value>(n, m, k, x, ldx, w, ldw, out, ldo, alpha, accumulate);
  });
}

template <DType T>
MPLUS_TARGET_AVX2_FMA void GemmNNAvx2(int64_t n, int64_t m, int64_t k, const float* p, int64_t ldp,
                                      const void* v, int64_t ldv, float* out, int64_t ldo,
                                      float alpha, bool accumulate) {
  switch (n) {  // few rows (decode): stream V once, no packing
    case 1:
      return GemvNNAvx2<1, T>(m, k, p, ldp, v, ldv, out, ldo, alpha, accumulate);
    case 2:
      return GemvNNAvx2<2, T>(m, k, p, ldp, v, ldv, out, ldo, alpha, accumulate);
    case 3:
      return GemvNNAvx2<3, T>(m, k, p, ldp, v, ldv, out, ldo, alpha, accumulate);
    case 4:
      return GemvNNAvx2<4, T>(m, k, p, ldp, v, ldv, out, ldo, alpha, accumulate);
    default:
      break;
  }
  BlockedGemm(n, m, k, p, ldp, out, ldo, alpha, accumulate,
              [&](int64_t j0, int64_t nc, int64_t k0, int64_t kc, float* buf) {
                PackRows<T>(v, ldv, j0, nc, k0, kc, buf);
              });
}

void GemmNN(int64_t n, int64_t m, int64_t k, const float* p, int64_t ldp, const void* v, DType vt,
            int64_t ldv, float* out, int64_t ldo, float alpha, bool accumulate) {
  if (!HasAvx2Fma()) {
    for (int64_t i = 0; i < n; ++i) {
      float* o = out + i * ldo;
      for (int64_t c = 0; c < m; ++c) o[c] = accumulate ? o[c] : 0.0f;
      for (int64_t j = 0; j < k; ++j) {
        const float s = alpha * p[i * ldp + j];
        for (int64_t c = 0; c < m; ++c) o[c] += s * Widen(v, vt, j * ldv + c);
      }
    }
    return;
  }
  WithElementType(vt, [&](auto t) {
    GemmNNAvx2<decltype(t)::value>(n, m, k, p, ldp, v, ldv, out, ldo, alpha, accumulate);
  });
}

}  // namespace mplus::engine::cpu
