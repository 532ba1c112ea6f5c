// Element types of checkpoint tensors and their conversions to float32.
#ifndef MPLUS_ENGINE_DTYPE_H_
#define MPLUS_ENGINE_DTYPE_H_

#include <cstdint>
#include <cstring>
#include <string_view>

namespace mplus::engine {

// kF8E4M3: float8 e4m3fn (sign, 4 exponent bits with bias 7, 3 mantissa bits; no infinity, NaN
// = all ones; largest finite 448), for KV caches only (--kv_cache_dtype=fp8).
enum class DType : uint8_t { kF32, kBF16, kF16, kI64, kI32, kF8E4M3 };

// Bytes per element.
size_t DTypeSize(DType dtype);
// Safetensors spelling ("F32", "BF16", ...).
const char* DTypeName(DType dtype);

inline float BF16ToFloat(uint16_t bits) {
  uint32_t u = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// Round-to-nearest-even, as torch's .to(torch.bfloat16); NaN stays NaN.
inline uint16_t FloatToBF16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

float F16ToFloat(uint16_t bits);
uint16_t FloatToF16(float f);

// Element conversions between float32 and a float storage dtype (F32, BF16 or F16; bf16 rounds
// to nearest even like torch).
void FloatsToDType(const float* src, int64_t n, DType dtype, void* dst);
void DTypeToFloats(const void* src, DType dtype, int64_t n, float* dst);

float F8E4M3ToFloat(uint8_t bits);
// Round-to-nearest-even, saturating: finite values and infinities beyond 448 become +-448 (as
// CUDA's __nv_cvt_float_to_fp8 with __NV_SATFINITE, and vLLM's fp8 KV cache); NaN stays NaN.
uint8_t FloatToF8E4M3(float f);

}  // namespace mplus::engine

#endif  // MPLUS_ENGINE_DTYPE_H_
