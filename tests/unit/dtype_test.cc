#include "engine/dtype.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace mplus::engine {
namespace {

uint32_t Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

float FromBits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

TEST(DTypeTest, SizesAndNames) {
  EXPECT_EQ(DTypeSize(DType::kF32), 4u);
  EXPECT_EQ(DTypeSize(DType::kBF16), 2u);
  EXPECT_EQ(DTypeSize(DType::kF16), 2u);
  EXPECT_EQ(DTypeSize(DType::kI64), 8u);
  EXPECT_EQ(DTypeSize(DType::kI32), 4u);
  EXPECT_EQ(std::string(DTypeName(DType::kBF16)), "BF16");
  EXPECT_EQ(std::string(DTypeName(DType::kI64)), "I64");
}

TEST(DTypeTest, Bf16RoundTripsEveryFiniteValue) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = BF16ToFloat(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    ASSERT_EQ(FloatToBF16(f), h) << std::hex << h;
  }
}

TEST(DTypeTest, Bf16RoundsToNearestEven) {
  // 1 + 2^-8 is halfway between bf16 1.0 and 1.0078125: ties go to the even mantissa (1.0).
  EXPECT_EQ(FloatToBF16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);
  // 1 + 3*2^-8 is halfway between 1.0078125 (odd) and 1.015625 (even): rounds up.
  EXPECT_EQ(FloatToBF16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);
  // Just above halfway rounds up.
  EXPECT_EQ(FloatToBF16(FromBits(0x3f808001)), 0x3f81);
  EXPECT_EQ(FloatToBF16(-1.0f), 0xbf80);
  // Rounding can carry into the exponent and overflow to infinity like torch.
  EXPECT_EQ(FloatToBF16(std::numeric_limits<float>::max()), 0x7f80);
  EXPECT_TRUE(std::isnan(BF16ToFloat(FloatToBF16(std::nanf("")))));
  EXPECT_EQ(Bits(BF16ToFloat(0x4049)), 0x40490000u);  // ~3.14
}

// FloatsToDType (eight at a time where the CPU has AVX2) narrows every bit pattern as
// FloatToBF16 does: all sign/exponent/high-mantissa halves with low halves at and around the
// rounding tie, NaNs and infinities included, at lengths and offsets that leave a scalar tail.
TEST(DTypeTest, Bf16ArrayNarrowingMatchesTheScalarRounding) {
  std::vector<float> src;
  for (uint32_t high = 0; high < 0x10000; ++high) {
    for (uint32_t low : {0x0000u, 0x0001u, 0x7fffu, 0x8000u, 0x8001u, 0xffffu}) {
      src.push_back(FromBits(high << 16 | low));
    }
  }
  src.push_back(FromBits(0x3f808000));  // a tie in the scalar tail
  for (size_t offset : {size_t{0}, size_t{3}}) {
    const size_t n = src.size() - offset;
    std::vector<uint16_t> out(n);
    FloatsToDType(src.data() + offset, static_cast<int64_t>(n), DType::kBF16, out.data());
    for (size_t i = 0; i < n; ++i) {
      ASSERT_EQ(out[i], FloatToBF16(src[offset + i]))
          << std::hex << Bits(src[offset + i]) << " at " << std::dec << i;
    }
  }
}

TEST(DTypeTest, F16RoundTripsEveryFiniteValue) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = F16ToFloat(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    ASSERT_EQ(FloatToF16(f), h) << std::hex << h;
  }
}

TEST(DTypeTest, F16RoundsToNearestEven) {
  EXPECT_EQ(F16ToFloat(0x3c00), 1.0f);
  EXPECT_EQ(FloatToF16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);      // tie, even
  EXPECT_EQ(FloatToF16(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);  // tie, up to even
  EXPECT_EQ(FloatToF16(65504.0f), 0x7bff);                          // largest finite
  EXPECT_EQ(FloatToF16(65520.0f), 0x7c00);                          // rounds to infinity
  EXPECT_EQ(FloatToF16(-1e9f), 0xfc00);
  EXPECT_EQ(FloatToF16(std::ldexp(1.0f, -24)), 0x0001);      // smallest subnormal
  EXPECT_EQ(FloatToF16(std::ldexp(1.0f, -25)), 0x0000);      // tie to even (zero)
  EXPECT_EQ(FloatToF16(3 * std::ldexp(1.0f, -25)), 0x0002);  // 1.5 units: tie to even (2)
  EXPECT_EQ(F16ToFloat(0x0001), std::ldexp(1.0f, -24));
  EXPECT_TRUE(std::isinf(F16ToFloat(0x7c00)));
  EXPECT_TRUE(std::isnan(F16ToFloat(FloatToF16(std::nanf("")))));
}

TEST(DTypeTest, F8E4M3RoundTripsEveryFiniteValue) {
  EXPECT_EQ(DTypeSize(DType::kF8E4M3), 1u);
  EXPECT_EQ(std::string(DTypeName(DType::kF8E4M3)), "F8_E4M3");
  int nans = 0;
  for (uint32_t b = 0; b < 0x100; ++b) {
    const float f = F8E4M3ToFloat(static_cast<uint8_t>(b));
    if (std::isnan(f)) {
      ++nans;
      continue;
    }
    ASSERT_EQ(FloatToF8E4M3(f), b) << std::hex << b;
  }
  EXPECT_EQ(nans, 2);  // 0x7f and 0xff: e4m3fn has no infinity
  EXPECT_EQ(F8E4M3ToFloat(0x7e), 448.0f);
  EXPECT_EQ(F8E4M3ToFloat(0x01), std::ldexp(1.0f, -9));  // smallest subnormal
  EXPECT_EQ(F8E4M3ToFloat(0x08), std::ldexp(1.0f, -6));  // smallest normal
  EXPECT_EQ(F8E4M3ToFloat(0xb8), -1.0f);
}

TEST(DTypeTest, F8E4M3RoundsToNearestEvenAndSaturates) {
  // Between 1 and 1.125 (3 mantissa bits): the tie 1.0625 goes to the even 1.0, 1.1875 (tie
  // between 1.125 and 1.25) to the even 1.25.
  EXPECT_EQ(FloatToF8E4M3(1.0625f), 0x38);
  EXPECT_EQ(FloatToF8E4M3(1.1875f), 0x3a);
  EXPECT_EQ(FloatToF8E4M3(1.07f), 0x39);
  // Subnormals in units of 2^-9; a tie between them goes to even; 7.5 units round up into the
  // smallest normal.
  EXPECT_EQ(FloatToF8E4M3(std::ldexp(1.5f, -9)), 0x02);
  EXPECT_EQ(FloatToF8E4M3(std::ldexp(2.5f, -9)), 0x02);
  EXPECT_EQ(FloatToF8E4M3(std::ldexp(7.5f, -9)), 0x08);
  EXPECT_EQ(FloatToF8E4M3(std::ldexp(0.4f, -9)), 0x00);
  EXPECT_EQ(FloatToF8E4M3(-0.0f), 0x80);
  // Beyond 448 (and infinity) saturates instead of becoming NaN; NaN stays NaN.
  EXPECT_EQ(FloatToF8E4M3(470.0f), 0x7e);
  EXPECT_EQ(FloatToF8E4M3(-1e9f), 0xfe);
  EXPECT_EQ(FloatToF8E4M3(std::numeric_limits<float>::infinity()), 0x7e);
  EXPECT_TRUE(std::isnan(F8E4M3ToFloat(FloatToF8E4M3(std::nanf("")))));
}

}  // namespace
}  // namespace mplus::engine
