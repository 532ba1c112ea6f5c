// Element types of checkpoint tensors and their conversions to float32.
#ifndef MPLUS_ENGINE_DTYPE_H_
#define MPLUS_ENGINE_DTYPE_H_

#include <cstdint>
#include <cstring>
#include <string_view>

namespace mplus::engine {

enum class DType : uint8_t { kF32, kBF16, kF16, kI64, kI32 };

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

}  // namespace mplus::engine

#endif  // MPLUS_ENGINE_DTYPE_H_
