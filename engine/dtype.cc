#include "engine/dtype.h"

#include <algorithm>
#include <cmath>

namespace mplus::engine {

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

float F16ToFloat(uint16_t bits) {
  const uint32_t sign = (bits >> 15) & 1u;
  const uint32_t exponent = (bits >> 10) & 0x1fu;
  const uint32_t mantissa = bits & 0x3ffu;
  float magnitude;
  if (exponent == 0) {
    magnitude = std::ldexp(static_cast<float>(mantissa), -24);  // subnormal
  } else if (exponent == 31) {
    magnitude = mantissa ? NAN : INFINITY;
  } else {
    magnitude = std::ldexp(static_cast<float>(mantissa | 0x400u), static_cast<int>(exponent) - 25);
  }
  return sign ? -magnitude : magnitude;
}

uint16_t FloatToF16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const float a = std::fabs(f);
  if (std::isnan(f)) return sign | 0x7e00u;
  if (a >= 65520.0f) return sign | 0x7c00u;  // rounds to infinity
  if (a < std::ldexp(1.0f, -14)) {           // subnormal: units of 2^-24, round half to even
    return sign | static_cast<uint16_t>(std::nearbyint(a * std::ldexp(1.0f, 24)));
  }
  int exponent;
  const float m = std::frexp(a, &exponent);  // a = m * 2^exponent, m in [0.5, 1)
  uint32_t mant = static_cast<uint32_t>(std::nearbyint(std::ldexp(m, 11)));  // 11 bits incl. hidden
  if (mant == 2048) {
    mant = 1024;
    ++exponent;
  }
  const uint32_t biased = static_cast<uint32_t>(exponent - 1 + 15);
  return sign | static_cast<uint16_t>((biased << 10) | (mant & 0x3ffu));
}

float F8E4M3ToFloat(uint8_t bits) {
  const uint32_t exponent = (bits >> 3) & 0xfu, mantissa = bits & 0x7u;
  float magnitude;
  if (exponent == 0xf && mantissa == 0x7) {
    magnitude = NAN;
  } else if (exponent == 0) {
    magnitude = std::ldexp(static_cast<float>(mantissa), -9);  // subnormal
  } else {
    magnitude = std::ldexp(static_cast<float>(mantissa | 0x8u), static_cast<int>(exponent) - 10);
  }
  return (bits & 0x80u) ? -magnitude : magnitude;
}

uint8_t FloatToF8E4M3(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  const uint8_t sign = static_cast<uint8_t>((u >> 24) & 0x80u);
  const float a = std::fabs(f);
  if (std::isnan(f)) return sign | 0x7fu;
  if (a >= 448.0f) return sign | 0x7eu;
  if (a < std::ldexp(1.0f, -6)) {  // subnormal: units of 2^-9 (8 units round up to 2^-6)
    return sign | static_cast<uint8_t>(std::nearbyint(a * std::ldexp(1.0f, 9)));
  }
  int exponent;
  const float m = std::frexp(a, &exponent);  // a = m * 2^exponent, m in [0.5, 1)
  uint32_t mant = static_cast<uint32_t>(std::nearbyint(std::ldexp(m, 4)));  // 4 bits incl. hidden
  if (mant == 16) {
    mant = 8;
    ++exponent;
  }
  const uint32_t code = (static_cast<uint32_t>(exponent - 1 + 7) << 3) | (mant & 0x7u);
  return sign | static_cast<uint8_t>(std::min<uint32_t>(code, 0x7eu));  // 464 .. 448: to 448
}

}  // namespace mplus::engine
