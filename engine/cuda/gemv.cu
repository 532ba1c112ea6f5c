#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "engine/cuda/dependent_launch.cuh"
#include "engine/cuda/gemv.h"

namespace mplus::engine::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kUnroll = 4;  // 16-byte weight loads in flight per thread

// Eight bf16 weights (bfloat16 is the top half of a float32: a shift widens it exactly) times
// eight float32 activations.
__device__ __forceinline__ float Dot8(const uint4 w, const float* x) {
  const float4 a = *reinterpret_cast<const float4*>(x);
  const float4 b = *reinterpret_cast<const float4*>(x + 4);
  float s = __uint_as_float(w.x << 16) * a.x;
  s = fmaf(__uint_as_float(w.x & 0xffff0000u), a.y, s);
  s = fmaf(__uint_as_float(w.y << 16), a.z, s);
  s = fmaf(__uint_as_float(w.y & 0xffff0000u), a.w, s);
  s = fmaf(__uint_as_float(w.z << 16), b.x, s);
  s = fmaf(__uint_as_float(w.z & 0xffff0000u), b.y, s);
  s = fmaf(__uint_as_float(w.w << 16), b.z, s);
  s = fmaf(__uint_as_float(w.w & 0xffff0000u), b.w, s);
  return s;
}

// T threads (a power of two up to kThreads) per weight row: thread `part` of a row reads the
// row's 8-element chunks part, part + T, ...; the T partial sums are reduced by shuffles within
// a warp and through shared memory across warps. Blocks below `prefetch_blocks` first fetch all
// their weight rows into L2 (see GemvDevice).
template <int N>
__global__ void __launch_bounds__(kThreads)
    GemvBf16Kernel(const float* x, const uint16_t* __restrict__ w, int64_t m, int64_t k,
                   float alpha, bool accumulate, GemvEpilogue ep, int threads_per_row,
                   int64_t prefetch_blocks) {
  AllowDependentLaunch();
  const int T = threads_per_row, tid = threadIdx.x, part = tid % T;
  const int64_t first_row = blockIdx.x * int64_t{kThreads / T};
  const int64_t row = first_row + tid / T;
  const int64_t chunks = k / 8;
  if (blockIdx.x < prefetch_blocks) {
    constexpr int64_t kLine = 128;
    const auto* block_weights = reinterpret_cast<const char*>(w + first_row * k);
    const int64_t bytes = min(int64_t{kThreads / T}, m - first_row) * k * 2;
    for (int64_t at = tid * kLine; at < bytes; at += kThreads * kLine) {
      PrefetchL2(block_weights + at);
    }
  }
  const uint4* wrow = reinterpret_cast<const uint4*>(w + min(row, m - 1) * k);
  // The first weights are read before the wait for the kernel before (see GemvDevice).
  uint4 wv[kUnroll];
  const bool first_full = row < m && part + (kUnroll - 1) * T < chunks;
  if (first_full) {
    for (int u = 0; u < kUnroll; ++u) wv[u] = __ldcs(wrow + part + u * T);  // read once: stream
  }
  WaitForPrecedingKernel();
  float acc[N];
  for (int r = 0; r < N; ++r) acc[r] = 0.0f;
  if (row < m) {
    int64_t c = part;
    for (; c + (kUnroll - 1) * T < chunks; c += kUnroll * T) {
      if (c != part) {
        for (int u = 0; u < kUnroll; ++u) wv[u] = __ldcs(wrow + c + u * T);
      }
      for (int u = 0; u < kUnroll; ++u) {
        for (int r = 0; r < N; ++r) acc[r] += Dot8(wv[u], x + r * k + (c + u * T) * 8);
      }
    }
    for (; c < chunks; c += T) {
      const uint4 tail = __ldcs(wrow + c);
      for (int r = 0; r < N; ++r) acc[r] += Dot8(tail, x + r * k + c * 8);
    }
  }
  for (int off = min(T, 32) / 2; off > 0; off >>= 1) {
    for (int r = 0; r < N; ++r) acc[r] += __shfl_xor_sync(0xffffffffu, acc[r], off);
  }
  if (T > 32) {
    __shared__ float warp_sums[N][kThreads / 32];
    const int warp = tid / 32;
    if (tid % 32 == 0) {
      for (int r = 0; r < N; ++r) warp_sums[r][warp] = acc[r];
    }
    __syncthreads();
    if (part == 0) {
      for (int r = 0; r < N; ++r) {
        acc[r] = 0.0f;
        for (int i = 0; i < T / 32; ++i) acc[r] += warp_sums[r][warp + i];
      }
    }
  }
  if (part == 0 && row < m) {
    int s = 0;
    while (s + 1 < ep.segments && row >= ep.end[s]) ++s;
    const int64_t begin = s == 0 ? 0 : ep.end[s - 1], rows = ep.end[s] - begin;
    const int64_t local = row - begin;
    for (int r = 0; r < N; ++r) {
      float y = alpha * acc[r];
      if (ep.lora_b[s] != nullptr) {
        const uint16_t* b = ep.lora_b[s] + local * ep.lora_r;
        const float* t = ep.lora_t + r * ep.lora_t_cols + s * ep.lora_r;
        float term = 0.0f;
        for (int64_t j = 0; j < ep.lora_r; ++j) {
          term += t[j] * __uint_as_float(static_cast<uint32_t>(b[j]) << 16);
        }
        y += ep.lora_scale * term;
      }
      float* o = ep.out[s] + r * rows + local;
      *o = accumulate ? y + *o : y;
    }
  }
}

// At least a warp per row (where the row has the chunks), and up to 4 warps while a thread would
// otherwise read more than one unrolled batch: the batch read before the wait for the kernel
// ahead is then the whole row at k = 4096 (on an H100, 128 threads a row ran decode's k = 4096
// GEMVs 3-6% faster than 32 or 64, and k = 14336 alike). More threads per row (up to a block)
// when there are too few rows to fill the GPU, as long as each thread keeps a few chunks to read.
// A device's threads_per_row, when set, instead.
int ThreadsPerRow(int64_t m, int64_t k, const GemvDevice& device) {
  if (device.threads_per_row > 0) return device.threads_per_row;
  constexpr int kMaxBatchThreads = 128;
  const int64_t chunks = k / 8, want_threads = int64_t{device.num_sms} * 1024;
  int t = 1;
  while (t < 32 && t < chunks) t *= 2;
  while (t < kMaxBatchThreads && chunks > int64_t{kUnroll} * t) t *= 2;
  while (t < kThreads && m * t < want_threads && chunks >= 4 * int64_t{t}) t *= 2;
  return t;
}

// A programmatic GEMV's first blocks prefetch up to `device.l2_prefetch_bytes` of weights.
template <int N>
cudaError_t Launch(const float* x, const uint16_t* w, int64_t m, int64_t k, float alpha,
                   bool accumulate, const GemvEpilogue& ep, int threads_per_row,
                   const GemvDevice& device, cudaStream_t stream) {
  const int64_t rows_per_block = kThreads / threads_per_row;
  const int64_t blocks = (m + rows_per_block - 1) / rows_per_block;
  const bool programmatic = device.programmatic_launch;
  const int64_t prefetch_blocks =
      programmatic ? std::min(blocks, device.l2_prefetch_bytes / (rows_per_block * k * 2)) : 0;
  return LaunchKernel(GemvBf16Kernel<N>, dim3(static_cast<unsigned>(blocks)), dim3(kThreads),
                      stream, programmatic, x, w, m, k, alpha, accumulate, ep, threads_per_row,
                      prefetch_blocks);
}

// The segments tile [0, m) in order, each with an output; LoRA terms have their t.
bool ValidEpilogue(const GemvEpilogue& ep, int64_t m) {
  if (ep.segments < 1 || ep.segments > kMaxGemvSegments || ep.end[ep.segments - 1] != m) {
    return false;
  }
  for (int s = 0; s < ep.segments; ++s) {
    const int64_t begin = s == 0 ? 0 : ep.end[s - 1];
    if (ep.end[s] < begin || ep.out[s] == nullptr) return false;
    if (ep.lora_b[s] != nullptr &&
        (ep.lora_t == nullptr || ep.lora_r < 0 || ep.lora_t_cols < (s + 1) * ep.lora_r)) {
      return false;
    }
  }
  return true;
}

}  // namespace

cudaError_t GetGemvDevice(GemvDevice* device) {
  int ordinal = 0, major = 0;
  cudaError_t err = cudaGetDevice(&ordinal);
  if (err == cudaSuccess) {
    err = cudaDeviceGetAttribute(&device->num_sms, cudaDevAttrMultiProcessorCount, ordinal);
  }
  if (err == cudaSuccess) {
    err = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, ordinal);
  }
  // The code that runs must have the wait compiled in: an sm_90 device running this library's
  // sm_80 PTX (JIT) would read x before the kernel ahead has written it.
  cudaFuncAttributes code = {};
  if (err == cudaSuccess) err = cudaFuncGetAttributes(&code, GemvBf16Kernel<1>);
  const char* env = std::getenv("MPLUS_CUDA_DEPENDENT_LAUNCH");
  const bool disabled = env != nullptr && std::string_view(env) == "0";
  device->programmatic_launch = major >= 9 && code.ptxVersion >= 90 && !disabled;
  if (const char* mib = std::getenv("MPLUS_CUDA_GEMV_L2_PREFETCH_MIB"); mib != nullptr) {
    device->l2_prefetch_bytes = std::max(0L, std::strtol(mib, nullptr, 10)) << 20;
  }
  if (const char* t = std::getenv("MPLUS_CUDA_GEMV_THREADS_PER_ROW"); t != nullptr) {
    const long threads = std::strtol(t, nullptr, 10);
    const bool power_of_two = threads > 0 && (threads & (threads - 1)) == 0;
    device->threads_per_row = power_of_two && threads <= kThreads ? static_cast<int>(threads) : 0;
  }
  return err;
}

bool GemvSupported(int64_t n, int64_t k, const void* x, const void* w) {
  return n >= 1 && n <= kMaxGemvRows && k > 0 && k % 8 == 0 &&
         reinterpret_cast<uintptr_t>(x) % 16 == 0 && reinterpret_cast<uintptr_t>(w) % 16 == 0;
}

cudaError_t LaunchGemvBf16(const float* x, const uint16_t* w, int64_t n, int64_t m, int64_t k,
                           float alpha, bool accumulate, const GemvEpilogue& epilogue,
                           const GemvDevice& device, cudaStream_t stream) {
  if (m == 0) return cudaSuccess;
  if (!GemvSupported(n, k, x, w) || m > (int64_t{1} << 31) || device.num_sms < 1 ||
      !ValidEpilogue(epilogue, m)) {
    return cudaErrorInvalidValue;
  }
  const int t = ThreadsPerRow(m, k, device);
  switch (n) {
    case 1:
      return Launch<1>(x, w, m, k, alpha, accumulate, epilogue, t, device, stream);
    case 2:
      return Launch<2>(x, w, m, k, alpha, accumulate, epilogue, t, device, stream);
    case 3:
      return Launch<3>(x, w, m, k, alpha, accumulate, epilogue, t, device, stream);
    default:
      return Launch<4>(x, w, m, k, alpha, accumulate, epilogue, t, device, stream);
  }
}

}  // namespace mplus::engine::cuda
