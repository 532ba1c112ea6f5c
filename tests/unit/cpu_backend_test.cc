// CPU backend ops against naive double-precision references.
#include "engine/cpu/cpu_backend.h"

#include <cmath>
#include <cstring>
#include <tuple>
#include <vector>

#include "engine/rope.h"
#include "gtest/gtest.h"

namespace mplus::engine::cpu {
namespace {

class CpuBackendTest : public ::testing::Test {
 protected:
  Tensor Make(std::vector<int64_t> shape, const std::vector<float>& values) {
    Tensor t = *backend_.Allocate(DType::kF32, std::move(shape));
    EXPECT_TRUE(backend_.CopyFromHost(values.data(), DType::kF32, t).ok());
    return t;
  }
  Tensor Zeros(std::vector<int64_t> shape) {
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    return Make(std::move(shape), std::vector<float>(static_cast<size_t>(n), 0.f));
  }
  static std::vector<float> Values(int64_t n, double seed) {
    std::vector<float> v(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) v[i] = static_cast<float>(std::sin(seed * (i + 1) + 0.3));
    return v;
  }
  static const float* F(const Tensor& t) { return t.data_as<const float>(); }

  CpuBackend cpu_{3};
  Backend& backend_ = cpu_;  // the interface carries the default arguments
};

TEST_F(CpuBackendTest, MatMulFloat32AndBf16WithAlphaAndAccumulate) {
  const int64_t n = 3, k = 37, m = 21;
  const std::vector<float> x = Values(n * k, 0.37), w = Values(m * k, 0.11);
  std::vector<uint16_t> w_bf16(w.size());
  for (size_t i = 0; i < w.size(); ++i) w_bf16[i] = FloatToBF16(w[i]);
  const Tensor xt = Make({n, k}, x);
  const Tensor wt = Make({m, k}, w);
  const Tensor wb = Tensor::Borrow(DType::kBF16, {m, k}, Device::kCpu, w_bf16.data());
  Tensor out = Make({n, m}, std::vector<float>(n * m, 1.f));
  ASSERT_TRUE(backend_.MatMul(xt, wt, out, 0.5f, /*accumulate=*/true).ok());
  Tensor out_bf16 = Zeros({n, m});
  ASSERT_TRUE(backend_.MatMul(xt, wb, out_bf16).ok());
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < m; ++j) {
      double dot = 0, dot_bf16 = 0;
      for (int64_t c = 0; c < k; ++c) {
        dot += double{x[i * k + c]} * w[j * k + c];
        dot_bf16 += double{x[i * k + c]} * BF16ToFloat(w_bf16[j * k + c]);
      }
      EXPECT_NEAR(F(out)[i * m + j], 1 + 0.5 * dot, 1e-5);
      EXPECT_NEAR(F(out_bf16)[i * m + j], dot_bf16, 1e-5);
    }
  }
  EXPECT_FALSE(backend_.MatMul(xt, Zeros({m, k + 1}), out).ok());
}

// Shapes that exercise the blocked GEMM (row/column/k remainders, several k blocks) and the
// few-rows GEMV path, for every weight dtype, against a double-precision reference.
TEST_F(CpuBackendTest, MatMulBlockedAndGemvPathsAllDtypes) {
  for (const int64_t n : {1, 2, 3, 5, 13, 400}) {
    const int64_t k = 300, m = 150;
    const std::vector<float> x = Values(n * k, 0.23), w = Values(m * k, 0.07);
    std::vector<uint16_t> w_bf16(w.size()), w_f16(w.size());
    for (size_t i = 0; i < w.size(); ++i) {
      w_bf16[i] = FloatToBF16(w[i]);
      w_f16[i] = FloatToF16(w[i]);
    }
    const Tensor xt = Make({n, k}, x);
    const Tensor weights[] = {Make({m, k}, w),
                              Tensor::Borrow(DType::kBF16, {m, k}, Device::kCpu, w_bf16.data()),
                              Tensor::Borrow(DType::kF16, {m, k}, Device::kCpu, w_f16.data())};
    for (const Tensor& wt : weights) {
      Tensor out = Make({n, m}, std::vector<float>(n * m, 2.f));
      ASSERT_TRUE(backend_.MatMul(xt, wt, out, 0.25f, /*accumulate=*/true).ok());
      for (int64_t i = 0; i < n; ++i) {
        for (int64_t j = 0; j < m; ++j) {
          double dot = 0;
          for (int64_t c = 0; c < k; ++c) {
            float wv = w[j * k + c];
            if (wt.dtype() == DType::kBF16) wv = BF16ToFloat(w_bf16[j * k + c]);
            if (wt.dtype() == DType::kF16) wv = F16ToFloat(w_f16[j * k + c]);
            dot += double{x[i * k + c]} * wv;
          }
          ASSERT_NEAR(F(out)[i * m + j], 2 + 0.25 * dot, 1e-5) << n << " " << i << " " << j;
        }
      }
    }
  }
}

// The composed LoRA linear (Backend's default, which the CPU uses): with accumulate, out gains
// the complete product, LoRA term included, in one add (a residual add in the reference's order);
// without LoRA matrices it is a plain MatMul.
TEST_F(CpuBackendTest, LoraMatMulAccumulatesAfterTheLoraTerm) {
  const int64_t n = 2, k = 300, m = 17, r = 4;
  const float scale = 0.75f;
  const Tensor x = Make({n, k}, Values(n * k, 0.21)), w = Make({m, k}, Values(m * k, 0.13));
  const Tensor a = Make({r, k}, Values(r * k, 0.05)), b = Make({m, r}, Values(m * r, 0.71));
  const std::vector<float> residual = Values(n * m, 0.9);
  Tensor y = Zeros({n, m}), sum = Zeros({n, m}), acc = Make({n, m}, residual);
  ASSERT_TRUE(backend_.LoraMatMul(x, w, a, b, scale, y).ok());
  ASSERT_TRUE(backend_.LoraMatMul(x, w, a, b, scale, acc, /*accumulate=*/true).ok());
  ASSERT_TRUE(backend_.Add(Make({n, m}, residual), y, sum).ok());
  EXPECT_EQ(std::memcmp(F(acc), F(sum), sum.nbytes()), 0);

  Tensor plain = Zeros({n, m}), no_lora = Make({n, m}, residual);
  ASSERT_TRUE(backend_.MatMul(x, w, plain).ok());
  ASSERT_TRUE(backend_.LoraMatMul(x, w, Tensor(), Tensor(), scale, no_lora, true).ok());
  for (int64_t i = 0; i < n * m; ++i) EXPECT_EQ(F(no_lora)[i], residual[i] + F(plain)[i]) << i;
}

TEST_F(CpuBackendTest, RmsNormInPlace) {
  const int64_t n = 2, d = 10;
  const std::vector<float> x = Values(n * d, 0.7), w = Values(d, 1.9);
  Tensor xt = Make({n, d}, x);
  ASSERT_TRUE(backend_.RmsNorm(xt, Make({d}, w), 1e-5f, xt).ok());
  for (int64_t i = 0; i < n; ++i) {
    double ss = 0;
    for (int64_t c = 0; c < d; ++c) ss += double{x[i * d + c]} * x[i * d + c];
    const double inv = 1 / std::sqrt(ss / d + 1e-5);
    for (int64_t c = 0; c < d; ++c) EXPECT_NEAR(F(xt)[i * d + c], w[c] * x[i * d + c] * inv, 1e-5);
  }
}

TEST_F(CpuBackendTest, RopeRotatesHalvesByPosition) {
  const int64_t heads = 2, hd = 8, n = 3;
  const std::vector<float> x = Values(n * heads * hd, 0.5), freq = {1.f, 0.1f, 0.01f, 0.001f};
  Tensor xt = Make({n, heads * hd}, x);
  const std::vector<int64_t> positions = {0, 5, 1000};
  ASSERT_TRUE(backend_.Rope(xt, hd, positions, Make({hd / 2}, freq)).ok());
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t j = 0; j < hd / 2; ++j) {
        const double angle = static_cast<double>(static_cast<float>(positions[r]) * freq[j]);
        const int64_t base = r * heads * hd + h * hd;
        const double a = x[base + j], b = x[base + j + hd / 2];
        EXPECT_NEAR(F(xt)[base + j], a * std::cos(angle) - b * std::sin(angle), 1e-5);
        EXPECT_NEAR(F(xt)[base + j + hd / 2], b * std::cos(angle) + a * std::sin(angle), 1e-5);
      }
    }
  }
}

TEST_F(CpuBackendTest, AttentionGqaWithPrefixAndBottomRightCausalMask) {
  const int64_t heads = 4, kv_heads = 2, hd = 3, nq = 2, nk = 5;
  const std::vector<float> q = Values(nq * heads * hd, 0.9), k = Values(nk * kv_heads * hd, 1.3),
                           v = Values(nk * kv_heads * hd, 2.1);
  Tensor out = Zeros({nq, heads * hd});
  ASSERT_TRUE(backend_
                  .Attention(Make({nq, heads * hd}, q), Make({nk, kv_heads * hd}, k),
                             Make({nk, kv_heads * hd}, v), heads, kv_heads, hd, out)
                  .ok());
  for (int64_t i = 0; i < nq; ++i) {
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t g = h / (heads / kv_heads), visible = nk - nq + i + 1;
      std::vector<double> p(visible);
      double mx = -1e300, sum = 0;
      for (int64_t j = 0; j < visible; ++j) {
        double dot = 0;
        for (int64_t c = 0; c < hd; ++c) {
          dot += double{q[i * heads * hd + h * hd + c]} * k[j * kv_heads * hd + g * hd + c];
        }
        p[j] = dot / std::sqrt(double(hd));
        mx = std::max(mx, p[j]);
      }
      for (double& x : p) sum += (x = std::exp(x - mx));
      for (int64_t c = 0; c < hd; ++c) {
        double want = 0;
        for (int64_t j = 0; j < visible; ++j)
          want += p[j] / sum * v[j * kv_heads * hd + g * hd + c];
        EXPECT_NEAR(F(out)[i * heads * hd + h * hd + c], want, 1e-5);
      }
    }
  }
}

TEST_F(CpuBackendTest, ElementwiseOps) {
  const std::vector<float> a = Values(6, 0.3), b = Values(6, 0.8);
  Tensor at = Make({2, 3}, a), bt = Make({2, 3}, b);
  Tensor out = Zeros({2, 3});
  ASSERT_TRUE(backend_.SiluMul(at, bt, out).ok());
  for (int i = 0; i < 6; ++i) EXPECT_NEAR(F(out)[i], a[i] / (1 + std::exp(-a[i])) * b[i], 1e-6);
  ASSERT_TRUE(backend_.Add(at, bt, out).ok());
  for (int i = 0; i < 6; ++i) EXPECT_NEAR(F(out)[i], a[i] + b[i], 1e-6);
  ASSERT_TRUE(backend_.AddRow(at, Make({3}, {1.f, 2.f, 3.f})).ok());
  for (int i = 0; i < 6; ++i) EXPECT_NEAR(F(at)[i], a[i] + 1 + i % 3, 1e-6);
  ASSERT_TRUE(backend_.Silu(bt).ok());
  for (int i = 0; i < 6; ++i) EXPECT_NEAR(F(bt)[i], b[i] / (1 + std::exp(-b[i])), 1e-6);
}

TEST_F(CpuBackendTest, EmbeddingGathersRowsAndRejectsBadIds) {
  const std::vector<float> table = Values(4 * 3, 0.2);
  const Tensor tt = Make({4, 3}, table);
  Tensor out = Zeros({2, 3});
  const std::vector<int32_t> ids = {3, 1};
  ASSERT_TRUE(backend_.Embedding(tt, ids, out).ok());
  for (int c = 0; c < 3; ++c) {
    EXPECT_EQ(F(out)[c], table[9 + c]);
    EXPECT_EQ(F(out)[3 + c], table[3 + c]);
  }
  const std::vector<int32_t> bad = {0, 4};
  const absl::Status s = backend_.Embedding(tt, bad, out);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("4"), std::string::npos);
  for (int c = 0; c < 3; ++c) EXPECT_EQ(F(out)[c], table[9 + c]);  // nothing written
}

// Backend::Argmax (the default: the host's argmax of the copied tensor): NaN never, the lowest
// index on ties, -inf when nothing else is there, 0 when all are NaN; float32 only.
TEST_F(CpuBackendTest, ArgmaxIgnoresNanAndPrefersTheLowestIndex) {
  const float nan = std::nanf(""), inf = INFINITY;
  for (const auto& [values, want] : std::vector<std::pair<std::vector<float>, int64_t>>{
           {{1, 3, 2, 3}, 1},
           {{nan, -2, nan, -1}, 3},
           {{-inf, nan, -inf}, 0},
           {{nan, nan}, 0},
           {{nan, -inf, 5, inf, inf}, 3},
       }) {
    const Tensor t = Make({1, static_cast<int64_t>(values.size())}, values);
    absl::StatusOr<int64_t> got = backend_.Argmax(t);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(*got, want);
  }
  const Tensor wide = Make({3, 7}, Values(21, 0.4));
  std::vector<float> v = Values(21, 0.4);
  EXPECT_EQ(*backend_.Argmax(wide), std::max_element(v.begin(), v.end()) - v.begin());
  Tensor bf16 = *backend_.Allocate(DType::kBF16, {1, 4});
  EXPECT_EQ(backend_.Argmax(bf16).status().code(), absl::StatusCode::kInvalidArgument);
}

// CopyRowsFromHost (the default every backend without staging buffers uses): the rows `fill`
// gathers land as CopyFromHost would put them, bfloat16 widened; a size that does not match the
// destination is refused before `fill` runs.
TEST_F(CpuBackendTest, CopyRowsFromHostGathersRows) {
  const std::vector<float> pool = Values(5 * 4, 0.7);
  std::vector<uint16_t> pool_bf16(pool.size());
  for (size_t i = 0; i < pool.size(); ++i) pool_bf16[i] = FloatToBF16(pool[i]);
  const std::vector<int> order = {4, 0, 2};
  for (DType dt : {DType::kF32, DType::kBF16}) {
    const size_t row_bytes = 4 * DTypeSize(dt);
    const auto* src = dt == DType::kF32 ? static_cast<const void*>(pool.data())
                                        : static_cast<const void*>(pool_bf16.data());
    Tensor out = Zeros({3, 4});
    ASSERT_TRUE(backend_
                    .CopyRowsFromHost(
                        3, row_bytes, dt,
                        [&](int64_t first, int64_t count, void* dst) {
                          for (int64_t i = 0; i < count; ++i) {
                            std::memcpy(
                                static_cast<char*>(dst) + i * row_bytes,
                                static_cast<const char*>(src) + order[first + i] * row_bytes,
                                row_bytes);
                          }
                        },
                        out)
                    .ok());
    for (int r = 0; r < 3; ++r) {
      for (int c = 0; c < 4; ++c) {
        const float v = pool[order[r] * 4 + c];
        EXPECT_EQ(F(out)[r * 4 + c], dt == DType::kF32 ? v : BF16ToFloat(FloatToBF16(v)));
      }
    }
  }
  Tensor out = Zeros({3, 4});
  bool filled = false;
  EXPECT_EQ(backend_
                .CopyRowsFromHost(
                    2, 16, DType::kF32, [&](int64_t, int64_t, void*) { filled = true; }, out)
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(filled);
}

// bfloat16 KV caches: converting copies round like torch, attention over bf16 K/V equals the
// float32 path on the widened values bit for bit (prefill blocks and decode rows, GQA,
// head_dim with a ragged tail), and a same-dtype Embedding is a plain row gather.
TEST_F(CpuBackendTest, Bfloat16KeysAndValues) {
  const std::vector<float> x = {1.0f, 1.00390625f, 1.01171875f, -3.3e38f, INFINITY, -0.0f};
  Tensor f = Make({2, 3}, x);
  Tensor b = *backend_.Allocate(DType::kBF16, {2, 3});
  ASSERT_TRUE(backend_.Copy(f, b).ok());
  Tensor back = Zeros({2, 3});
  ASSERT_TRUE(backend_.Copy(b, back).ok());
  for (int i = 0; i < 6; ++i) EXPECT_EQ(F(back)[i], BF16ToFloat(FloatToBF16(x[i]))) << i;
  EXPECT_EQ(F(back)[1], 1.0f);       // ties round to even: down here,
  EXPECT_EQ(F(back)[2], 1.015625f);  // up here
  Tensor alias = Tensor::Borrow(DType::kBF16, {2, 3}, Device::kCpu, f.data());
  EXPECT_EQ(backend_.Copy(f, alias).code(), absl::StatusCode::kInvalidArgument);

  for (const auto& [nq, nk, hd] :
       {std::tuple<int64_t, int64_t, int64_t>{37, 300, 72}, {1, 500, 64}, {3, 40, 16}}) {
    const int64_t heads = 8, kv_heads = 2;
    Tensor q = Make({nq, heads * hd}, Values(nq * heads * hd, 0.7));
    Tensor k32 = Make({nk, kv_heads * hd}, Values(nk * kv_heads * hd, 1.1));
    Tensor v32 = Make({nk, kv_heads * hd}, Values(nk * kv_heads * hd, 1.9));
    Tensor k16 = *backend_.Allocate(DType::kBF16, k32.shape());
    Tensor v16 = *backend_.Allocate(DType::kBF16, v32.shape());
    ASSERT_TRUE(backend_.Copy(k32, k16).ok() && backend_.Copy(v32, v16).ok());
    ASSERT_TRUE(backend_.Copy(k16, k32).ok() && backend_.Copy(v16, v32).ok());  // widened
    Tensor want = Zeros({nq, heads * hd}), got = Zeros({nq, heads * hd});
    ASSERT_TRUE(backend_.Attention(q, k32, v32, heads, kv_heads, hd, want).ok());
    ASSERT_TRUE(backend_.Attention(q, k16, v16, heads, kv_heads, hd, got).ok());
    EXPECT_EQ(std::memcmp(F(want), F(got), want.nbytes()), 0) << nq << "x" << nk << " hd " << hd;
    EXPECT_FALSE(backend_.Attention(q, k16, v32, heads, kv_heads, hd, got).ok());
  }

  Tensor table = *backend_.Allocate(DType::kBF16, {4, 3});
  ASSERT_TRUE(backend_.Copy(Make({4, 3}, Values(12, 0.4)), table).ok());
  Tensor rows = *backend_.Allocate(DType::kBF16, {2, 3});
  const std::vector<int32_t> ids = {2, 0};
  ASSERT_TRUE(backend_.Embedding(table, ids, rows).ok());
  const uint16_t* t16 = table.data_as<const uint16_t>();
  const uint16_t* r16 = rows.data_as<const uint16_t>();
  for (int c = 0; c < 3; ++c) {
    EXPECT_EQ(r16[c], t16[6 + c]);
    EXPECT_EQ(r16[3 + c], t16[c]);
  }
  EXPECT_FALSE(backend_.Embedding(table, ids, *backend_.Allocate(DType::kF16, {2, 3})).ok());
}

TEST_F(CpuBackendTest, RopeRefusesMismatchedShapesWithoutWriting) {
  const int64_t hd = 8;
  const std::vector<float> x = Values(2 * hd, 0.5);
  Tensor xt = Make({2, hd}, x);
  const Tensor freq = Make({hd / 2}, {1.f, 0.1f, 0.01f, 0.001f});
  const std::vector<int64_t> two = {0, 1}, one = {0};
  const Tensor i32 = *backend_.Allocate(DType::kI32, {2, hd});
  const struct {
    absl::Status status;
    const char* names;
  } refusals[] = {
      {backend_.Rope(xt, 6, two, freq), "head_dim 6"},  // does not divide 8 columns
      {backend_.Rope(xt, 0, two, freq), "head_dim 0"},
      {backend_.Rope(xt, hd, one, freq), "1 positions"},  // two rows
      {backend_.Rope(xt, hd, two, Make({3}, {1.f, 2.f, 3.f})), "inv_freq 3"},
      {backend_.Rope(i32, hd, two, freq), "Rope x: expected F32"},
  };
  for (const auto& [status, names] : refusals) {
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << names;
    EXPECT_NE(status.message().find(names), std::string::npos) << status.message();
  }
  for (int64_t i = 0; i < 2 * hd; ++i) EXPECT_EQ(F(xt)[i], x[i]);
}

TEST(RopeInvFreqTest, Llama3ScalingBands) {
  ModelConfig c;
  c.head_dim = 64;
  c.rope_theta = 500000;
  c.rope_scaling.rope_type = "llama3";
  c.rope_scaling.factor = 8;
  c.rope_scaling.low_freq_factor = 1;
  c.rope_scaling.high_freq_factor = 4;
  c.rope_scaling.original_max_position_embeddings = 64;
  const std::vector<float> f = RopeInvFreq(c, false);
  ASSERT_EQ(f.size(), 32u);
  for (int j = 0; j < 32; ++j) {
    const double base = 1 / std::pow(500000.0, 2.0 * j / 64);
    const double wavelen = 2 * M_PI / base;
    double want = base;
    if (wavelen > 64) {
      want = base / 8;
    } else if (wavelen >= 16) {
      const double s = (64 / wavelen - 1) / 3;
      want = (1 - s) * base / 8 + s * base;
    }
    EXPECT_NEAR(f[j] / want, 1, 1e-5) << j;
  }
  const std::vector<float> b = RopeInvFreq(c, true);
  for (int j = 0; j < 32; ++j) EXPECT_EQ(b[j], BF16ToFloat(FloatToBF16(f[j])));
}

}  // namespace
}  // namespace mplus::engine::cpu
