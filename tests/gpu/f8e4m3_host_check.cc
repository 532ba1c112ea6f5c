// engine/cuda/f8e4m3.cuh's conversions, compiled for the host, against engine/dtype.h (the CPU
// backend's) and cuda_fp8.h's satfinite conversion: run by ctest, no GPU needed. Every float32
// whose low 12 bits are one of a few patterns: all exponents and signs, and around every
// rounding boundary (the bits below each kept mantissa just under, at and just over a tie).
#include <cuda_fp8.h>

#include <cmath>
#include <cstdint>

#include "engine/cuda/f8e4m3.cuh"
#include "engine/dtype.h"
#include "gtest/gtest.h"

namespace mplus::engine::cuda {
namespace {

uint32_t Bits(float f) { return BitCast<uint32_t>(f); }

TEST(F8E4M3HostCheck, NarrowingMatchesTheCpuAndCudaFp8) {
  const uint32_t low[] = {0x000, 0x001, 0x7ff, 0x800, 0x801, 0xffe, 0xfff};
  int64_t bad = 0, bad_cuda = 0;
  for (uint32_t high = 0; high < (1u << 20); ++high) {
    for (const uint32_t l : low) {
      const float f = BitCast<float>(high << 12 | l);
      const uint8_t want = FloatToF8E4M3(f), got = FloatToF8E4M3Bits(f);
      if (got != want && ++bad <= 5) {
        ADD_FAILURE() << std::hex << Bits(f) << ": got " << +got << " want " << +want;
      }
      // cuda_fp8.h gives every NaN the same bits; numbers must agree.
      if (!std::isnan(f)) {
        const auto cuda = static_cast<uint8_t>(__nv_cvt_float_to_fp8(f, __NV_SATFINITE, __NV_E4M3));
        if (cuda != want && ++bad_cuda <= 5) {
          ADD_FAILURE() << std::hex << Bits(f) << ": cuda_fp8 " << +cuda << " cpu " << +want;
        }
      }
    }
  }
  EXPECT_EQ(bad, 0);
  EXPECT_EQ(bad_cuda, 0);
}

TEST(F8E4M3HostCheck, WideningMatchesTheCpuBitForBit) {
  for (uint32_t b = 0; b < 256; ++b) {
    const float want = F8E4M3ToFloat(static_cast<uint8_t>(b));
    EXPECT_EQ(Bits(F8E4M3BitsToFloat(b)), Bits(want)) << b;
    EXPECT_EQ(Bits(F8E4M3BitsToFloat(b | 0xab00u)), Bits(want)) << b;  // higher bits ignored
    if (!std::isnan(want)) {
      EXPECT_EQ(FloatToF8E4M3Bits(want), b) << b;
    }
    EXPECT_EQ(Bits(want) & 0xffffu, 0u) << b;  // a bf16 value (the tensor-core tiles)
  }
}

}  // namespace
}  // namespace mplus::engine::cuda
