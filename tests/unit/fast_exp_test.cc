#include "engine/fast_exp.h"

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace mplus::engine {
namespace {

MPLUS_TARGET_AVX2_FMA void FastExpAll8(const float* x, size_t n, float* out) {
  for (size_t i = 0; i + 8 <= n; i += 8)
    _mm256_storeu_ps(out + i, FastExp8(_mm256_loadu_ps(x + i)));
}

// Random bit patterns (every exponent, NaN, infinities) and dense samples of the range that
// matters, eight at a time.
std::vector<float> Arguments() {
  std::mt19937 gen(5);
  std::vector<float> x;
  for (int i = 0; i < 1 << 20; ++i) x.push_back(std::bit_cast<float>(static_cast<uint32_t>(gen())));
  std::uniform_real_distribution<float> in_range(-90.0f, 90.0f), small(-1.0f, 1.0f);
  for (int i = 0; i < 1 << 20; ++i) x.push_back(in_range(gen));
  for (int i = 0; i < 1 << 18; ++i) x.push_back(small(gen));
  const float inf = std::numeric_limits<float>::infinity();
  for (float v : {0.0f, -0.0f, 1.0f, -1.0f, 87.0f, -87.0f, 88.0f, -88.0f, -104.0f, inf, -inf,
                  std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::min(),
                  std::numeric_limits<float>::denorm_min()}) {
    x.push_back(v);
  }
  while (x.size() % 8 != 0) x.push_back(0.5f);
  return x;
}

TEST(FastExpTest, VectorAndScalarGiveTheSameBits) {
  if (!HasAvx2Fma()) GTEST_SKIP() << "this CPU has no AVX2/FMA";
  const std::vector<float> x = Arguments();
  std::vector<float> vector(x.size());
  FastExpAll8(x.data(), x.size(), vector.data());
  int mismatches = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const float scalar = FastExp(x[i]);
    if (std::bit_cast<uint32_t>(scalar) != std::bit_cast<uint32_t>(vector[i]) && ++mismatches < 5) {
      ADD_FAILURE() << "x = " << x[i] << ": scalar " << scalar << ", vector " << vector[i];
    }
  }
  EXPECT_EQ(mismatches, 0);
}

TEST(FastExpTest, WithinTwoUlpOfExpInItsRange) {
  for (float x : Arguments()) {
    if (!(std::fabs(x) <= 87.0f)) continue;
    const double truth = std::exp(static_cast<double>(x));
    // ulp of the float nearest the truth.
    const double ulp = std::ldexp(1.0, std::ilogb(static_cast<float>(truth)) - 23);
    ASSERT_LE(std::fabs(FastExp(x) - truth), 2 * ulp) << "x = " << x;
  }
  EXPECT_EQ(FastExp(0.0f), 1.0f);
}

TEST(FastExpTest, ClampsToFiniteNormalResults) {
  const float inf = std::numeric_limits<float>::infinity();
  const float at_min = FastExp(-87.0f), at_max = FastExp(87.0f);
  EXPECT_GE(at_min, std::numeric_limits<float>::min());  // normal, not 0 or subnormal
  EXPECT_TRUE(std::isfinite(at_max));
  EXPECT_EQ(FastExp(-200.0f), at_min);
  EXPECT_EQ(FastExp(-inf), at_min);
  EXPECT_EQ(FastExp(std::numeric_limits<float>::quiet_NaN()), at_min);
  EXPECT_EQ(FastExp(inf), at_max);
}

}  // namespace
}  // namespace mplus::engine
