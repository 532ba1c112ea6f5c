// The portable float dot product shared by the CPU backend's fallback paths and retrieval
// scoring: eight independent accumulators, so the compiler vectorises it without reassociation
// flags and every caller gets the same bits.
#ifndef MPLUS_ENGINE_DOT_H_
#define MPLUS_ENGINE_DOT_H_

#include <cstdint>

namespace mplus::engine {

inline float Dot(const float* a, const float* b, int64_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int j = 0; j < 8; ++j) acc[j] += a[i + j] * b[i + j];
  }
  float sum = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

}  // namespace mplus::engine

#endif  // MPLUS_ENGINE_DOT_H_
