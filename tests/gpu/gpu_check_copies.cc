// GPU checks of host-to-device copies through the pinned staging ring and of bfloat16 K/V
// (converting copies, attention over bf16 K/V, same-dtype gathers); the fixture is gpu_check.h.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "engine/cuda/attention.h"
#include "engine/cuda/pinned_staging.h"
#include "tests/gpu/gpu_check.h"

namespace mplus::gpu_test {
namespace {

// --- Host-to-device copies through the pinned staging ring (engine/cuda/pinned_staging.h) ---

using engine::cuda::PinnedStaging;

// Float32 GEMMs to queue before copies (about 1.4 ms each on an H100), so that the copies wait in
// the stream: a copy still reading the caller's memory after returning, or a staging buffer
// overwritten before its copy ran, would then pick up later bytes.
struct Backlog {
  Tensor x, w, out;
};
absl::StatusOr<Backlog> MakeBacklog(Backend& gpu) {
  Backlog b;
  const std::vector<float> zeros(static_cast<size_t>(4096 * 4096), 0.0f);
  absl::StatusOr<Tensor> x =
      Upload(gpu, std::vector<float>(zeros.begin(), zeros.begin() + 2048 * 4096), {2048, 4096});
  if (!x.ok()) return x.status();
  absl::StatusOr<Tensor> w = Upload(gpu, zeros, {4096, 4096});
  if (!w.ok()) return w.status();
  absl::StatusOr<Tensor> out = gpu.Allocate(DType::kF32, {2048, 4096});
  if (!out.ok()) return out.status();
  b.x = *std::move(x);
  b.w = *std::move(w);
  b.out = *std::move(out);
  return b;
}
absl::Status EnqueueBacklog(Backend& gpu, const Backlog& b, int gemms) {
  for (int i = 0; i < gemms; ++i) {
    if (absl::Status s = gpu.MatMul(b.x, b.w, b.out); !s.ok()) return s;
  }
  return absl::OkStatus();
}

// A value in [1, 2) for element i of copy number `call` (differs between calls, never NaN).
float StagingValue(size_t call, int64_t i) {
  const uint32_t h =
      static_cast<uint32_t>(i) * 2654435761u ^ static_cast<uint32_t>(call + 1) * 0x9E3779B9u;
  const uint32_t bits = (h >> 9) | 0x3F800000u;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// Elements of `got` that differ from `want(i)`; names the first few.
template <typename T, typename Want>
int64_t CountMismatches(const std::vector<T>& got, Want want, const char* what) {
  int64_t bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (!(got[i] == want(static_cast<int64_t>(i))) && ++bad <= 3) {
      ADD_FAILURE() << what << " [" << i << "] of " << got.size() << ": got " << got[i] << " want "
                    << want(static_cast<int64_t>(i));
    }
  }
  return bad;
}

// Same-dtype copies from one host vector that is overwritten as soon as each call returns, each
// into its own tensor, sizes from 1 element to 3 rings, behind a busy GPU: every tensor must hold
// the values at the time of its call (staging read the host before returning, and reusing a
// ring buffer waited for its earlier copies).
TEST_F(GpuCheck, StagedCopiesReadHostBeforeReturning) {
  constexpr int64_t kBuf = PinnedStaging::kBufferBytes / sizeof(float);
  constexpr int64_t kRing = PinnedStaging::kTotalBytes / sizeof(float);
  const std::vector<int64_t> sizes = {1,        2, 63,        64,    65, 1000,      kBuf - 1, kBuf,
                                      kBuf + 1, 5, kRing - 7, kRing, 3,  3 * kRing, 7};
  ASSERT_OK_AND_ASSIGN(backlog, MakeBacklog(*gpu_));
  std::vector<float> host(static_cast<size_t>(*std::max_element(sizes.begin(), sizes.end())));
  std::vector<Tensor> dsts;
  ASSERT_OK(EnqueueBacklog(*gpu_, backlog, 16));
  for (size_t c = 0; c < sizes.size(); ++c) {
    const int64_t n = sizes[c];
    for (int64_t i = 0; i < n; ++i) host[i] = StagingValue(c, i);
    ASSERT_OK_AND_ASSIGN(t, gpu_->Allocate(DType::kF32, {n}));
    ASSERT_OK(gpu_->CopyFromHost(host.data(), DType::kF32, t));
    std::fill_n(host.begin(), n, -7.0f);  // the caller reuses its memory at once
    if (c % 4 == 3) ASSERT_OK(EnqueueBacklog(*gpu_, backlog, 2));
    dsts.push_back(std::move(t));
  }
  ASSERT_OK(gpu_->Synchronize());
  for (size_t c = 0; c < sizes.size(); ++c) {
    SCOPED_TRACE(testing::Message() << "copy " << c << " of " << sizes[c] << " floats");
    ASSERT_OK_AND_ASSIGN(got, Download(*gpu_, dsts[c]));
    EXPECT_EQ(CountMismatches(
                  got, [c](int64_t i) { return StagingValue(c, i); }, "staged"),
              0);
  }
}

// bfloat16 and float16 widened to float32 through the same path (staged into the backend's
// conversion scratch, then a widen kernel), interleaved with bfloat16 MatMuls that use the same
// scratch for their activations: the copies, the MatMuls and the scratch's growth must keep
// their order.
TEST_F(GpuCheck, StagedWideningCopies) {
  const int64_t n = 16, m = 64, k = 256;
  const std::vector<float> x = RandomFloats(n * k, 91);
  const std::vector<float> w = Rounded(RandomFloats(m * k, 92), DType::kBF16);
  auto hw = MakeWeight(w, DType::kBF16, {m, k});
  ASSERT_OK_AND_ASSIGN(cx, Upload(*cpu_, x, {n, k}));
  ASSERT_OK_AND_ASSIGN(cw, cpu_->UploadWeight(hw->view));
  ASSERT_OK_AND_ASSIGN(cout, Poisoned(*cpu_, {n, m}));
  ASSERT_OK(cpu_->MatMul(cx, cw, cout));
  ASSERT_OK_AND_ASSIGN(want_mm, Download(*cpu_, cout));
  std::vector<float> bound(static_cast<size_t>(n * m));
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < m; ++j) {
      double mag = 0;
      for (int64_t t = 0; t < k; ++t) mag += std::fabs(x[i * k + t] * w[j * k + t]);
      bound[i * m + j] = 1e-5f + static_cast<float>(mag) / 256;
    }
  }
  ASSERT_OK_AND_ASSIGN(gx, Upload(*gpu_, x, {n, k}));
  ASSERT_OK_AND_ASSIGN(gw, gpu_->UploadWeight(hw->view));
  ASSERT_OK_AND_ASSIGN(backlog, MakeBacklog(*gpu_));

  constexpr int64_t kBuf = PinnedStaging::kBufferBytes / 2;
  constexpr int64_t kRing = PinnedStaging::kTotalBytes / 2;
  for (DType dt : {DType::kBF16, DType::kF16}) {
    SCOPED_TRACE(engine::DTypeName(dt));
    const auto decoded = [dt](size_t call, int64_t i) {
      const float v = StagingValue(call, i);
      return dt == DType::kBF16 ? engine::BF16ToFloat(engine::FloatToBF16(v))
                                : engine::F16ToFloat(engine::FloatToF16(v));
    };
    std::vector<int64_t> sizes = {1, 2, 3, 129, kBuf - 1, kBuf + 1, 4, kRing + 1};
    if (dt == DType::kBF16) sizes.push_back(3 * kRing);
    std::vector<uint16_t> host(static_cast<size_t>(*std::max_element(sizes.begin(), sizes.end())));
    std::vector<Tensor> dsts, products;
    ASSERT_OK(EnqueueBacklog(*gpu_, backlog, 8));
    for (size_t c = 0; c < sizes.size(); ++c) {
      const int64_t len = sizes[c];
      for (int64_t i = 0; i < len; ++i) {
        const float v = StagingValue(c, i);
        host[i] = dt == DType::kBF16 ? engine::FloatToBF16(v) : engine::FloatToF16(v);
      }
      ASSERT_OK_AND_ASSIGN(product, Poisoned(*gpu_, {n, m}));
      ASSERT_OK(gpu_->MatMul(gx, gw, product));  // its bf16 activations live in the scratch
      ASSERT_OK_AND_ASSIGN(t, gpu_->Allocate(DType::kF32, {len}));
      ASSERT_OK(gpu_->CopyFromHost(host.data(), dt, t));
      std::fill_n(host.begin(), len, uint16_t{0xFFFF});  // a NaN in both formats
      if (c % 3 == 2) ASSERT_OK(EnqueueBacklog(*gpu_, backlog, 2));
      dsts.push_back(std::move(t));
      products.push_back(std::move(product));
    }
    ASSERT_OK(gpu_->Synchronize());
    for (size_t c = 0; c < sizes.size(); ++c) {
      SCOPED_TRACE(testing::Message() << "copy " << c << " of " << sizes[c] << " elements");
      ASSERT_OK_AND_ASSIGN(got, Download(*gpu_, dsts[c]));
      EXPECT_EQ(CountMismatches(
                    got, [&](int64_t i) { return decoded(c, i); }, "widened"),
                0);
      ASSERT_OK_AND_ASSIGN(mm, Download(*gpu_, products[c]));
      ExpectNear(mm, want_mm, bound, "MatMul between staged copies");
    }
  }
}

// One copy of 2.5 rings plus a few elements, starting mid-buffer (after a 12-byte copy) into a
// tensor offset by 12 bytes, so its chunks straddle buffers at unaligned places: every element
// lands where it belongs.
TEST_F(GpuCheck, StagedLargeCopyLandsInOrder) {
  const int64_t n = static_cast<int64_t>(PinnedStaging::kTotalBytes * 5 / 2 / sizeof(int32_t)) + 5;
  std::vector<int32_t> host(static_cast<size_t>(n + 3));
  std::iota(host.begin(), host.end(), 0);
  ASSERT_OK_AND_ASSIGN(backlog, MakeBacklog(*gpu_));
  ASSERT_OK_AND_ASSIGN(t, gpu_->Allocate(DType::kI32, {n + 3}));
  ASSERT_OK(EnqueueBacklog(*gpu_, backlog, 8));
  ASSERT_OK(gpu_->CopyFromHost(host.data(), DType::kI32, t.Rows(0, 3)));
  ASSERT_OK(gpu_->CopyFromHost(host.data() + 3, DType::kI32, t.Rows(3, n + 3)));
  std::fill(host.begin(), host.end(), -1);
  std::vector<int32_t> got(host.size());
  ASSERT_OK(gpu_->CopyToHost(t, got.data()));
  EXPECT_EQ(CountMismatches(
                got, [](int64_t i) { return static_cast<int32_t>(i); }, "in order"),
            0);
}

// --- bfloat16 KV caches: Copy float32 <-> bfloat16, Attention over bf16 K/V, row gathers ---

float FromBits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// float32 -> bfloat16 written apart from engine/dtype.h: keep the top 16 bits, add one when the
// dropped 16 exceed half, or are exactly half and the kept part is odd (a carry may reach the
// exponent: FLT_MAX becomes inf); a NaN keeps its sign and top payload with the quiet bit set.
uint16_t RefBF16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  const uint32_t hi = u >> 16, lo = u & 0xffffu;
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>(hi | 0x40u);
  if (lo > 0x8000u || (lo == 0x8000u && (hi & 1u) != 0)) return static_cast<uint16_t>(hi + 1);
  return static_cast<uint16_t>(hi);
}

// A bfloat16 NaN no conversion produces (quiet bit clear), to fill 16-bit outputs with.
constexpr uint16_t kBf16Poison = 0x7f81;

// A tensor of `dtype` holding the raw host elements `src` (16-bit dtypes: uint16_t bits).
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

// Copy float32 -> bfloat16 rounds to nearest even and keeps NaNs as engine/dtype.h's FloatToBF16
// (hand-picked bits: ties both ways, around FLT_MAX, infinities, NaN payloads and signs,
// subnormals; then random bit patterns over several blocks); bfloat16 -> float32 is exact, and
// the round trip gives the bfloat16 bits back. Converting copies that share a byte are refused.
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
  const int64_t n = static_cast<int64_t>(src.size());
  std::vector<uint16_t> want(src.size());
  for (size_t i = 0; i < src.size(); ++i) want[i] = RefBF16(src[i]);

  std::vector<std::vector<uint16_t>> narrowed;
  for (Backend* b : {cpu_, gpu_}) {
    SCOPED_TRACE(b->name());
    ASSERT_OK_AND_ASSIGN(f32, Upload(*b, src, {n}));
    ASSERT_OK_AND_ASSIGN(
        bf16, UploadRaw(*b, std::vector<uint16_t>(src.size(), kBf16Poison), DType::kBF16, {n}));
    ASSERT_OK(b->Copy(f32, bf16));
    ASSERT_OK_AND_ASSIGN(got, DownloadRaw<uint16_t>(*b, bf16));
    EXPECT_EQ(CountMismatches(
                  got, [&](int64_t i) { return want[i]; }, "f32->bf16"),
              0);
    // Back to float32 (exact), and to bfloat16 again (the same bits).
    ASSERT_OK_AND_ASSIGN(wide, Poisoned(*b, {n}));
    ASSERT_OK(b->Copy(bf16, wide));
    ASSERT_OK_AND_ASSIGN(wide_host, Download(*b, wide));
    EXPECT_EQ(
        CountMismatches(
            FloatBits(wide_host), [&](int64_t i) { return uint32_t{want[i]} << 16; }, "bf16->f32"),
        0);
    ASSERT_OK_AND_ASSIGN(
        again, UploadRaw(*b, std::vector<uint16_t>(src.size(), kBf16Poison), DType::kBF16, {n}));
    ASSERT_OK(b->Copy(wide, again));
    ASSERT_OK_AND_ASSIGN(again_host, DownloadRaw<uint16_t>(*b, again));
    EXPECT_EQ(CountMismatches(
                  again_host, [&](int64_t i) { return want[i]; }, "f32->bf16->f32->bf16"),
              0);
    narrowed.push_back(std::move(got));
  }
  // GPU and CPU write the same bf16 cache.
  EXPECT_EQ(CountMismatches(
                narrowed[1], [&](int64_t i) { return narrowed[0][i]; }, "gpu vs cpu"),
            0);

  // Aliasing: f32 [0, 4m) and a bf16 view starting 2 bytes before its end overlap by 2 bytes;
  // starting right at its end, they do not. Nothing is written when refused.
  const int64_t m = 64;
  ASSERT_OK_AND_ASSIGN(buf, Upload(*gpu_, RandomFloats(2 * m, 102), {2 * m}));
  char* base = static_cast<char*>(buf.data());
  const Tensor f32_view = buf.Rows(0, m);
  const Tensor straddling =
      Tensor::Borrow(DType::kBF16, {m}, engine::Device::kCuda, base + 4 * m - 2);
  const Tensor adjacent = Tensor::Borrow(DType::kBF16, {m}, engine::Device::kCuda, base + 4 * m);
  const Tensor same_start = Tensor::Borrow(DType::kBF16, {m}, engine::Device::kCuda, base);
  for (const Tensor* bf : {&straddling, &same_start}) {
    EXPECT_EQ(gpu_->Copy(f32_view, *bf).code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(gpu_->Copy(*bf, f32_view).code(), absl::StatusCode::kInvalidArgument);
  }
  ASSERT_OK(gpu_->Copy(f32_view, adjacent));
  ASSERT_OK_AND_ASSIGN(halves, DownloadRaw<uint16_t>(*gpu_, adjacent));
  ASSERT_OK_AND_ASSIGN(f32_host, Download(*gpu_, f32_view));
  EXPECT_EQ(CountMismatches(
                halves, [&](int64_t i) { return RefBF16(f32_host[i]); }, "adjacent"),
            0);
  // Only float32 <-> bfloat16 converts; element counts must match.
  ASSERT_OK_AND_ASSIGN(f16, gpu_->Allocate(DType::kF16, {m}));
  EXPECT_EQ(gpu_->Copy(f32_view, f16).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_OK_AND_ASSIGN(short_bf16, gpu_->Allocate(DType::kBF16, {m - 1}));
  EXPECT_EQ(gpu_->Copy(f32_view, short_bf16).code(), absl::StatusCode::kInvalidArgument);
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

// Attention over bf16 K/V (written by Copy from float32, as a bf16 KV cache is) is bit for bit
// the GPU's float32 attention over the widened K/V, on the tiled prefill path and on the split-K
// decode path; and near a double reference and the CPU's bf16 attention. Prefill with head_dim
// 128 runs on tensor cores (q and probabilities in bf16): near the reference within bf16 error,
// with and without key splits.
TEST_F(GpuCheck, Bf16KvAttentionEqualsWidenedF32) {
  int sms = 0;
  ASSERT_EQ(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0), cudaSuccess);
  struct Case {
    int64_t nq, nk, heads, kv_heads, hd;
    bool split;         // whether the shape takes the split-K (flash-decoding) path
    bool tensor_cores;  // bf16 prefill with head_dim 128
  };
  const Case cases[] = {{600, 900, 8, 2, 64, false, false},  // 300 row tiles: one wave or more
                        {1, 5000, 8, 2, 64, true, false},
                        {1, 5000, 8, 2, 128, true, false},
                        {1, 31, 8, 8, 128, false, false},  // decode tiles: a partial one
                        {1, 777, 8, 4, 128, true, false},
                        {1, 2000, 16, 2, 128, true, false},
                        {600, 900, 8, 2, 128, true, true},  // 80 blocks: 3 key splits
                        {300, 1700, 32, 8, 128, false, true},  // GQA 4, rows not a tile multiple
                        {40, 3000, 8, 2, 128, true, true}};    // few row tiles: key splits
  uint32_t seed = 110;
  for (const Case& c : cases) {
    SCOPED_TRACE(testing::Message() << "nq=" << c.nq << " nk=" << c.nk << " H=" << c.heads
                                    << " Hkv=" << c.kv_heads << " hd=" << c.hd);
    const engine::cuda::AttentionShape shape{c.nq, c.nk, c.heads, c.kv_heads, c.hd};
    EXPECT_EQ(engine::cuda::AttentionSplits(shape, sms, DType::kBF16) > 1, c.split)
        << sms << " SMs";
    const int64_t kv_cols = c.kv_heads * c.hd, q_cols = c.heads * c.hd;
    const std::vector<float> q = RandomFloats(c.nq * q_cols, seed++, -2, 2);
    const std::vector<float> k = RandomFloats(c.nk * kv_cols, seed++, -2, 2);
    const std::vector<float> v = RandomFloats(c.nk * kv_cols, seed++);
    const std::vector<float> k_wide = Rounded(k, DType::kBF16), v_wide = Rounded(v, DType::kBF16);

    std::vector<std::vector<float>> bf16_out;
    for (Backend* b : {cpu_, gpu_}) {
      SCOPED_TRACE(b->name());
      ASSERT_OK_AND_ASSIGN(qt, Upload(*b, q, {c.nq, q_cols}));
      ASSERT_OK_AND_ASSIGN(kf, Upload(*b, k, {c.nk, kv_cols}));
      ASSERT_OK_AND_ASSIGN(vf, Upload(*b, v, {c.nk, kv_cols}));
      ASSERT_OK_AND_ASSIGN(kb, b->Allocate(DType::kBF16, {c.nk, kv_cols}));
      ASSERT_OK_AND_ASSIGN(vb, b->Allocate(DType::kBF16, {c.nk, kv_cols}));
      ASSERT_OK(b->Copy(kf, kb));
      ASSERT_OK(b->Copy(vf, vb));
      ASSERT_OK_AND_ASSIGN(out, Poisoned(*b, {c.nq, q_cols}));
      ASSERT_OK(b->Attention(qt, kb, vb, c.heads, c.kv_heads, c.hd, out));
      ASSERT_OK_AND_ASSIGN(host, Download(*b, out));
      bf16_out.push_back(std::move(host));
      EXPECT_EQ(b->Attention(qt, kb, vf, c.heads, c.kv_heads, c.hd, out).code(),
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
    for (float x : bf16_out[1]) ASSERT_FALSE(std::isnan(x)) << "unwritten element";
    if (!c.tensor_cores) {
      EXPECT_EQ(CountMismatches(
                    FloatBits(bf16_out[1]), [&](int64_t i) { return f32_bits[i]; },
                    "bf16 K/V vs widened f32 K/V"),
                0);
    }
    // q and the probabilities in bf16 (relative 2^-9 each) on the tensor-core path.
    const float atol = c.tensor_cores ? 1e-2f : 2e-5f, rtol = c.tensor_cores ? 1e-2f : 1e-4f;
    const std::vector<float> ref =
        RefAttention(q, k_wide, v_wide, c.nq, c.nk, c.heads, c.kv_heads, c.hd);
    ExpectNear(bf16_out[1], ref, RelBound(ref, atol, rtol), "GPU bf16 K/V vs reference");
    ExpectNear(bf16_out[1], bf16_out[0], RelBound(bf16_out[0], atol, rtol), "GPU vs CPU bf16 K/V");
  }
}

// Embedding into the table's own dtype is a bit-for-bit row gather (any bits, NaN payloads
// included, for 16-bit tables); float32 into float32 too. Other out dtypes are refused.
TEST_F(GpuCheck, EmbeddingSameDtypeGathersRows) {
  const int64_t vocab = 1000, d = 257;  // odd d: bf16 rows start at 2-byte-aligned offsets
  const std::vector<int32_t> ids = {0, 999, 5, 5, 123, 998};
  const int64_t n = static_cast<int64_t>(ids.size());
  std::mt19937 rng(120);
  for (DType dt : {DType::kBF16, DType::kF16}) {
    SCOPED_TRACE(engine::DTypeName(dt));
    std::vector<uint16_t> rows(static_cast<size_t>(vocab * d));
    for (uint16_t& bits : rows) bits = static_cast<uint16_t>(rng());
    std::vector<uint16_t> want;
    for (int32_t id : ids) {
      want.insert(want.end(), rows.begin() + id * d, rows.begin() + (id + 1) * d);
    }
    for (Backend* b : {cpu_, gpu_}) {
      SCOPED_TRACE(b->name());
      // Allocate + CopyFromHost keeps float16 as it is (UploadWeight widens it on the GPU).
      ASSERT_OK_AND_ASSIGN(tt, UploadRaw(*b, rows, dt, {vocab, d}));
      ASSERT_OK_AND_ASSIGN(
          out, UploadRaw(*b, std::vector<uint16_t>(static_cast<size_t>(n * d), kBf16Poison), dt,
                         {n, d}));
      ASSERT_OK(b->Embedding(tt, ids, out));
      ASSERT_OK_AND_ASSIGN(got, DownloadRaw<uint16_t>(*b, out));
      EXPECT_EQ(CountMismatches(
                    got, [&](int64_t i) { return want[i]; }, "gathered rows"),
                0);
      const std::vector<int32_t> bad = {3, static_cast<int32_t>(vocab)};
      EXPECT_EQ(b->Embedding(tt, bad, out.Rows(0, 2)).code(), absl::StatusCode::kInvalidArgument);
      ASSERT_OK_AND_ASSIGN(other,
                           b->Allocate(dt == DType::kBF16 ? DType::kF16 : DType::kBF16, {n, d}));
      EXPECT_EQ(b->Embedding(tt, ids, other).code(), absl::StatusCode::kInvalidArgument);
    }
  }
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
