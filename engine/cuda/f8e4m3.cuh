// float8 e4m3fn <-> float32, bit for bit engine/dtype.h's F8E4M3ToFloat and FloatToF8E4M3 (a NaN
// keeps its sign; cuda_fp8.h's conversions give an unsigned one). Host-callable too, so that
// tests/gpu/f8e4m3_host_check.cc compares them with engine/dtype.h on a CPU. Needs IEEE float32
// subnormals (no -ftz / --use_fast_math): the e4m3 subnormals widen through float32 ones.
#ifndef MPLUS_ENGINE_CUDA_F8E4M3_CUH_
#define MPLUS_ENGINE_CUDA_F8E4M3_CUH_

#include <cuda_runtime.h>  // __host__ / __device__ for host compilers too

#include <cmath>
#include <cstdint>
#include <cstring>

namespace mplus::engine::cuda {

// The bits of `from` as a To of the same size (float32 <-> uint32_t here: a register move).
template <typename To, typename From>
__host__ __device__ __forceinline__ To BitCast(From from) {
  static_assert(sizeof(To) == sizeof(From));
  To to;
  memcpy(&to, &from, sizeof to);
  return to;
}

// The e4m3 element in the low byte of `b` (higher bits ignored). Its exponent and mantissa bits
// placed under a float32's exponent give the value times 2^(7 - 127): one exact multiply by a
// power of two undoes that, subnormals included. 0x7f / 0xff are NaN.
__host__ __device__ __forceinline__ float F8E4M3BitsToFloat(uint32_t b) {
  const uint32_t sign = (b & 0x80u) << 24, mag = b & 0x7fu;
  if (mag == 0x7fu) return BitCast<float>(sign | 0x7fc00000u);
  return BitCast<float>(sign | (mag << 20)) * 0x1p120f;
}

// Round to nearest even, saturating at +-448 (infinities too); NaN stays NaN with its sign.
__host__ __device__ __forceinline__ uint8_t FloatToF8E4M3Bits(float f) {
  const uint32_t u = BitCast<uint32_t>(f), a = u & 0x7fffffffu;
  const uint32_t sign = (u >> 24) & 0x80u;
  if (a > 0x7f800000u) return static_cast<uint8_t>(sign | 0x7fu);
  if (a >= 0x43e00000u) return static_cast<uint8_t>(sign | 0x7eu);  // |f| >= 448
  if (a < 0x3c800000u) {  // |f| < 2^-6: subnormal, units of 2^-9 (8 units: 2^-6, code 0x08)
    return static_cast<uint8_t>(sign | static_cast<uint32_t>(rintf(BitCast<float>(a) * 512.0f)));
  }
  // Round off the low 20 mantissa bits (a carry moves up the exponent), then rebias 127 -> 7.
  const uint32_t rounded = (a + 0x7ffffu + ((a >> 20) & 1u)) >> 20;
  return static_cast<uint8_t>(sign | (rounded - (120u << 3)));
}

}  // namespace mplus::engine::cuda

#endif  // MPLUS_ENGINE_CUDA_F8E4M3_CUH_
