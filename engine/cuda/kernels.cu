#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math_constants.h>

#include <algorithm>
#include <type_traits>

#include "engine/cuda/dependent_launch.cuh"
#include "engine/cuda/f8e4m3.cuh"
#include "engine/cuda/kernels.h"

namespace mplus::engine::cuda {
namespace {

constexpr int kThreads = 256;

// A float8 e4m3 element: a type of its own, so that ToFloat / StoreAs overloads on it.
struct F8E4M3 {
  uint8_t bits;
};

template <typename T>
__device__ __forceinline__ float ToFloat(T v);
template <>
__device__ __forceinline__ float ToFloat<float>(float v) {
  return v;
}
// bfloat16 is the top half of a float32: a shift widens it exactly, NaN payloads included (as
// engine/dtype.h's BF16ToFloat; __bfloat162float is cvt.f32.bf16 on sm_90, which need not keep
// a NaN's bits).
template <>
__device__ __forceinline__ float ToFloat<__nv_bfloat16>(__nv_bfloat16 v) {
  return __uint_as_float(static_cast<uint32_t>(__bfloat16_as_ushort(v)) << 16);
}
template <>
__device__ __forceinline__ float ToFloat<__half>(__half v) {
  return __half2float(v);
}
template <>
__device__ __forceinline__ float ToFloat<F8E4M3>(F8E4M3 v) {
  return F8E4M3BitsToFloat(v.bits);
}

// Grid-stride loops keep the grid small for huge tensors (no 2^31 grid-size concerns).
unsigned GridFor(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(blocks, 65536)));
}

// Grid (row, block of kThreads items) for `items` per row; y = 0 when a row would need more than
// 65535 blocks (the launchers refuse it).
dim3 RowItemsGrid(int64_t rows, int64_t items) {
  const int64_t blocks = std::max<int64_t>(1, (items + kThreads - 1) / kThreads);
  return dim3(static_cast<unsigned>(rows), blocks > 65535 ? 0u : static_cast<unsigned>(blocks));
}

__device__ __forceinline__ float SiluF(float x) { return x / (1.0f + expf(-x)); }

template <typename T>
__global__ void WidenKernel(const T* __restrict__ src, int64_t n, float* __restrict__ dst) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    dst[i] = ToFloat(src[i]);
  }
}

// Bit for bit engine/dtype.h's FloatToBF16, so that a bf16 KV cache written on the GPU equals
// the CPU's: __float2bfloat16_rn (cvt.rn.bf16.f32) rounds numbers the same way but need not keep
// a NaN's sign and payload.
__device__ __forceinline__ uint16_t FloatToBF16Bits(float f) {
  uint32_t u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest, ties to even (overflows to inf)
  return static_cast<uint16_t>(u >> 16);
}

// One block per row; the sum of squares is reduced in float32 over warps. A decode step's row
// is one block: 1024 threads with their few loads unrolled keep it from being a chain of
// dependent memory latencies (13 us a norm on an H100 with 256 threads, 65 norms a step).
// A row of up to kNormAhead * kNormThreads elements (mplus-8b's 4096) stays in registers, its
// weights, when weight memory (`w_is_weight`: no kernel writes it), read before the wait for
// the kernel ahead: the scaling after the reduction then waits for no memory. The same float
// operations either way.
constexpr int kNormThreads = 1024;
constexpr int kNormAhead = 4;

template <typename T>
__global__ void __launch_bounds__(kNormThreads)
    RmsNormKernel(const float* x, const T* __restrict__ w, int64_t d, float eps, float* out,
                  bool w_is_weight) {
  AllowDependentLaunch();  // the GEMV behind a norm may start streaming its weights
  const bool in_registers = d <= int64_t{kNormAhead} * kNormThreads;
  float wv[kNormAhead], xv[kNormAhead];
  const auto load_weights = [&] {
#pragma unroll
    for (int u = 0; u < kNormAhead; ++u) {
      const int64_t i = threadIdx.x + int64_t{u} * kNormThreads;
      wv[u] = i < d ? ToFloat(w[i]) : 0.0f;
    }
  };
  if (in_registers && w_is_weight) load_weights();
  WaitForPrecedingKernel();
  if (in_registers && !w_is_weight) load_weights();
  const float* xr = x + blockIdx.x * d;
  float* orow = out + blockIdx.x * d;
  float sum = 0.0f;
  if (in_registers) {
#pragma unroll
    for (int u = 0; u < kNormAhead; ++u) {
      const int64_t i = threadIdx.x + int64_t{u} * kNormThreads;
      xv[u] = i < d ? xr[i] : 0.0f;
      if (i < d) sum += xv[u] * xv[u];
    }
  } else {
#pragma unroll 4
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) sum += xr[i] * xr[i];
  }
  for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
  __shared__ float warp_sums[kNormThreads / 32];
  __shared__ float inv;
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = sum;
  __syncthreads();
  if (threadIdx.x < 32) {
    float total = threadIdx.x < blockDim.x / 32 ? warp_sums[threadIdx.x] : 0.0f;
    for (int off = 16; off > 0; off >>= 1) total += __shfl_xor_sync(0xffffffffu, total, off);
    if (threadIdx.x == 0) inv = 1.0f / sqrtf(total / static_cast<float>(d) + eps);
  }
  __syncthreads();
  if (in_registers) {
#pragma unroll
    for (int u = 0; u < kNormAhead; ++u) {
      const int64_t i = threadIdx.x + int64_t{u} * kNormThreads;
      if (i < d) orow[i] = wv[u] * (xv[u] * inv);
    }
  } else {
#pragma unroll 4
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) orow[i] = ToFloat(w[i]) * (xr[i] * inv);
  }
}

// The pair (a, b) rotated by the angle of cosine c and sine s, each rounding spelled out:
// RopeKernel and the fused K/V store must round alike (a GPU check compares them bit for bit)
// whatever the compiler would contract in each.
__device__ __forceinline__ float2 Rotate(float a, float b, float c, float s) {
  return make_float2(__fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s)),
                     __fadd_rn(__fmul_rn(b, c), __fmul_rn(a, s)));
}

// Pair (j, j + half) of one head's row rotated in place at `position`: float32 angle and precise
// cosf/sinf, as the HF reference (no fast-math intrinsics). RopeKernel's and the decode query's
// in StoreKeysValuesKernel.
__device__ __forceinline__ void RopePairInPlace(float* head, int64_t j, int64_t half,
                                                float position, const float* inv_freq) {
  const float angle = position * inv_freq[j];
  const float2 r = Rotate(head[j], head[j + half], cosf(angle), sinf(angle));
  head[j] = r.x;
  head[j + half] = r.y;
}

// Grid (row, block of pairs): thread t of a row rotates pair (t / half, t % half), i.e. head
// t / half at frequency j = t % half. One load pair per thread: a decode row's heads are not a
// chain of dependent loads (8 us a row on an H100 when one thread walked every head).
__global__ void RopeKernel(float* x, int64_t cols, int64_t head_dim, const int64_t* positions,
                           int64_t first_position, const float* __restrict__ inv_freq) {
  AllowDependentLaunch();
  WaitForPrecedingKernel();
  const int64_t half = head_dim / 2, pairs = cols / head_dim * half;
  const int64_t t = blockIdx.y * int64_t{blockDim.x} + threadIdx.x;
  if (t >= pairs) return;
  const float pos = static_cast<float>(positions != nullptr ? positions[blockIdx.x]
                                                            : first_position + blockIdx.x);
  RopePairInPlace(x + blockIdx.x * cols + t / half * head_dim, t % half, half, pos, inv_freq);
}

// Narrowed element types: float, uint16_t bfloat16 bits, F8E4M3. StoreAs stores x rounded to
// the type; RoundAs is the float32 value it then holds.
__device__ __forceinline__ void StoreAs(float x, float* p) { *p = x; }
__device__ __forceinline__ void StoreAs(float x, uint16_t* p) { *p = FloatToBF16Bits(x); }
__device__ __forceinline__ void StoreAs(float x, F8E4M3* p) { p->bits = FloatToF8E4M3Bits(x); }
__device__ __forceinline__ float RoundAs(float x, float*) { return x; }
__device__ __forceinline__ float RoundAs(float x, uint16_t*) {
  return __uint_as_float(static_cast<uint32_t>(FloatToBF16Bits(x)) << 16);
}
__device__ __forceinline__ float RoundAs(float x, F8E4M3*) {
  return F8E4M3BitsToFloat(FloatToF8E4M3Bits(x));
}

template <typename C>
__global__ void NarrowKernel(const float* __restrict__ src, int64_t n, C* __restrict__ dst) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    StoreAs(src[i], dst + i);
  }
}

// RoundTo + RopeKernel + two converting copies of the composed Backend::StoreKeysValues in one
// pass, with the same float operations. Grid (row, block of items) as RopeKernel: item t < pairs
// rotates key pair (t / half, t % half), the next cols items copy a value each, and with q the
// next q_pairs rotate q's pairs in place as RopeKernel does (a decode step's query).
template <typename C>
__global__ void StoreKeysValuesKernel(const float* k, const float* v, int64_t cols,
                                      int64_t head_dim, const int64_t* positions,
                                      int64_t first_position, const float* __restrict__ inv_freq,
                                      C* k_rows, C* v_rows, bool rows_at_positions, float* q,
                                      int64_t q_cols) {
  AllowDependentLaunch();
  WaitForPrecedingKernel();
  const int64_t half = head_dim / 2, pairs = cols / head_dim * half, row = blockIdx.x;
  const int64_t q_pairs = q != nullptr ? q_cols / head_dim * half : 0;
  const int64_t t = blockIdx.y * int64_t{blockDim.x} + threadIdx.x;
  if (t >= pairs + cols + q_pairs) return;
  const int64_t position = positions != nullptr ? positions[row] : first_position + row;
  const int64_t dst_row = rows_at_positions ? position : row;
  if (t >= pairs + cols) {
    const int64_t qt = t - pairs - cols;
    RopePairInPlace(q + row * q_cols + qt / half * head_dim, qt % half, half,
                    static_cast<float>(position), inv_freq);
    return;
  }
  if (t >= pairs) {
    StoreAs(v[row * cols + t - pairs], v_rows + dst_row * cols + t - pairs);
    return;
  }
  const int64_t j = t % half, head = t / half * head_dim;
  const float angle = static_cast<float>(position) * inv_freq[j];
  const float c = cosf(angle), s = sinf(angle);
  const float* kr = k + row * cols + head;
  C* kc = k_rows + dst_row * cols + head;
  const float2 r = Rotate(RoundAs(kr[j], kc), RoundAs(kr[j + half], kc), c, s);
  StoreAs(r.x, kc + j);
  StoreAs(r.y, kc + j + half);
}

__global__ void SiluMulKernel(const float* gate, const float* up, float* out, int64_t n) {
  AllowDependentLaunch();  // as RmsNormKernel: down_proj's GEMV is behind it
  WaitForPrecedingKernel();
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    out[i] = SiluF(gate[i]) * up[i];
  }
}

__global__ void SiluKernel(float* x, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    x[i] = SiluF(x[i]);
  }
}

__global__ void AddKernel(const float* a, const float* b, float* out, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    out[i] = a[i] + b[i];
  }
}

template <typename T>
__global__ void AddRowKernel(float* x, int64_t n, int64_t d, const T* __restrict__ row) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    x[i] += ToFloat(row[i % d]);
  }
}

template <typename T>
__global__ void EmbeddingKernel(const T* __restrict__ table, int64_t d,
                                const int32_t* __restrict__ ids, float* __restrict__ out) {
  const T* src = table + static_cast<int64_t>(ids[blockIdx.x]) * d;
  float* dst = out + blockIdx.x * d;
  for (int64_t i = threadIdx.x; i < d; i += blockDim.x) dst[i] = ToFloat(src[i]);
}

// Row gather in the table's own dtype: U is an unsigned integer of the element's size, so the
// bits are moved unchanged (NaN payloads included) whatever the float format.
template <typename U>
__global__ void GatherRowsKernel(const U* __restrict__ table, int64_t d,
                                 const int32_t* __restrict__ ids, U* __restrict__ out) {
  const U* src = table + static_cast<int64_t>(ids[blockIdx.x]) * d;
  U* dst = out + blockIdx.x * d;
  for (int64_t i = threadIdx.x; i < d; i += blockDim.x) dst[i] = src[i];
}

// Calls f with a typed null pointer selecting the element type of `dtype`.
template <typename F>
cudaError_t DispatchFloat(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kF32:
      f(static_cast<const float*>(nullptr));
      break;
    case DType::kBF16:
      f(static_cast<const __nv_bfloat16*>(nullptr));
      break;
    case DType::kF16:
      f(static_cast<const __half*>(nullptr));
      break;
    case DType::kF8E4M3:
      f(static_cast<const F8E4M3*>(nullptr));
      break;
    case DType::kI64:
    case DType::kI32:
      return cudaErrorInvalidValue;  // callers validate dtypes; this is a backstop
  }
  return cudaGetLastError();
}

constexpr int kArgmaxThreads = 1024;

// (value, index) pairs: the larger value wins, then the lower index; NaN values never enter
// (a thread's pair starts at (-inf, n), which any -inf element replaces by its lower index).
__device__ __forceinline__ bool ArgmaxBetter(float v, int64_t i, float best, int64_t best_i) {
  return v > best || (v == best && i < best_i);
}

__global__ void __launch_bounds__(kArgmaxThreads)
    ArgmaxKernel(const float* x, int64_t n, int64_t* index) {
  float best = -CUDART_INF_F;
  int64_t best_i = n;
  // Each thread walks its elements in increasing order, so among equal values the first stays.
  for (int64_t i = threadIdx.x; i < n; i += kArgmaxThreads) {
    const float v = x[i];
    if (ArgmaxBetter(v, i, best, best_i)) best = v, best_i = i;
  }
  for (int off = 16; off > 0; off >>= 1) {
    const float v = __shfl_xor_sync(0xffffffffu, best, off);
    const int64_t i = __shfl_xor_sync(0xffffffffu, best_i, off);
    if (ArgmaxBetter(v, i, best, best_i)) best = v, best_i = i;
  }
  __shared__ float warp_best[kArgmaxThreads / 32];
  __shared__ int64_t warp_index[kArgmaxThreads / 32];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) warp_best[warp] = best, warp_index[warp] = best_i;
  __syncthreads();
  if (warp == 0) {
    best = warp_best[lane];
    best_i = warp_index[lane];
    for (int off = 16; off > 0; off >>= 1) {
      const float v = __shfl_xor_sync(0xffffffffu, best, off);
      const int64_t i = __shfl_xor_sync(0xffffffffu, best_i, off);
      if (ArgmaxBetter(v, i, best, best_i)) best = v, best_i = i;
    }
    if (lane == 0) *index = best_i < n ? best_i : 0;  // n: every element NaN
  }
}

}  // namespace

cudaError_t LaunchArgmax(const float* x, int64_t n, int64_t* index, cudaStream_t stream) {
  ArgmaxKernel<<<1, kArgmaxThreads, 0, stream>>>(x, n, index);
  return cudaGetLastError();
}

cudaError_t LaunchWidenToF32(const void* src, DType src_dtype, int64_t n, float* dst,
                             cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  return DispatchFloat(src_dtype, [&](auto tag) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(tag)>>;
    WidenKernel<T><<<GridFor(n), kThreads, 0, stream>>>(static_cast<const T*>(src), n, dst);
  });
}

cudaError_t LaunchF32ToBF16(const float* src, int64_t n, uint16_t* dst, cudaStream_t stream) {
  return LaunchNarrowF32(src, n, DType::kBF16, dst, stream);
}

cudaError_t LaunchNarrowF32(const float* src, int64_t n, DType dst_dtype, void* dst,
                            cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  switch (dst_dtype) {
    case DType::kBF16:
      NarrowKernel<<<GridFor(n), kThreads, 0, stream>>>(src, n, static_cast<uint16_t*>(dst));
      break;
    case DType::kF8E4M3:
      NarrowKernel<<<GridFor(n), kThreads, 0, stream>>>(src, n, static_cast<F8E4M3*>(dst));
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

cudaError_t LaunchRmsNorm(const float* x, const void* w, DType w_dtype, int64_t rows, int64_t d,
                          float eps, float* out, cudaStream_t stream, bool dependent,
                          bool w_is_weight) {
  if (rows == 0) return cudaSuccess;
  if (rows > 0x7fffffff) return cudaErrorInvalidValue;
  cudaError_t launched = cudaSuccess;
  const cudaError_t dispatched = DispatchFloat(w_dtype, [&](auto tag) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(tag)>>;
    launched =
        LaunchKernel(RmsNormKernel<T>, dim3(static_cast<unsigned>(rows)), dim3(kNormThreads),
                     stream, dependent, x, static_cast<const T*>(w), d, eps, out, w_is_weight);
  });
  return launched != cudaSuccess ? launched : dispatched;
}

cudaError_t LaunchRope(float* x, int64_t rows, int64_t cols, int64_t head_dim,
                       const int64_t* positions, int64_t first_position, const float* inv_freq,
                       cudaStream_t stream, bool dependent) {
  if (rows == 0) return cudaSuccess;
  if (rows > 0x7fffffff) return cudaErrorInvalidValue;
  const dim3 grid = RowItemsGrid(rows, cols / head_dim * (head_dim / 2));
  if (grid.y == 0) return cudaErrorInvalidValue;
  return LaunchKernel(RopeKernel, grid, dim3(kThreads), stream, dependent, x, cols, head_dim,
                      positions, first_position, inv_freq);
}

cudaError_t LaunchStoreKeysValues(const float* k, const float* v, int64_t rows, int64_t cols,
                                  int64_t head_dim, const int64_t* positions,
                                  int64_t first_position, const float* inv_freq, DType cache_dtype,
                                  void* k_rows, void* v_rows, cudaStream_t stream, bool dependent,
                                  bool rows_at_positions, float* q, int64_t q_cols) {
  if (rows == 0) return cudaSuccess;
  const int64_t half = head_dim / 2, q_pairs = q != nullptr ? q_cols / head_dim * half : 0;
  const dim3 grid = RowItemsGrid(rows, cols / head_dim * half + cols + q_pairs);
  if (rows > 0x7fffffff || (rows_at_positions && positions == nullptr) || grid.y == 0 ||
      (q != nullptr && q_cols % head_dim != 0)) {
    return cudaErrorInvalidValue;
  }
  const auto launch = [&](auto* tag) {
    using C = std::remove_pointer_t<decltype(tag)>;
    return LaunchKernel(StoreKeysValuesKernel<C>, grid, dim3(kThreads), stream, dependent, k, v,
                        cols, head_dim, positions, first_position, inv_freq,
                        static_cast<C*>(k_rows), static_cast<C*>(v_rows), rows_at_positions, q,
                        q_cols);
  };
  switch (cache_dtype) {
    case DType::kF32:
      return launch(static_cast<float*>(nullptr));
    case DType::kBF16:
      return launch(static_cast<uint16_t*>(nullptr));
    case DType::kF8E4M3:
      return launch(static_cast<F8E4M3*>(nullptr));
    default:
      return cudaErrorInvalidValue;
  }
}

cudaError_t LaunchSiluMul(const float* gate, const float* up, float* out, int64_t n,
                          cudaStream_t stream, bool dependent) {
  if (n == 0) return cudaSuccess;
  return LaunchKernel(SiluMulKernel, dim3(GridFor(n)), dim3(kThreads), stream, dependent, gate, up,
                      out, n);
}

cudaError_t LaunchSilu(float* x, int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  SiluKernel<<<GridFor(n), kThreads, 0, stream>>>(x, n);
  return cudaGetLastError();
}

cudaError_t LaunchAdd(const float* a, const float* b, float* out, int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  AddKernel<<<GridFor(n), kThreads, 0, stream>>>(a, b, out, n);
  return cudaGetLastError();
}

cudaError_t LaunchAddRow(float* x, int64_t rows, int64_t d, const void* row, DType row_dtype,
                         cudaStream_t stream) {
  const int64_t n = rows * d;
  if (n == 0) return cudaSuccess;
  return DispatchFloat(row_dtype, [&](auto tag) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(tag)>>;
    AddRowKernel<T><<<GridFor(n), kThreads, 0, stream>>>(x, n, d, static_cast<const T*>(row));
  });
}

cudaError_t LaunchEmbedding(const void* table, DType table_dtype, int64_t d, const int32_t* ids,
                            int64_t n, float* out, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  if (n > 0x7fffffff) return cudaErrorInvalidValue;
  return DispatchFloat(table_dtype, [&](auto tag) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(tag)>>;
    EmbeddingKernel<T><<<static_cast<unsigned>(n), kThreads, 0, stream>>>(
        static_cast<const T*>(table), d, ids, out);
  });
}

cudaError_t LaunchGatherRows(const void* table, DType dtype, int64_t d, const int32_t* ids,
                             int64_t n, void* out, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  if (n > 0x7fffffff) return cudaErrorInvalidValue;
  const unsigned grid = static_cast<unsigned>(n);
  switch (DTypeSize(dtype)) {
    case 1:
      GatherRowsKernel<<<grid, kThreads, 0, stream>>>(static_cast<const uint8_t*>(table), d, ids,
                                                      static_cast<uint8_t*>(out));
      break;
    case 2:
      GatherRowsKernel<<<grid, kThreads, 0, stream>>>(static_cast<const uint16_t*>(table), d, ids,
                                                      static_cast<uint16_t*>(out));
      break;
    case 4:
      GatherRowsKernel<<<grid, kThreads, 0, stream>>>(static_cast<const uint32_t*>(table), d, ids,
                                                      static_cast<uint32_t*>(out));
      break;
    case 8:
      GatherRowsKernel<<<grid, kThreads, 0, stream>>>(static_cast<const uint64_t*>(table), d, ids,
                                                      static_cast<uint64_t*>(out));
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace mplus::engine::cuda
