// GPU checks of host-to-device copies through the pinned staging ring, and of downloads; the
// fixture is gpu_check.h.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <vector>

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

// Gathered rows (Backend::CopyRowsFromHost: the CUDA backend has `fill` write them straight
// into the staging ring, whole rows per buffer) against the values of the rows they name:
// float32 rows copied as they are and bfloat16 rows widened, of sizes that do and do not divide
// a staging buffer, after plain copies of odd sizes (so a buffer's rest may hold no whole row),
// three rings in all between waits, behind a busy GPU, the host rows overwritten as soon as a
// call returns.
TEST_F(GpuCheck, GatheredRowsThroughStaging) {
  ASSERT_OK_AND_ASSIGN(backlog, MakeBacklog(*gpu_));
  size_t call = 0;
  for (DType dt : {DType::kF32, DType::kBF16}) {
    for (int64_t row_elems : {int64_t{2047}, int64_t{4096}, int64_t{6144}}) {
      SCOPED_TRACE(testing::Message() << engine::DTypeName(dt) << ", rows of " << row_elems);
      const size_t row_bytes = static_cast<size_t>(row_elems) * engine::DTypeSize(dt);
      const auto rows = static_cast<int64_t>(PinnedStaging::kTotalBytes * 3 / 2 / row_bytes);
      const int64_t pool_rows = rows + 17;
      // The pool: row r holds the values of (call, r * row_elems + i); rows are taken in a
      // scattered order.
      std::vector<uint8_t> pool(static_cast<size_t>(pool_rows) * row_bytes);
      const auto store = [&](size_t c) {
        for (int64_t e = 0; e < pool_rows * row_elems; ++e) {
          const float v = StagingValue(c, e);
          if (dt == DType::kF32) {
            std::memcpy(pool.data() + e * 4, &v, 4);
          } else {
            const uint16_t b = engine::FloatToBF16(v);
            std::memcpy(pool.data() + e * 2, &b, 2);
          }
        }
      };
      std::vector<int64_t> order(static_cast<size_t>(rows));
      for (int64_t i = 0; i < rows; ++i) order[i] = (i * 7919 + 3) % pool_rows;
      std::vector<Tensor> dsts;
      std::vector<size_t> calls;
      ASSERT_OK(EnqueueBacklog(*gpu_, backlog, 4));
      for (int rep = 0; rep < 2; ++rep, ++call) {
        // An odd plain copy first: the ring's current buffer is left at an odd offset.
        const std::vector<float> odd(static_cast<size_t>(1000 + 777 * rep), 1.0f);
        ASSERT_OK_AND_ASSIGN(odd_dst,
                             gpu_->Allocate(DType::kF32, {static_cast<int64_t>(odd.size())}));
        ASSERT_OK(gpu_->CopyFromHost(odd.data(), DType::kF32, odd_dst));
        store(call);
        ASSERT_OK_AND_ASSIGN(t, Poisoned(*gpu_, {rows, row_elems}));
        ASSERT_OK(gpu_->CopyRowsFromHost(
            rows, row_bytes, dt,
            [&](int64_t first, int64_t count, void* out) {
              for (int64_t i = 0; i < count; ++i) {
                std::memcpy(static_cast<uint8_t*>(out) + i * row_bytes,
                            pool.data() + order[first + i] * row_bytes, row_bytes);
              }
            },
            t));
        std::fill(pool.begin(), pool.end(), uint8_t{0xFF});  // NaNs: the caller reuses its rows
        dsts.push_back(std::move(t));
        calls.push_back(call);
      }
      ASSERT_OK(gpu_->Synchronize());
      for (size_t j = 0; j < dsts.size(); ++j) {
        ASSERT_OK_AND_ASSIGN(got, Download(*gpu_, dsts[j]));
        const size_t c = calls[j];
        EXPECT_EQ(CountMismatches(
                      got,
                      [&](int64_t i) {
                        const float v =
                            StagingValue(c, order[i / row_elems] * row_elems + i % row_elems);
                        return dt == DType::kF32 ? v : engine::BF16ToFloat(engine::FloatToBF16(v));
                      },
                      "gathered"),
                  0);
      }
    }
  }
  // Sizes that do not match the destination are refused.
  ASSERT_OK_AND_ASSIGN(small, gpu_->Allocate(DType::kF32, {4, 8}));
  EXPECT_FALSE(gpu_->CopyRowsFromHost(
                       4, 16, DType::kF32, [](int64_t, int64_t, void*) {}, small)
                   .ok());
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

// --- Device-to-host copies ---

// Downloads of up to 2 MiB go through the backend's pinned buffer, larger ones straight into
// pageable memory: sizes on both sides of that (a decode step's logits among them), back to
// back so that the buffer is reused, into an odd host address, each right behind the staged
// upload of what it reads.
TEST_F(GpuCheck, DownloadsAroundThePinnedBufferSize) {
  for (const int64_t n : {1, 128256, 524288, 524289, 3000000, 7}) {
    SCOPED_TRACE(n);
    const std::vector<float> x = RandomFloats(n, static_cast<uint32_t>(n));
    ASSERT_OK_AND_ASSIGN(t, Upload(*gpu_, x, {n}));
    std::vector<char> host(static_cast<size_t>(n) * sizeof(float) + 1, 0);
    ASSERT_OK(gpu_->CopyToHost(t, host.data() + 1));
    ASSERT_EQ(std::memcmp(host.data() + 1, x.data(), x.size() * sizeof(float)), 0);
  }
}

}  // namespace
}  // namespace mplus::gpu_test
