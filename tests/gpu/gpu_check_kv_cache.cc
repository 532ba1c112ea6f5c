// GPU checks of narrow KV caches, bfloat16 and float8 e4m3: converting copies float32 <-> cache
// dtype, attention over such K/V, same-dtype row gathers; the fixture is gpu_check.h.
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <utility>
#include <vector>

#include "engine/cuda/attention.h"
#include "engine/cuda/f8e4m3.cuh"
#include "tests/gpu/gpu_check.h"

namespace mplus::gpu_test {
namespace {

using engine::cuda::BitCast;

float FromBits(uint32_t u) { return BitCast<float>(u); }

// float32 -> bfloat16 written apart from engine/dtype.h: keep the top 16 bits, add one when the
// dropped 16 exceed half, or are exactly half and the kept part is odd (a carry may reach the
// exponent: FLT_MAX becomes inf); a NaN keeps its sign and top payload with the quiet bit set.
uint16_t RefBF16(float f) {
  const uint32_t u = BitCast<uint32_t>(f), hi = u >> 16, lo = u & 0xffffu;
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>(hi | 0x40u);
  if (lo > 0x8000u || (lo == 0x8000u && (hi & 1u) != 0)) return static_cast<uint16_t>(hi + 1);
  return static_cast<uint16_t>(hi);
}

// A bfloat16 NaN no conversion produces (quiet bit clear), to fill 16-bit outputs with.
constexpr uint16_t kBf16Poison = 0x7f81;
// e4m3 has no spare NaN: its negative NaN, which only a negative NaN converts to.
constexpr uint8_t kF8Poison = 0xff;

// A tensor of `dtype` holding the raw host elements `src` (narrow dtypes: their bits).
template <typename T>
absl::StatusOr<Tensor> UploadRaw(Backend& backend, const std::vector<T>& src, DType dtype,
                                 std::vector<int64_t> shape) {
  absl::StatusOr<Tensor> t = backend.Allocate(dtype, std::move(shape));
  if (!t.ok()) return t;
  if (t->nbytes() != src.size() * sizeof(T)) return absl::InternalError("UploadRaw: size");
  if (absl::Status s = backend.CopyFromHost(src.data(), dtype, *t); !s.ok()) return s;
  return t;
}

template <typename T>
absl::StatusOr<std::vector<T>> DownloadRaw(Backend& backend, const Tensor& t) {
  std::vector<T> out(t.nbytes() / sizeof(T));
  if (absl::Status s = backend.CopyToHost(t, out.data()); !s.ok()) return s;
  return out;
}

std::vector<uint32_t> FloatBits(const std::vector<float>& v) {
  std::vector<uint32_t> bits(v.size());
  std::memcpy(bits.data(), v.data(), v.size() * sizeof(float));
  return bits;
}

// Copy float32 `src` -> `dtype` (elements of bits T) gives `want` on the CPU and the GPU, bit for
// bit; back to float32 gives widen(want[i]) bit for bit (NaNs included), and narrowing that
// again the same bits. Converting copies that share a byte are refused (nothing written); only
// float32 <-> a narrow dtype converts, with equal element counts.
template <typename T>
void CheckNarrowingCopies(Backend& cpu, Backend& gpu, const std::vector<float>& src, DType dtype,
                          const std::vector<T>& want, float (*widen)(T), T poison) {
  const int64_t n = static_cast<int64_t>(src.size());
  std::vector<uint32_t> want_wide(src.size());
  for (size_t i = 0; i < src.size(); ++i) want_wide[i] = BitCast<uint32_t>(widen(want[i]));
  std::vector<std::vector<T>> narrowed;
  for (Backend* b : {&cpu, &gpu}) {
    SCOPED_TRACE(b->name());
    // Copies float32 `from` into a poisoned narrow tensor, which must then hold `want`.
    Tensor narrow;
    const auto narrow_from = [&](const Tensor& from, const char* what) {
      ASSERT_OK_AND_ASSIGN(t, UploadRaw(*b, std::vector<T>(src.size(), poison), dtype, {n}));
      ASSERT_OK(b->Copy(from, t));
      ASSERT_OK_AND_ASSIGN(got, DownloadRaw<T>(*b, t));
      EXPECT_EQ(CountMismatches(
                    got, [&](int64_t i) { return want[i]; }, what),
                0);
      narrow = std::move(t);
    };
    ASSERT_OK_AND_ASSIGN(f32, Upload(*b, src, {n}));
    narrow_from(f32, "f32 -> narrow");
    ASSERT_OK_AND_ASSIGN(narrow_host, DownloadRaw<T>(*b, narrow));
    narrowed.push_back(std::move(narrow_host));
    ASSERT_OK_AND_ASSIGN(wide, Poisoned(*b, {n}));
    ASSERT_OK(b->Copy(narrow, wide));
    ASSERT_OK_AND_ASSIGN(wide_host, Download(*b, wide));
    EXPECT_EQ(CountMismatches(
                  FloatBits(wide_host), [&](int64_t i) { return want_wide[i]; }, "narrow -> f32"),
              0);
    narrow_from(wide, "f32 -> narrow -> f32 -> narrow");
  }
  // GPU and CPU write the same cache.
  EXPECT_EQ(CountMismatches(
                narrowed[1], [&](int64_t i) { return narrowed[0][i]; }, "gpu vs cpu"),
            0);

  // Aliasing: f32 [0, 4m) and a narrow view starting one element before its end overlap by that
  // element; starting right at its end, they do not.
  const int64_t m = 64;
  ASSERT_OK_AND_ASSIGN(buf, Upload(gpu, RandomFloats(2 * m, 102), {2 * m}));
  char* base = static_cast<char*>(buf.data());
  const Tensor f32_view = buf.Rows(0, m);
  const Tensor straddling =
      Tensor::Borrow(dtype, {m}, engine::Device::kCuda, base + 4 * m - sizeof(T));
  const Tensor adjacent = Tensor::Borrow(dtype, {m}, engine::Device::kCuda, base + 4 * m);
  const Tensor same_start = Tensor::Borrow(dtype, {m}, engine::Device::kCuda, base);
  for (const Tensor* narrow : {&straddling, &same_start}) {
    EXPECT_EQ(gpu.Copy(f32_view, *narrow).code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(gpu.Copy(*narrow, f32_view).code(), absl::StatusCode::kInvalidArgument);
  }
  ASSERT_OK(gpu.Copy(f32_view, adjacent));
  ASSERT_OK_AND_ASSIGN(adjacent_host, DownloadRaw<T>(gpu, adjacent));
  ASSERT_OK_AND_ASSIGN(f32_host, Download(gpu, f32_view));
  ASSERT_OK_AND_ASSIGN(cpu_f32, Upload(cpu, f32_host, {m}));
  ASSERT_OK_AND_ASSIGN(cpu_narrow, cpu.Allocate(dtype, {m}));
  ASSERT_OK(cpu.Copy(cpu_f32, cpu_narrow));
  ASSERT_OK_AND_ASSIGN(cpu_narrow_host, DownloadRaw<T>(cpu, cpu_narrow));
  EXPECT_EQ(CountMismatches(
                adjacent_host, [&](int64_t i) { return cpu_narrow_host[i]; }, "adjacent"),
            0);
  ASSERT_OK_AND_ASSIGN(f16, gpu.Allocate(DType::kF16, {m}));
  EXPECT_EQ(gpu.Copy(f32_view, f16).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(gpu.Copy(adjacent, f16).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_OK_AND_ASSIGN(short_narrow, gpu.Allocate(dtype, {m - 1}));
  EXPECT_EQ(gpu.Copy(f32_view, short_narrow).code(), absl::StatusCode::kInvalidArgument);
}

// Copy float32 -> bfloat16 rounds to nearest even and keeps NaNs as engine/dtype.h's FloatToBF16
// (hand-picked bits: ties both ways, around FLT_MAX, infinities, NaN payloads and signs,
// subnormals; then random bit patterns over several blocks); bfloat16 -> float32 is exact.
TEST_F(GpuCheck, Bf16KvCopyConverts) {
  const std::vector<std::pair<uint32_t, uint16_t>>
      cases = {{0x3f800000u, 0x3f80},  // 1
               {0x3f808000u, 0x3f80},  // 1 + 2^-8: tie, kept part even -> down
               {0x3f818000u, 0x3f82},  // tie, kept part odd -> up
               {0x3f808001u, 0x3f81},  // just above the tie
               {0x3f817fffu, 0x3f81},  // just below the tie
               {0xbf808000u, 0xbf80}, {0xbf818000u, 0xbf82},  // negative ties
               {0x7f7fffffu, 0x7f80},                         // FLT_MAX rounds to inf
               {0x7f7f7fffu, 0x7f7f}, {0xff7fffffu, 0xff80}, {0x7f800000u, 0x7f80},
               {0xff800000u, 0xff80}, {0x7fc00000u, 0x7fc0}, {0xffc00000u, 0xffc0},
               {0x7f800001u, 0x7fc0},  // signalling NaN whose payload lies in the dropped half
               {0x7fabcdefu, 0x7feb}, {0xff812345u, 0xffc1}, {0x00000000u, 0x0000},
               {0x80000000u, 0x8000}, {0x00008000u, 0x0000},  // subnormal tie -> even
               {0x00018000u, 0x0002}, {0x00007fffu, 0x0000}, {0x807fffffu, 0x8080}};
  std::vector<float> src;
  for (const auto& [bits, want] : cases) {
    src.push_back(FromBits(bits));
    ASSERT_EQ(RefBF16(src.back()), want) << std::hex << bits;  // the reference itself
    ASSERT_EQ(engine::FloatToBF16(src.back()), want) << std::hex << bits;
  }
  std::mt19937 rng(101);
  while (src.size() < 100000) src.push_back(FromBits(rng()));  // NaNs and infs included
  std::vector<uint16_t> want(src.size());
  for (size_t i = 0; i < src.size(); ++i) want[i] = RefBF16(src[i]);
  CheckNarrowingCopies<uint16_t>(*cpu_, *gpu_, src, DType::kBF16, want, engine::BF16ToFloat,
                                 kBf16Poison);
}

// Copy float32 -> float8 e4m3 is engine/dtype.h's FloatToF8E4M3 bit for bit (hand-picked:
// ties both ways, the subnormal range and its top, saturation at 448 and beyond, infinities, NaN
// signs; every e4m3 value; then random bits and random values over the e4m3 range); e4m3 ->
// float32 is exact (NaN -> a quiet NaN of its sign, as on the CPU). No other conversion of e4m3.
TEST_F(GpuCheck, F8KvCopyConverts) {
  const float sub = std::ldexp(1.0f, -9);  // the smallest e4m3 subnormal
  const std::vector<std::pair<float, uint8_t>> cases = {
      {1.0f, 0x38},
      {1.0625f, 0x38},  // tie, kept part even -> down
      {1.1875f, 0x3a},
      {1.0625001f, 0x39},  // tie, odd -> up; just above a tie
      {-1.1875f, 0xba},
      {240.0f, 0x77},  // e 14, m 7
      {448.0f, 0x7e},
      {449.0f, 0x7e},  // the largest finite; above it
      {464.0f, 0x7e},
      {1e30f, 0x7e},  // 448 / 480 tie: saturates
      {-1e30f, 0xfe},
      {0.0f, 0x00},  //
      {-0.0f, 0x80},
      {sub, 0x01},  //
      {0.5f * sub, 0x00},
      {1.5f * sub, 0x02},  // subnormal ties: even
      {2.5f * sub, 0x02},
      {7.5f * sub, 0x08},  // the top tie rounds into the normals
      {0.5001f * sub, 0x01},
      {1e-40f, 0x00},  // just above a tie; a float32 subnormal
      {8.0f * sub, 0x08},
      {std::ldexp(1.0f, -7), 0x04},
      {FromBits(0x7f800000u), 0x7e},
      {FromBits(0xff800000u), 0xfe},  // infinities saturate
      {FromBits(0x7fc00000u), 0x7f},
      {FromBits(0xffc00001u), 0xff},  // NaNs keep their sign
      {FromBits(0x7f800001u), 0x7f}};
  std::vector<float> src;
  for (const auto& [value, want] : cases) {
    src.push_back(value);
    ASSERT_EQ(engine::FloatToF8E4M3(value), want) << value;
  }
  for (int b = 0; b < 256; ++b) src.push_back(engine::F8E4M3ToFloat(static_cast<uint8_t>(b)));
  std::mt19937 rng(103);
  for (int i = 0; i < 30000; ++i) src.push_back(FromBits(rng()));  // NaNs and infs included
  for (const float range : {500.0f, 1.0f, 0.02f}) {
    for (const float x : RandomFloats(20000, rng(), -range, range)) src.push_back(x);
  }
  std::vector<uint8_t> want(src.size());
  for (size_t i = 0; i < src.size(); ++i) want[i] = engine::FloatToF8E4M3(src[i]);
  CheckNarrowingCopies<uint8_t>(*cpu_, *gpu_, src, DType::kF8E4M3, want, engine::F8E4M3ToFloat,
                                kF8Poison);
  ASSERT_OK_AND_ASSIGN(f8, gpu_->Allocate(DType::kF8E4M3, {4}));
  ASSERT_OK_AND_ASSIGN(bf16, gpu_->Allocate(DType::kBF16, {4}));
  EXPECT_EQ(gpu_->Copy(f8, bf16).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(gpu_->Copy(bf16, f8).code(), absl::StatusCode::kInvalidArgument);
}

// Double-precision attention over float32 inputs, the bottom-right causal mask and GQA.
std::vector<float> RefAttention(const std::vector<float>& q, const std::vector<float>& k,
                                const std::vector<float>& v, int64_t nq, int64_t nk, int64_t heads,
                                int64_t kv_heads, int64_t hd) {
  std::vector<float> out(static_cast<size_t>(nq * heads * hd));
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  std::vector<double> s(static_cast<size_t>(nk)), acc(static_cast<size_t>(hd));
  for (int64_t i = 0; i < nq; ++i) {
    const int64_t visible = nk - nq + i + 1;
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t g = h / (heads / kv_heads);
      const float* qi = &q[(i * heads + h) * hd];
      double mx = -std::numeric_limits<double>::infinity(), sum = 0;
      for (int64_t j = 0; j < visible; ++j) {
        const float* kj = &k[(j * kv_heads + g) * hd];
        double dot = 0;
        for (int64_t d = 0; d < hd; ++d) dot += static_cast<double>(qi[d]) * kj[d];
        s[j] = dot * scale;
        mx = std::max(mx, s[j]);
      }
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t j = 0; j < visible; ++j) {
        const double p = std::exp(s[j] - mx);
        sum += p;
        const float* vj = &v[(j * kv_heads + g) * hd];
        for (int64_t d = 0; d < hd; ++d) acc[d] += p * vj[d];
      }
      for (int64_t d = 0; d < hd; ++d) {
        out[(i * heads + h) * hd + d] = static_cast<float>(acc[d] / sum);
      }
    }
  }
  return out;
}

// Attention over bf16 / fp8 K/V (written by Copy from float32, as a KV cache is) is bit for bit
// the GPU's float32 attention over the widened K/V, on the tiled prefill path (four-element and
// single-element loads), the decode kernel and the head_dim 128 decode tiles (a partial tile;
// key splits); and near a double reference and the CPU's attention over the same K/V. Prefill
// with head_dim 128 runs on tensor cores (q and probabilities in bf16): near the reference
// within bf16 error, with and without key splits.
TEST_F(GpuCheck, NarrowKvAttentionEqualsWidenedF32) {
  int sms = 0;
  ASSERT_EQ(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0), cudaSuccess);
  struct Case {
    int64_t nq, nk, heads, kv_heads, hd;
    bool split;         // whether the shape takes the split-K (flash-decoding) path
    bool tensor_cores;  // prefill with head_dim 128
  };
  const Case cases[] = {{600, 900, 8, 2, 64, false, false},  // 300 row tiles: one wave or more
                        {5, 70, 4, 2, 18, false, false},     // head_dim 18: one element a load
                        {1, 5000, 8, 2, 64, true, false},     {1, 5000, 8, 2, 128, true, false},
                        {1, 31, 8, 8, 128, false, false},  // decode tiles: a partial one
                        {1, 777, 8, 4, 128, true, false},     {1, 2000, 16, 2, 128, true, false},
                        {600, 900, 8, 2, 128, true, true},     // 80 blocks: 3 key splits
                        {300, 1700, 32, 8, 128, false, true},  // GQA 4, rows not a tile multiple
                        {40, 3000, 8, 2, 128, true, true}};    // few row tiles: key splits
  for (const DType kv_dtype : {DType::kBF16, DType::kF8E4M3}) {
    uint32_t seed = 110;
    for (const Case& c : cases) {
      SCOPED_TRACE(testing::Message()
                   << DTypeName(kv_dtype) << " nq=" << c.nq << " nk=" << c.nk << " H=" << c.heads
                   << " Hkv=" << c.kv_heads << " hd=" << c.hd);
      const engine::cuda::AttentionShape shape{c.nq, c.nk, c.heads, c.kv_heads, c.hd};
      // The split choice depends on the SM count (the cases are picked for 132, H100 SXM and
      // H200): on another card a case may take the other path, which is checked the same way.
      if ((engine::cuda::AttentionSplits(shape, sms, kv_dtype) > 1) != c.split) {
        std::printf("note: with %d SMs this case %s key splits\n", sms,
                    c.split ? "takes no" : "takes");
      }
      const int64_t kv_cols = c.kv_heads * c.hd, q_cols = c.heads * c.hd;
      const std::vector<float> q = RandomFloats(c.nq * q_cols, seed++, -2, 2);
      const std::vector<float> k = RandomFloats(c.nk * kv_cols, seed++, -2, 2);
      const std::vector<float> v = RandomFloats(c.nk * kv_cols, seed++);
      const std::vector<float> k_wide = Rounded(k, kv_dtype), v_wide = Rounded(v, kv_dtype);

      std::vector<std::vector<float>> narrow_out;
      for (Backend* b : {cpu_, gpu_}) {
        SCOPED_TRACE(b->name());
        ASSERT_OK_AND_ASSIGN(qt, Upload(*b, q, {c.nq, q_cols}));
        ASSERT_OK_AND_ASSIGN(kf, Upload(*b, k, {c.nk, kv_cols}));
        ASSERT_OK_AND_ASSIGN(vf, Upload(*b, v, {c.nk, kv_cols}));
        ASSERT_OK_AND_ASSIGN(kn, b->Allocate(kv_dtype, {c.nk, kv_cols}));
        ASSERT_OK_AND_ASSIGN(vn, b->Allocate(kv_dtype, {c.nk, kv_cols}));
        ASSERT_OK(b->Copy(kf, kn));
        ASSERT_OK(b->Copy(vf, vn));
        ASSERT_OK_AND_ASSIGN(out, Poisoned(*b, {c.nq, q_cols}));
        ASSERT_OK(b->Attention(qt, kn, vn, c.heads, c.kv_heads, c.hd, out));
        ASSERT_OK_AND_ASSIGN(host, Download(*b, out));
        narrow_out.push_back(std::move(host));
        EXPECT_EQ(b->Attention(qt, kn, vf, c.heads, c.kv_heads, c.hd, out).code(),
                  absl::StatusCode::kInvalidArgument);  // mixed K/V dtypes
      }
      ASSERT_OK_AND_ASSIGN(qt, Upload(*gpu_, q, {c.nq, q_cols}));
      ASSERT_OK_AND_ASSIGN(kw, Upload(*gpu_, k_wide, {c.nk, kv_cols}));
      ASSERT_OK_AND_ASSIGN(vw, Upload(*gpu_, v_wide, {c.nk, kv_cols}));
      ASSERT_OK_AND_ASSIGN(out, Poisoned(*gpu_, {c.nq, q_cols}));
      ASSERT_OK(gpu_->Attention(qt, kw, vw, c.heads, c.kv_heads, c.hd, out));
      ASSERT_OK_AND_ASSIGN(f32_out, Download(*gpu_, out));
      const std::vector<uint32_t> f32_bits = FloatBits(f32_out);
      for (float x : f32_out) ASSERT_FALSE(std::isnan(x)) << "unwritten element";
      for (float x : narrow_out[1]) ASSERT_FALSE(std::isnan(x)) << "unwritten element";
      if (!c.tensor_cores) {
        EXPECT_EQ(CountMismatches(
                      FloatBits(narrow_out[1]), [&](int64_t i) { return f32_bits[i]; },
                      "narrow K/V vs widened f32 K/V"),
                  0);
      }
      // q and the probabilities in bf16 (relative 2^-9 each) on the tensor-core path.
      const float atol = c.tensor_cores ? 1e-2f : 2e-5f, rtol = c.tensor_cores ? 1e-2f : 1e-4f;
      const std::vector<float> ref =
          RefAttention(q, k_wide, v_wide, c.nq, c.nk, c.heads, c.kv_heads, c.hd);
      ExpectNear(narrow_out[1], ref, RelBound(ref, atol, rtol), "GPU narrow K/V vs reference");
      ExpectNear(narrow_out[1], narrow_out[0], RelBound(narrow_out[0], atol, rtol),
                 "GPU vs CPU narrow K/V");
    }
  }
}

// Embedding into the table's own dtype gathers rows bit for bit (any bits, NaN payloads
// included); `other` out dtypes are refused, as are ids out of range.
template <typename T>
void CheckSameDtypeGather(Backend& cpu, Backend& gpu, DType dt, DType other, T poison,
                          std::mt19937& rng) {
  SCOPED_TRACE(engine::DTypeName(dt));
  const int64_t vocab = 1000, d = 257;  // odd d: rows start at odd element offsets
  const std::vector<int32_t> ids = {0, 999, 5, 5, 123, 998};
  const int64_t n = static_cast<int64_t>(ids.size());
  std::vector<T> rows(static_cast<size_t>(vocab * d));
  for (T& bits : rows) bits = static_cast<T>(rng());
  std::vector<T> want;
  for (int32_t id : ids)
    want.insert(want.end(), rows.begin() + id * d, rows.begin() + (id + 1) * d);
  for (Backend* b : {&cpu, &gpu}) {
    SCOPED_TRACE(b->name());
    // Allocate + CopyFromHost keeps float16 as it is (UploadWeight widens it on the GPU).
    ASSERT_OK_AND_ASSIGN(tt, UploadRaw(*b, rows, dt, {vocab, d}));
    ASSERT_OK_AND_ASSIGN(
        out, UploadRaw(*b, std::vector<T>(static_cast<size_t>(n * d), poison), dt, {n, d}));
    ASSERT_OK(b->Embedding(tt, ids, out));
    ASSERT_OK_AND_ASSIGN(got, DownloadRaw<T>(*b, out));
    EXPECT_EQ(CountMismatches(
                  got, [&](int64_t i) { return want[i]; }, "gathered rows"),
              0);
    const std::vector<int32_t> bad = {3, static_cast<int32_t>(vocab)};
    EXPECT_EQ(b->Embedding(tt, bad, out.Rows(0, 2)).code(), absl::StatusCode::kInvalidArgument);
    ASSERT_OK_AND_ASSIGN(other_out, b->Allocate(other, {n, d}));
    EXPECT_EQ(b->Embedding(tt, ids, other_out).code(), absl::StatusCode::kInvalidArgument);
  }
}

// Same-dtype gathers of 16-bit and 8-bit rows (a prefix cache's rows into a KV cache); float32
// into float32 too.
TEST_F(GpuCheck, EmbeddingSameDtypeGathersRows) {
  std::mt19937 rng(120);
  CheckSameDtypeGather<uint16_t>(*cpu_, *gpu_, DType::kBF16, DType::kF16, kBf16Poison, rng);
  CheckSameDtypeGather<uint16_t>(*cpu_, *gpu_, DType::kF16, DType::kBF16, kBf16Poison, rng);
  CheckSameDtypeGather<uint8_t>(*cpu_, *gpu_, DType::kF8E4M3, DType::kBF16, kF8Poison, rng);
  const int64_t vocab = 1000, d = 257;
  const std::vector<int32_t> ids = {0, 999, 5, 5, 123, 998};
  const int64_t n = static_cast<int64_t>(ids.size());
  const std::vector<float> values = RandomFloats(vocab * d, 121, -100, 100);
  auto table = MakeWeight(values, DType::kF32, {vocab, d});
  for (Backend* b : {cpu_, gpu_}) {
    SCOPED_TRACE(b->name());
    ASSERT_OK_AND_ASSIGN(tt, b->UploadWeight(table->view));
    ASSERT_OK_AND_ASSIGN(out, Poisoned(*b, {n, d}));
    ASSERT_OK(b->Embedding(tt, ids, out));
    ASSERT_OK_AND_ASSIGN(got, Download(*b, out));
    const std::vector<uint32_t> got_bits = FloatBits(got), table_bits = FloatBits(values);
    EXPECT_EQ(
        CountMismatches(
            got_bits, [&](int64_t i) { return table_bits[ids[i / d] * d + i % d]; }, "f32 rows"),
        0);
  }
}

}  // namespace
}  // namespace mplus::gpu_test
