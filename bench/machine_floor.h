// This machine's floor for one core (timed in thread CPU time, so a loaded machine still
// measures the core, like the CPU-time benchmark numbers it is compared with): float32 FMA peak
// (AVX2+FMA when present) and streaming read bandwidth, measured in-process so benchmark ratios
// compare like with like.
#ifndef MPLUS_BENCH_MACHINE_FLOOR_H_
#define MPLUS_BENCH_MACHINE_FLOOR_H_

#include <immintrin.h>
#include <time.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "common/cpu_features.h"

namespace mplus::bench {

inline double ThreadSeconds() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

// 12 independent FMA chains hide the FMA latency; returns achieved FLOP/s.
// FMA peak of one core: 10 independent register-resident chains, operands hidden from the
// optimiser (chains that go through memory measure ~5x below the real peak).
MPLUS_TARGET_AVX2_FMA inline double MeasureFmaPeakAvx2() {
  __m256 acc[10];
  for (int i = 0; i < 10; ++i) acc[i] = _mm256_set1_ps(0.001f * static_cast<float>(i));
  __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
  asm volatile("" : "+x"(a), "+x"(b));
  const int64_t iters = 100'000'000;
  const double start = ThreadSeconds();
  for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 10
    for (int i = 0; i < 10; ++i) acc[i] = _mm256_fmadd_ps(a, b, acc[i]);
  }
  const double s = ThreadSeconds() - start;
  float sink = 0;
  for (int i = 0; i < 10; ++i) sink += _mm256_cvtss_f32(acc[i]);
  asm volatile("" ::"x"(sink));
  return 2.0 * 8 * 10 * static_cast<double>(iters) / s;
}

inline double MeasureFmaPeak() {
  if (HasAvx2Fma()) return MeasureFmaPeakAvx2();
  return 0;
}

// Bytes/s of summing a 512 MiB float array (one core, AVX2 so the adds keep up with memory).
__attribute__((target("avx2"))) inline double MeasureReadBandwidth() {
  std::vector<float> data(size_t{128} << 20, 1.0f);
  double best = 0;
  for (int rep = 0; rep < 3; ++rep) {
    const double start = ThreadSeconds();
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    for (size_t i = 0; i < data.size(); i += 32) {
      s0 = _mm256_add_ps(s0, _mm256_loadu_ps(&data[i]));
      s1 = _mm256_add_ps(s1, _mm256_loadu_ps(&data[i + 8]));
      s2 = _mm256_add_ps(s2, _mm256_loadu_ps(&data[i + 16]));
      s3 = _mm256_add_ps(s3, _mm256_loadu_ps(&data[i + 24]));
    }
    const double s = ThreadSeconds() - start;
    float sink = _mm256_cvtss_f32(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
    asm volatile("" ::"x"(sink));
    best = std::max(best, data.size() * sizeof(float) / s);
  }
  return best;
}

}  // namespace mplus::bench

#endif  // MPLUS_BENCH_MACHINE_FLOOR_H_
