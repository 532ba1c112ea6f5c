#include "engine/dtype.h"

#include <immintrin.h>

#include <cmath>
#include <cstring>

#include "common/cpu_features.h"

namespace mplus::engine {
namespace {

// FloatToBF16 eight at a time (AVX2, chosen at run time): the same integer rounding, so every
// bit pattern narrows as the scalar code does. Inject commits narrow ~1M floats per layer.
MPLUS_TARGET_AVX2_FMA void FloatsToBF16Avx2(const float* src, int64_t n, uint16_t* dst) {
  const __m256i abs_mask = _mm256_set1_epi32(0x7fffffff), inf = _mm256_set1_epi32(0x7f800000);
  const __m256i half = _mm256_set1_epi32(0x7fff), one = _mm256_set1_epi32(1);
  const __m256i quiet = _mm256_set1_epi32(0x40);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256i u = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i));
    const __m256i high = _mm256_srli_epi32(u, 16);
    const __m256i is_nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, abs_mask), inf);
    const __m256i rounded = _mm256_srli_epi32(
        _mm256_add_epi32(u, _mm256_add_epi32(half, _mm256_and_si256(high, one))), 16);
    const __m256i r = _mm256_blendv_epi8(rounded, _mm256_or_si256(high, quiet), is_nan);
    // Values are <= 0xffff: the saturating pack is exact; it packs within 128-bit lanes.
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0xd8);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), _mm256_castsi256_si128(packed));
  }
  for (; i < n; ++i) dst[i] = FloatToBF16(src[i]);
}

}  // namespace

size_t DTypeSize(DType dtype) {
  switch (dtype) {
    case DType::kF32:
    case DType::kI32:
      return 4;
    case DType::kBF16:
    case DType::kF16:
      return 2;
    case DType::kI64:
      return 8;
    case DType::kF8E4M3:
      return 1;
  }
  return 0;
}

const char* DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "F32";
    case DType::kBF16:
      return "BF16";
    case DType::kF16:
      return "F16";
    case DType::kI64:
      return "I64";
    case DType::kI32:
      return "I32";
    case DType::kF8E4M3:
      return "F8_E4M3";
  }
  return "?";
}

namespace {

// A small binary float format with `mantissa_bits` stored mantissa bits and exponent bias `bias`
// (f16: 10, 15; float8 e4m3: 3, 7).

// The magnitude of a finite code without its sign.
float MiniFloatMagnitude(uint32_t code, int mantissa_bits, int bias) {
  const uint32_t exponent = code >> mantissa_bits, mantissa = code & ((1u << mantissa_bits) - 1);
  if (exponent == 0) {  // subnormal
    return std::ldexp(static_cast<float>(mantissa), 1 - bias - mantissa_bits);
  }
  return std::ldexp(static_cast<float>(mantissa | (1u << mantissa_bits)),
                    static_cast<int>(exponent) - bias - mantissa_bits);
}

// f rounded half to even: NaN gives nan_code, |f| >= overflow gives overflow_code (infinity,
// or the largest finite value for a saturating conversion); the sign goes to bit `sign_bit`.
uint32_t ToMiniFloat(float f, int mantissa_bits, int bias, float overflow, uint32_t overflow_code,
                     uint32_t nan_code, int sign_bit) {
  const uint32_t sign = std::signbit(f) ? 1u << sign_bit : 0u;
  const float a = std::fabs(f);
  if (std::isnan(f)) return sign | nan_code;
  if (a >= overflow) return sign | overflow_code;
  if (a < std::ldexp(1.0f, 1 - bias)) {  // subnormal (the largest rounds up to the least normal)
    return sign | static_cast<uint32_t>(std::nearbyint(std::ldexp(a, bias - 1 + mantissa_bits)));
  }
  int exponent;
  const float m = std::frexp(a, &exponent);  // a = m * 2^exponent, m in [0.5, 1)
  uint32_t mant = static_cast<uint32_t>(std::nearbyint(std::ldexp(m, mantissa_bits + 1)));
  if (mant == (2u << mantissa_bits)) {  // rounded up to the next power of two
    mant >>= 1;
    ++exponent;
  }
  return sign | (static_cast<uint32_t>(exponent - 1 + bias) << mantissa_bits) |
         (mant & ((1u << mantissa_bits) - 1));
}

}  // namespace

float F16ToFloat(uint16_t bits) {
  const uint32_t code = bits & 0x7fffu;
  float magnitude;
  if ((code >> 10) == 31) {
    magnitude = (code & 0x3ffu) ? NAN : INFINITY;
  } else {
    magnitude = MiniFloatMagnitude(code, 10, 15);
  }
  return (bits & 0x8000u) ? -magnitude : magnitude;
}

uint16_t FloatToF16(float f) {
  // 65520 and above round to infinity.
  return static_cast<uint16_t>(ToMiniFloat(f, 10, 15, 65520.0f, 0x7c00u, 0x7e00u, 15));
}

float F8E4M3ToFloat(uint8_t bits) {
  const uint32_t code = bits & 0x7fu;
  const float magnitude = code == 0x7fu ? NAN : MiniFloatMagnitude(code, 3, 7);
  return (bits & 0x80u) ? -magnitude : magnitude;
}

uint8_t FloatToF8E4M3(float f) {
  // Below 448 nothing rounds past 448 (the next code up, 480, is NaN in e4m3fn).
  return static_cast<uint8_t>(ToMiniFloat(f, 3, 7, 448.0f, 0x7eu, 0x7fu, 7));
}

void FloatsToDType(const float* src, int64_t n, DType dtype, void* dst) {
  switch (dtype) {
    case DType::kF32:
      std::memcpy(dst, src, n * sizeof(float));
      return;
    case DType::kBF16:
      if (HasAvx2Fma()) {
        FloatsToBF16Avx2(src, n, static_cast<uint16_t*>(dst));
      } else {
        for (int64_t i = 0; i < n; ++i) static_cast<uint16_t*>(dst)[i] = FloatToBF16(src[i]);
      }
      return;
    case DType::kF16:
      for (int64_t i = 0; i < n; ++i) static_cast<uint16_t*>(dst)[i] = FloatToF16(src[i]);
      return;
    default:
      return;  // callers pass float storage dtypes only
  }
}

void DTypeToFloats(const void* src, DType dtype, int64_t n, float* dst) {
  switch (dtype) {
    case DType::kF32:
      std::memcpy(dst, src, n * sizeof(float));
      return;
    case DType::kBF16:
      for (int64_t i = 0; i < n; ++i) dst[i] = BF16ToFloat(static_cast<const uint16_t*>(src)[i]);
      return;
    case DType::kF16:
      for (int64_t i = 0; i < n; ++i) dst[i] = F16ToFloat(static_cast<const uint16_t*>(src)[i]);
      return;
    default:
      return;
  }
}

}  // namespace mplus::engine
