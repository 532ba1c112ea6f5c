// MergeDecoderLora: the folded weight against a double-precision W + scale B A, the widened
// encoder adapter that takes the fold back out, storage types kept (bf16 rounded once), mixed
// adapter types, and refusals.
#include "engine/lora_merge.h"

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace mplus::engine {
namespace {

using ::testing::HasSubstr;

constexpr int64_t kOut = 70, kIn = 24, kRank = 3;  // kOut > one 64-row chunk
constexpr float kScale = 2.5f;

// Values of one tensor and its view (the bytes stay in the vector).
struct HostTensor {
  std::vector<float> values;
  std::vector<uint8_t> bytes;
  TensorView view;
};

HostTensor Make(const std::string& name, int64_t rows, int64_t cols, double seed, DType dtype) {
  HostTensor t;
  t.values.resize(rows * cols);
  for (int64_t i = 0; i < rows * cols; ++i) {
    t.values[i] = static_cast<float>(0.5 * std::sin(seed * static_cast<double>(i + 1)));
  }
  t.bytes.resize(t.values.size() * DTypeSize(dtype));
  FloatsToDType(t.values.data(), rows * cols, dtype, t.bytes.data());
  DTypeToFloats(t.bytes.data(), dtype, rows * cols, t.values.data());  // the stored values
  t.view = TensorView{name, dtype, {rows, cols}, t.bytes.data(), t.bytes.size()};
  return t;
}

std::vector<float> Floats(const TensorView& v) {
  std::vector<float> out(v.numel());
  DTypeToFloats(v.data, v.dtype, v.numel(), out.data());
  return out;
}

// sum over j of b[i, j] a[j, c] in double.
double Product(const std::vector<float>& b, const std::vector<float>& a, int64_t r, int64_t i,
               int64_t c) {
  double s = 0;
  for (int64_t j = 0; j < r; ++j) s += double{b[i * r + j]} * a[j * kIn + c];
  return s;
}

struct Linear {
  HostTensor w, a_e, b_e, a_d, b_d;
  LinearWeights weights;
};

Linear MakeLinear(DType w_type, DType lora_type, bool with_encoder) {
  Linear l;
  l.w = Make("w", kOut, kIn, 0.7, w_type);
  l.a_d = Make("a_d", kRank, kIn, 1.3, lora_type);
  l.b_d = Make("b_d", kOut, kRank, 1.9, lora_type);
  l.weights.weight = l.w.view;
  l.weights.lora_a[1] = l.a_d.view;
  l.weights.lora_b[1] = l.b_d.view;
  if (with_encoder) {
    l.a_e = Make("a_e", kRank, kIn, 2.3, DType::kBF16);
    l.b_e = Make("b_e", kOut, kRank, 2.9, DType::kBF16);
    l.weights.lora_a[0] = l.a_e.view;
    l.weights.lora_b[0] = l.b_e.view;
  }
  return l;
}

TEST(LoraMergeTest, Float32WeightIsTheFoldedSumAndTheEncoderCancelsIt) {
  ThreadPool pool(2);
  const Linear l = MakeLinear(DType::kF32, DType::kF32, /*with_encoder=*/true);
  auto merged = MergeDecoderLora(l.weights, kScale, pool);
  ASSERT_TRUE(merged.ok()) << merged.status();
  const LinearWeights& v = merged->views;
  EXPECT_EQ(v.lora_a[1].data, nullptr);
  EXPECT_EQ(v.lora_b[1].data, nullptr);
  ASSERT_EQ(v.weight.dtype, DType::kF32);
  ASSERT_EQ(v.lora_a[0].shape, (std::vector<int64_t>{2 * kRank, kIn}));
  ASSERT_EQ(v.lora_b[0].shape, (std::vector<int64_t>{kOut, 2 * kRank}));
  const std::vector<float> w = Floats(v.weight), a = Floats(v.lora_a[0]), b = Floats(v.lora_b[0]);
  for (int64_t i = 0; i < kOut; ++i) {
    for (int64_t c = 0; c < kIn; ++c) {
      const double folded =
          l.w.values[i * kIn + c] + kScale * Product(l.b_d.values, l.a_d.values, kRank, i, c);
      EXPECT_NEAR(w[i * kIn + c], folded, 1e-6) << i << "," << c;
      // The encoder's effective weight: W' + scale [B_e, -B_d] [A_e; A_d] = W + scale B_e A_e.
      const double encoder = w[i * kIn + c] + kScale * Product(b, a, 2 * kRank, i, c);
      const double expected =
          l.w.values[i * kIn + c] + kScale * Product(l.b_e.values, l.a_e.values, kRank, i, c);
      EXPECT_NEAR(encoder, expected, 1e-6) << i << "," << c;
    }
  }
}

// A bf16 weight is rounded once, to nearest even, from the float32 sum; -B_d is exact.
TEST(LoraMergeTest, Bf16WeightIsRoundedOnceAndTheNegationIsExact) {
  ThreadPool pool(1);
  const Linear l = MakeLinear(DType::kBF16, DType::kBF16, /*with_encoder=*/false);
  auto merged = MergeDecoderLora(l.weights, kScale, pool);
  ASSERT_TRUE(merged.ok()) << merged.status();
  const LinearWeights& v = merged->views;
  ASSERT_EQ(v.weight.dtype, DType::kBF16);
  const auto* bits = static_cast<const uint16_t*>(v.weight.data);
  int differ = 0;
  for (int64_t i = 0; i < kOut; ++i) {
    for (int64_t c = 0; c < kIn; ++c) {
      const double folded =
          l.w.values[i * kIn + c] + kScale * Product(l.b_d.values, l.a_d.values, kRank, i, c);
      const uint16_t want = FloatToBF16(static_cast<float>(folded));
      // The float32 sum may round differently from the double one by one float32 ulp, which
      // moves the bf16 result only at an exact tie: allow one bf16 ulp, rarely.
      differ += bits[i * kIn + c] != want;
      EXPECT_LE(std::abs(int{bits[i * kIn + c]} - int{want}), 1) << i << "," << c;
    }
  }
  EXPECT_LE(differ, 2);
  // Without an encoder adapter the encoder gets the decoder's A and -B alone.
  ASSERT_EQ(v.lora_a[0].shape, (std::vector<int64_t>{kRank, kIn}));
  EXPECT_EQ(std::memcmp(v.lora_a[0].data, l.a_d.bytes.data(), l.a_d.bytes.size()), 0);
  const std::vector<float> b = Floats(v.lora_b[0]);
  for (size_t i = 0; i < b.size(); ++i) EXPECT_EQ(b[i], -l.b_d.values[i]);
}

// Adapters of another type than each other: the widened ones are float32 (exact widening).
TEST(LoraMergeTest, MixedAdapterTypesWidenToFloat32) {
  ThreadPool pool(2);
  const Linear l = MakeLinear(DType::kBF16, DType::kF32, /*with_encoder=*/true);
  auto merged = MergeDecoderLora(l.weights, kScale, pool);
  ASSERT_TRUE(merged.ok()) << merged.status();
  const LinearWeights& v = merged->views;
  EXPECT_EQ(v.weight.dtype, DType::kBF16);
  ASSERT_EQ(v.lora_a[0].dtype, DType::kF32);
  ASSERT_EQ(v.lora_b[0].dtype, DType::kF32);
  const std::vector<float> a = Floats(v.lora_a[0]), b = Floats(v.lora_b[0]);
  for (int64_t j = 0; j < kRank * kIn; ++j) {
    EXPECT_EQ(a[j], l.a_e.values[j]);
    EXPECT_EQ(a[kRank * kIn + j], l.a_d.values[j]);
  }
  for (int64_t i = 0; i < kOut; ++i) {
    for (int64_t j = 0; j < kRank; ++j) {
      EXPECT_EQ(b[i * 2 * kRank + j], l.b_e.values[i * kRank + j]);
      EXPECT_EQ(b[i * 2 * kRank + kRank + j], -l.b_d.values[i * kRank + j]);
    }
  }
}

TEST(LoraMergeTest, RefusesMissingOrMisshapenAdapters) {
  ThreadPool pool(1);
  Linear l = MakeLinear(DType::kF32, DType::kF32, /*with_encoder=*/true);
  LinearWeights no_decoder = l.weights;
  no_decoder.lora_a[1] = TensorView{};
  EXPECT_THAT(MergeDecoderLora(no_decoder, kScale, pool).status().message(),
              HasSubstr("w has no decoder adapter to merge"));
  LinearWeights bad_b = l.weights;
  bad_b.lora_b[1].shape = {kOut - 1, kRank};
  EXPECT_THAT(MergeDecoderLora(bad_b, kScale, pool).status().message(),
              HasSubstr("b_d (decoder B) is not a float [70, 3] tensor"));
  LinearWeights bad_encoder = l.weights;
  bad_encoder.lora_a[0].shape = {kRank, kIn + 8};
  EXPECT_THAT(MergeDecoderLora(bad_encoder, kScale, pool).status().message(),
              HasSubstr("a_e (encoder A) is not a float [3, 24] tensor"));
}

}  // namespace
}  // namespace mplus::engine
