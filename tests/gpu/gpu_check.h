// The GPU check fixture: a CPU reference backend and the CUDA backend shared by every test of
// mplus_gpu_check (gpu_check.cc: ops and retrieval; gpu_check_copies.cc: staged copies;
// gpu_check_kv_cache.cc: bf16 / fp8 K/V; gpu_check_fused.cc, gpu_check_decode.cc), and the
// element-wise comparisons they use.
#ifndef MPLUS_TESTS_GPU_GPU_CHECK_H_
#define MPLUS_TESTS_GPU_GPU_CHECK_H_

#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <ostream>
#include <utility>
#include <vector>

#include "engine/cpu/cpu_backend.h"
#include "engine/cuda/cuda_backend.h"
#include "gtest/gtest.h"
#include "tests/gpu/gpu_test_util.h"

namespace mplus::gpu_test {

using engine::cpu::CpuBackend;

class GpuCheck : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    cpu_ = new CpuBackend();
    absl::StatusOr<std::unique_ptr<Backend>> gpu = engine::cuda::CreateCudaBackend(0);
    ASSERT_TRUE(gpu.ok()) << gpu.status();
    gpu_ = gpu->release();
  }
  static void TearDownTestSuite() {
    delete gpu_;
    delete cpu_;
    gpu_ = nullptr;
    cpu_ = nullptr;
  }
  void SetUp() override { ASSERT_NE(gpu_, nullptr) << "no CUDA backend"; }

  static Backend* cpu_;
  static Backend* gpu_;
};

// A decode step's shapes, as the decode checks sweep them: a K/V cache of `capacity` rows of
// `cache` type, the step at `position`, heads / kv_heads query / key-value heads of hd dims.
struct DecodeCase {
  int64_t capacity, position, heads, kv_heads, hd;
  DType cache;
};
inline std::ostream& operator<<(std::ostream& os, const DecodeCase& c) {
  return os << "capacity=" << c.capacity << " position=" << c.position << " H=" << c.heads << "/"
            << c.kv_heads << " hd=" << c.hd << " " << DTypeName(c.cache);
}

// A decode step's random inputs for case c: its cache (capacity rows, rounded to the cache type),
// the step's query, key and value rows and RoPE frequencies. Advances seed.
struct DecodeStepInputs {
  std::vector<float> cache, q, k, v, inv_freq;
};
inline DecodeStepInputs RandomDecodeStep(const DecodeCase& c, uint32_t& seed) {
  const int64_t kv_cols = c.kv_heads * c.hd;
  DecodeStepInputs in;
  in.cache = Rounded(RandomFloats(c.capacity * kv_cols, seed++, -2, 2), c.cache);
  in.q = RandomFloats(c.heads * c.hd, seed++, -2, 2);
  in.k = RandomFloats(kv_cols, seed++, -2, 2);
  in.v = RandomFloats(kv_cols, seed++);
  in.inv_freq = RandomFloats(c.hd / 2, seed++, 0, 1);
  return in;
}

// Whether a and b hold the same floats bit for bit (NaNs included).
inline bool SameBits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// Element-wise check with a per-element bound.
inline void ExpectNear(const std::vector<float>& got, const std::vector<float>& want,
                       const std::vector<float>& bound, const char* what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  int64_t bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (!(std::fabs(got[i] - want[i]) <= bound[i])) {  // NaN fails too
      if (++bad <= 5) {
        ADD_FAILURE() << what << " [" << i << "]: gpu " << got[i] << " cpu " << want[i] << " bound "
                      << bound[i];
      }
    }
  }
  EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << got.size() << " elements off";
}

// Elements of `got` that differ from `want(i)`; names the first few (8-bit
// elements as numbers).
template <typename T, typename Want>
inline int64_t CountMismatches(const std::vector<T>& got, Want want, const char* what) {
  int64_t bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (!(got[i] == want(static_cast<int64_t>(i))) && ++bad <= 3) {
      ADD_FAILURE() << what << " [" << i << "] of " << got.size() << ": got " << +got[i] << " want "
                    << +want(static_cast<int64_t>(i));
    }
  }
  return bad;
}

inline std::vector<float> RelBound(const std::vector<float>& want, float atol, float rtol) {
  std::vector<float> b(want.size());
  for (size_t i = 0; i < want.size(); ++i) b[i] = atol + rtol * std::fabs(want[i]);
  return b;
}

// Bound for keys rotated and stored in a cache of `dtype`, GPU vs CPU: RoPE's cosf/sinf may
// differ in the last bit, which rounding to a bf16 / fp8 cache can turn into one step of it
// (relative 2^-7 / 2^-3; fp8 subnormals: 2^-9).
inline std::vector<float> CacheRowBound(const std::vector<float>& want, engine::DType dtype) {
  if (dtype == engine::DType::kBF16) return RelBound(want, 1e-5f, 1.0f / 128);
  if (dtype == engine::DType::kF8E4M3) return RelBound(want, 1.0f / 512, 1.0f / 8);
  return RelBound(want, 1e-5f, 1e-5f);
}

#define ASSERT_OK_AND_ASSIGN(lhs, expr)            \
  auto lhs##_or = (expr);                          \
  ASSERT_TRUE(lhs##_or.ok()) << lhs##_or.status(); \
  auto lhs = std::move(*lhs##_or)
#define ASSERT_OK(expr)         \
  do {                          \
    absl::Status s_ = (expr);   \
    ASSERT_TRUE(s_.ok()) << s_; \
  } while (0)

}  // namespace mplus::gpu_test

#endif  // MPLUS_TESTS_GPU_GPU_CHECK_H_
