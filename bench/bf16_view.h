// A bfloat16 TensorView over bench-owned memory, for the memstore benches' stand-in weights.
#ifndef MPLUS_BENCH_BF16_VIEW_H_
#define MPLUS_BENCH_BF16_VIEW_H_

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "engine/safetensors.h"

namespace mplus::bench {

inline engine::TensorView Bf16View(const char* name, const void* data, std::vector<int64_t> shape,
                                   size_t bytes) {
  engine::TensorView t;
  t.name = name;
  t.dtype = engine::DType::kBF16;
  t.shape = std::move(shape);
  t.data = data;
  t.nbytes = bytes;
  return t;
}

}  // namespace mplus::bench

#endif  // MPLUS_BENCH_BF16_VIEW_H_
