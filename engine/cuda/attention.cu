#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <math_constants.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "engine/cuda/attention.h"
#include "engine/cuda/dependent_launch.cuh"
#include "engine/cuda/f8e4m3.cuh"

namespace mplus::engine::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kRowsPerWarp = 4;
constexpr int kRows = kWarps * kRowsPerWarp;  // (query, head) rows per block
constexpr int kKeys = 32;                     // keys per tile: one per lane
constexpr int kHd = static_cast<int>(kMaxAttentionHeadDim);
constexpr float kLog2e = 1.4426950408889634f;

// K/V are typed by the kernel's template argument (LoadKV); Params is shared with CombineKernel,
// which never reads them.
struct Params {
  const float* q;
  const void* k;
  const void* v;
  float* out;
  float* part_o;  // [splits, nq * H, hd] normalised partial outputs (splits > 1)
  float* part_m;  // [splits, nq * H] running max (log2 domain)
  float* part_l;  // [splits, nq * H] running sum
  int64_t nq, nk, heads, kv_heads, hd, group;
  int64_t keys_per_split;
  // Decode kernel only: when not null, the keys are rows [0, *last_position] (at most nk); the
  // grid and splits are sized for nk, and splits past the end see no key.
  const int64_t* last_position;
  float scale_log2;  // log2(e) / sqrt(hd): scores live in the log2 domain, so exp2f is used
};

// K/V element types: float, uint16_t bfloat16 bits, uint8_t float8 e4m3 bits. Loads widen to
// float32 exactly, to the values engine/dtype.h's BF16ToFloat / F8E4M3ToFloat give: bfloat16 is
// the top half of a float32 (a shift), e4m3 as engine/cuda/f8e4m3.cuh.
__device__ __forceinline__ float LoadKV(const float* base, int64_t off) { return base[off]; }
__device__ __forceinline__ float LoadKV(const uint16_t* base, int64_t off) {
  return __uint_as_float(static_cast<uint32_t>(base[off]) << 16);
}
__device__ __forceinline__ float LoadKV(const uint8_t* base, int64_t off) {
  return F8E4M3BitsToFloat(base[off]);
}

// Four e4m3 elements packed in a word (the first in the low byte), widened. sm_89+ converts
// pairs in hardware, through float16, which holds every e4m3 value exactly (NaN stays NaN, its
// payload aside), so the result equals F8E4M3BitsToFloat's in every computation. The bit
// manipulation costs several integer instructions an element: an fp8 decode step measured
// slower than a bf16 one on an H100 (session 11), although its attention reads half the bytes.
__device__ __forceinline__ float4 WidenF8x4(uint32_t w) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  const float2 lo = __half22float2(__half2(
      __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(w & 0xffffu), __NV_E4M3)));
  const float2 hi = __half22float2(
      __half2(__nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(w >> 16), __NV_E4M3)));
  return make_float4(lo.x, lo.y, hi.x, hi.y);
#else
  return make_float4(F8E4M3BitsToFloat(w), F8E4M3BitsToFloat(w >> 8), F8E4M3BitsToFloat(w >> 16),
                     F8E4M3BitsToFloat(w >> 24));
#endif
}

// Four consecutive K/V elements from element `off` (a multiple of 4, and the base aligned to
// four elements: checked by the launcher), widened as LoadKV.
__device__ __forceinline__ float4 LoadKV4(const float* base, int64_t off) {
  return *reinterpret_cast<const float4*>(base + off);
}
__device__ __forceinline__ float4 LoadKV4(const uint16_t* base, int64_t off) {
  const uint2 bits = *reinterpret_cast<const uint2*>(base + off);
  return make_float4(__uint_as_float(bits.x << 16), __uint_as_float(bits.x & 0xffff0000u),
                     __uint_as_float(bits.y << 16), __uint_as_float(bits.y & 0xffff0000u));
}
__device__ __forceinline__ float4 LoadKV4(const uint8_t* base, int64_t off) {
  return WidenF8x4(*reinterpret_cast<const uint32_t*>(base + off));
}

__device__ __forceinline__ float WarpMax(float v) {
  for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
  return v;
}
__device__ __forceinline__ float WarpSum(float v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// Block (row tile, kv head g, split s). Rows of kv head g are (query i, head g*group + r % group)
// for r = i * group + .., so the group's query heads share every K/V tile (GQA).
// CH = ceil(hd / 32): the output dims a lane owns are lane + 32 * c.
// KV (see LoadKV) matters only where a K/V tile is loaded into the float32 shared tiles; every
// float operation after that is the same code for all, so bf16 / fp8 K/V give bit for bit the
// result of float32 K/V holding the widened values.
// kVec: K/V rows are loaded four elements at a time (head_dim and the row stride multiples of
// 4, base pointers aligned): a quarter of the load instructions, which bound decode.
template <int CH, typename KV, bool kVec>
__global__ void __launch_bounds__(kWarps * 32) AttentionKernel(Params p) {
  const KV* k = static_cast<const KV*>(p.k);
  const KV* v = static_cast<const KV*>(p.v);
  __shared__ float q_s[kRows][kHd];
  __shared__ float k_s[kKeys][kHd + 1];  // +1: lane j reads row j, conflict-free
  __shared__ float v_s[kKeys][kHd];
  __shared__ float p_s[kWarps][kRowsPerWarp][kKeys];

  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int64_t g = blockIdx.y, split = blockIdx.z;
  const int64_t hd = p.hd, total_rows = p.nq * p.group;
  const int64_t row0 = blockIdx.x * int64_t{kRows};
  const int64_t q_cols = p.heads * hd, kv_cols = p.kv_heads * hd;

  for (int idx = tid; idx < kRows * hd; idx += blockDim.x) {
    const int r = idx / static_cast<int>(hd), d = idx % static_cast<int>(hd);
    const int64_t row = row0 + r;
    float val = 0.0f;
    if (row < total_rows) {
      const int64_t i = row / p.group, h = g * p.group + row % p.group;
      val = p.q[i * q_cols + h * hd + d] * p.scale_log2;
    }
    q_s[r][d] = val;
  }

  // Keys this block visits: its split, cut at the last visible key of its last query.
  const int64_t last_row = min(total_rows, row0 + kRows) - 1;
  const int64_t last_query = last_row / p.group;
  const int64_t split_begin = split * p.keys_per_split;
  const int64_t key_end =
      min(min(p.nk, split_begin + p.keys_per_split), p.nk - p.nq + last_query + 1);

  float m[kRowsPerWarp], l[kRowsPerWarp], acc[kRowsPerWarp][CH];
  int64_t key_limit[kRowsPerWarp];  // exclusive end of the keys row rr may see
  for (int rr = 0; rr < kRowsPerWarp; ++rr) {
    m[rr] = -CUDART_INF_F;
    l[rr] = 0.0f;
    for (int c = 0; c < CH; ++c) acc[rr][c] = 0.0f;
    const int64_t row = row0 + warp * kRowsPerWarp + rr;
    key_limit[rr] = row < total_rows ? min(key_end, p.nk - p.nq + row / p.group + 1) : 0;
  }

  for (int64_t kb = split_begin; kb < key_end; kb += kKeys) {
    __syncthreads();  // q_s written / previous tile fully consumed
    if constexpr (kVec) {
      const int quads = static_cast<int>(hd) / 4;
      for (int idx = tid; idx < kKeys * quads; idx += blockDim.x) {
        const int j = idx / quads, d = idx % quads * 4;
        const int64_t key = kb + j;
        const int64_t off = key * kv_cols + g * hd + d;
        const float4 zero = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        const float4 kq = key < key_end ? LoadKV4(k, off) : zero;
        const float4 vq = key < key_end ? LoadKV4(v, off) : zero;
        k_s[j][d] = kq.x;
        k_s[j][d + 1] = kq.y;
        k_s[j][d + 2] = kq.z;
        k_s[j][d + 3] = kq.w;
        v_s[j][d] = vq.x;
        v_s[j][d + 1] = vq.y;
        v_s[j][d + 2] = vq.z;
        v_s[j][d + 3] = vq.w;
      }
    } else {
      for (int idx = tid; idx < kKeys * hd; idx += blockDim.x) {
        const int j = idx / static_cast<int>(hd), d = idx % static_cast<int>(hd);
        const int64_t key = kb + j;
        const bool in = key < key_end;
        const int64_t off = key * kv_cols + g * hd + d;
        k_s[j][d] = in ? LoadKV(k, off) : 0.0f;
        v_s[j][d] = in ? LoadKV(v, off) : 0.0f;
      }
    }
    __syncthreads();

    float s[kRowsPerWarp];
    for (int rr = 0; rr < kRowsPerWarp; ++rr) s[rr] = 0.0f;
    for (int d = 0; d < hd; ++d) {
      const float kv = k_s[lane][d];
      for (int rr = 0; rr < kRowsPerWarp; ++rr) s[rr] += q_s[warp * kRowsPerWarp + rr][d] * kv;
    }
    const int64_t key = kb + lane;
    for (int rr = 0; rr < kRowsPerWarp; ++rr) {
      const float score = key < key_limit[rr] ? s[rr] : -CUDART_INF_F;
      const float m_new = fmaxf(m[rr], WarpMax(score));
      // A row may have seen no visible key yet (m_new = -inf): keep it empty, avoid inf - inf.
      const float prob = m_new == -CUDART_INF_F ? 0.0f : exp2f(score - m_new);
      const float corr = m_new == -CUDART_INF_F ? 1.0f : exp2f(m[rr] - m_new);
      l[rr] = l[rr] * corr + WarpSum(prob);
      m[rr] = m_new;
      for (int c = 0; c < CH; ++c) acc[rr][c] *= corr;
      p_s[warp][rr][lane] = prob;
    }
    __syncwarp();
    for (int j = 0; j < kKeys; ++j) {
      float vv[CH];
      for (int c = 0; c < CH; ++c) {
        const int d = lane + 32 * c;
        vv[c] = d < hd ? v_s[j][d] : 0.0f;
      }
      for (int rr = 0; rr < kRowsPerWarp; ++rr) {
        const float pj = p_s[warp][rr][j];
        for (int c = 0; c < CH; ++c) acc[rr][c] += pj * vv[c];
      }
    }
  }

  const bool split_mode = gridDim.z > 1;
  for (int rr = 0; rr < kRowsPerWarp; ++rr) {
    const int64_t row = row0 + warp * kRowsPerWarp + rr;
    if (row >= total_rows) continue;
    const int64_t i = row / p.group, h = g * p.group + row % p.group;
    const float inv_l = l[rr] > 0.0f ? 1.0f / l[rr] : 0.0f;
    float* dst = split_mode ? p.part_o + ((split * p.nq + i) * p.heads + h) * hd
                            : p.out + i * q_cols + h * hd;
    for (int c = 0; c < CH; ++c) {
      const int d = lane + 32 * c;
      if (d < hd) dst[d] = acc[rr][c] * inv_l;
    }
    if (split_mode && lane == 0) {
      p.part_m[(split * p.nq + i) * p.heads + h] = m[rr];
      p.part_l[(split * p.nq + i) * p.heads + h] = l[rr];
    }
  }
}

// One block per (query, head): merges the splits' partial softmaxes. Thread t owns output dim
// t % kHd for the splits s = t / kHd (mod kCombineGroups); the split loop is unrolled so that
// its independent loads overlap (a hundred splits read one after another bound decode).
// kGroups: 2, or 8 for decode's merge (one query row: few blocks, each thread's few splits all
// in flight at once; 3 us a layer faster on an H100 at 47 splits).
template <int kGroups>
__global__ void __launch_bounds__(kGroups* kHd) CombineKernel(Params p, int splits) {
  constexpr int kCombineGroups = kGroups, kCombineThreads = kGroups * kHd;
  AllowDependentLaunch();  // o_proj's GEMVs are behind it in decode
  WaitForPrecedingKernel();
  __shared__ float warp_max[kCombineThreads / 32];
  __shared__ float group_num[kCombineGroups][kHd], group_den[kCombineGroups][kHd];
  const int64_t rows = p.nq * p.heads, row = blockIdx.x;
  const int tid = threadIdx.x, d = tid % kHd, group = tid / kHd;
  float mx = -CUDART_INF_F;
  for (int s = tid; s < splits; s += kCombineThreads) mx = fmaxf(mx, p.part_m[s * rows + row]);
  mx = WarpMax(mx);
  if (tid % 32 == 0) warp_max[tid / 32] = mx;
  __syncthreads();
  for (int w = 0; w < kCombineThreads / 32; ++w) mx = fmaxf(mx, warp_max[w]);
  float num = 0.0f, den = 0.0f;
  if (d < p.hd) {
#pragma unroll 8
    for (int s = group; s < splits; s += kCombineGroups) {
      const float ms = p.part_m[s * rows + row];
      // A split that saw no visible key (ms = -inf) weighs 0.
      const float w = ms == -CUDART_INF_F ? 0.0f : p.part_l[s * rows + row] * exp2f(ms - mx);
      num += w * p.part_o[(s * rows + row) * p.hd + d];
      den += w;
    }
  }
  group_num[group][d] = num;
  group_den[group][d] = den;
  __syncthreads();
  if (group == 0 && d < p.hd) {
    for (int g = 1; g < kCombineGroups; ++g) {
      num += group_num[g][d];
      den += group_den[g][d];
    }
    const int64_t i = row / p.heads, h = row % p.heads;
    // den is 0 only when no split saw a key (the decode kernels write 0 then too).
    p.out[i * p.heads * p.hd + h * p.hd + d] = den > 0.0f ? num / den : 0.0f;
  }
}

// --- Decode: one query row (flash-decoding specialised for GQA) --------------------------------
// Block (kv head g, split s) reads each K/V row of its key range once, for all G query heads that
// share it. A row of head_dim = 8 * L elements is read by L lanes, eight elements (16 bytes of
// bf16) each, so a warp runs 32 / L independent key streams. Each stream keeps an online softmax
// (running max, sum and output per head) over its keys, with the K and V loads of kUnroll steps
// issued before any arithmetic; streams are merged by shuffles, warps through shared memory.
// The float operations do not depend on KV, so bf16 / fp8 K/V again give bit for bit the result
// of float32 K/V holding the widened values.
constexpr int kDecodeThreads = 128;
constexpr int kDecodeWarps = kDecodeThreads / 32;

// Eight K/V elements as loaded (16 bytes of bf16 bits, 8 bytes of e4m3 bits, or two float4),
// widened where used.
template <typename KV>
struct Raw8;
template <>
struct Raw8<uint16_t> {
  uint4 bits;
};
template <>
struct Raw8<uint8_t> {
  uint2 bits;
};
template <>
struct Raw8<float> {
  float4 lo, hi;
};
__device__ __forceinline__ Raw8<uint16_t> LoadRaw8(const uint16_t* base, int64_t off) {
  return {*reinterpret_cast<const uint4*>(base + off)};
}
__device__ __forceinline__ Raw8<uint8_t> LoadRaw8(const uint8_t* base, int64_t off) {
  return {*reinterpret_cast<const uint2*>(base + off)};
}
__device__ __forceinline__ Raw8<float> LoadRaw8(const float* base, int64_t off) {
  return {*reinterpret_cast<const float4*>(base + off),
          *reinterpret_cast<const float4*>(base + off + 4)};
}
__device__ __forceinline__ void Widen8(const Raw8<uint16_t>& r, float (&f)[8]) {
  const uint32_t w[4] = {r.bits.x, r.bits.y, r.bits.z, r.bits.w};
  for (int i = 0; i < 4; ++i) {
    f[2 * i] = __uint_as_float(w[i] << 16);
    f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
  }
}
__device__ __forceinline__ void Widen8(const Raw8<uint8_t>& r, float (&f)[8]) {
  const float4 lo = WidenF8x4(r.bits.x), hi = WidenF8x4(r.bits.y);
  f[0] = lo.x, f[1] = lo.y, f[2] = lo.z, f[3] = lo.w;
  f[4] = hi.x, f[5] = hi.y, f[6] = hi.z, f[7] = hi.w;
}
__device__ __forceinline__ void Widen8(const Raw8<float>& r, float (&f)[8]) {
  f[0] = r.lo.x, f[1] = r.lo.y, f[2] = r.lo.z, f[3] = r.lo.w;
  f[4] = r.hi.x, f[5] = r.hi.y, f[6] = r.hi.z, f[7] = r.hi.w;
}

// Sum over the L lanes (a power of two) that share a key.
__device__ __forceinline__ float KeyLanesSum(float v, int lanes_per_key) {
  for (int off = lanes_per_key / 2; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// Weights of two online-softmax states with maxima m_a, m_b (log2 domain) under their joint max
// m; both 0 when both are empty (m = -inf).
__device__ __forceinline__ void MergeWeights(float m_a, float m_b, float m, float& w_a,
                                             float& w_b) {
  w_a = m == -CUDART_INF_F ? 0.0f : exp2f(m_a - m);
  w_b = m == -CUDART_INF_F ? 0.0f : exp2f(m_b - m);
}

// A decode warp's merged online-softmax state into shared memory for MergeDecodeWarps: a lane's
// output dims [dim0, dim0 + D) of each head, and (one lane) the running max and sum.
template <int G, int D>
__device__ __forceinline__ void StoreWarpState(const float (&acc)[G][D], const float (&m)[G],
                                               const float (&l)[G], int warp, int dim0,
                                               bool writes_state,
                                               float (&partial)[kDecodeWarps][G][kHd],
                                               float (&warp_m)[kDecodeWarps][G],
                                               float (&warp_l)[kDecodeWarps][G]) {
  for (int h = 0; h < G; ++h) {
    for (int e = 0; e < D; ++e) partial[warp][h][dim0 + e] = acc[h][e];
    if (writes_state) {
      warp_m[warp][h] = m[h];
      warp_l[warp][h] = l[h];
    }
  }
}

// The end of a decode block (kv head blockIdx.x, split blockIdx.y): merges its warps' online-
// softmax states (after a __syncthreads) and writes the normalised output, or with splits the
// partial output, max and sum for CombineKernel.
template <int G>
__device__ void MergeDecodeWarps(const Params& p, const float (&partial)[kDecodeWarps][G][kHd],
                                 const float (&warp_m)[kDecodeWarps][G],
                                 const float (&warp_l)[kDecodeWarps][G]) {
  const int64_t g = blockIdx.x, split = blockIdx.y, hd = p.hd;
  const bool split_mode = gridDim.y > 1;
  for (int idx = threadIdx.x; idx < G * hd; idx += blockDim.x) {
    const int h = idx / static_cast<int>(hd), d = idx % static_cast<int>(hd);
    float mx = -CUDART_INF_F;
    for (int w = 0; w < kDecodeWarps; ++w) mx = fmaxf(mx, warp_m[w][h]);
    float o = 0.0f, sum = 0.0f;
    for (int w = 0; w < kDecodeWarps; ++w) {
      float weight, unused;
      MergeWeights(warp_m[w][h], mx, mx, weight, unused);
      o += partial[w][h][d] * weight;
      sum += warp_l[w][h] * weight;
    }
    const int64_t head = g * G + h;
    float* dst = split_mode ? p.part_o + (split * p.heads + head) * hd : p.out + head * hd;
    dst[d] = sum > 0.0f ? o / sum : 0.0f;
    if (split_mode && d == 0) {
      p.part_m[split * p.heads + head] = mx;
      p.part_l[split * p.heads + head] = sum;
    }
  }
}

template <typename KV, int G>
__global__ void __launch_bounds__(kDecodeThreads)
    DecodeAttentionKernel(Params p, int lanes_per_key) {
  AllowDependentLaunch();  // the combine or o_proj behind it may launch
  WaitForPrecedingKernel();
  constexpr int kUnroll = G <= 4 ? 4 : 2;  // steps whose loads are in flight together
  const KV* k = static_cast<const KV*>(p.k);
  const KV* v = static_cast<const KV*>(p.v);
  __shared__ float partial[kDecodeWarps][G][kHd];
  __shared__ float warp_m[kDecodeWarps][G], warp_l[kDecodeWarps][G];

  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int L = lanes_per_key, keys_per_step = 32 / L;
  const int sub = lane / L, part = lane % L;  // key stream; dims [8 part, 8 part + 8)
  const int64_t g = blockIdx.x, split = blockIdx.y, hd = p.hd;
  const int64_t kv_cols = p.kv_heads * hd;
  const int64_t key_begin = split * p.keys_per_split;
  const int64_t nk = p.last_position != nullptr ? min(*p.last_position + 1, p.nk) : p.nk;
  const int n = static_cast<int>(min(nk, key_begin + p.keys_per_split) - key_begin);
  const int step = kDecodeWarps * keys_per_step;
  const int64_t dim0 = g * hd + 8 * part;

  float qr[G][8];
  for (int h = 0; h < G; ++h) {
    for (int e = 0; e < 8; ++e) qr[h][e] = p.q[(g * G + h) * hd + 8 * part + e] * p.scale_log2;
  }
  float m[G], l[G], acc[G][8];
  for (int h = 0; h < G; ++h) {
    m[h] = -CUDART_INF_F;
    l[h] = 0.0f;
    for (int e = 0; e < 8; ++e) acc[h][e] = 0.0f;
  }

  // Every lane of a warp runs the same iterations and shuffles (the shuffles need the whole
  // warp: a lane past the end still sums its score, then ignores it).
  for (int j0 = warp * keys_per_step; j0 < n; j0 += kUnroll * step) {
    Raw8<KV> kraw[kUnroll], vraw[kUnroll];
    for (int u = 0; u < kUnroll; ++u) {
      const int j = min(j0 + u * step + sub, n - 1);  // past the end: a valid row, ignored
      kraw[u] = LoadRaw8(k, (key_begin + j) * kv_cols + dim0);
      vraw[u] = LoadRaw8(v, (key_begin + j) * kv_cols + dim0);
    }
    for (int u = 0; u < kUnroll; ++u) {
      const bool in = j0 + u * step + sub < n;
      float kf[8], vf[8];
      Widen8(kraw[u], kf);
      Widen8(vraw[u], vf);
      for (int h = 0; h < G; ++h) {
        float dot = 0.0f;
        for (int e = 0; e < 8; ++e) dot += qr[h][e] * kf[e];
        const float score = KeyLanesSum(dot, L);
        if (!in) continue;
        const float m_new = fmaxf(m[h], score);
        // A stream whose keys so far all scored -inf stays empty (avoids inf - inf).
        const float corr = m_new == -CUDART_INF_F ? 1.0f : exp2f(m[h] - m_new);
        const float prob = m_new == -CUDART_INF_F ? 0.0f : exp2f(score - m_new);
        l[h] = l[h] * corr + prob;
        m[h] = m_new;
        for (int e = 0; e < 8; ++e) acc[h][e] = acc[h][e] * corr + prob * vf[e];
      }
    }
  }
  // Merge the warp's streams (lanes with the same `part`), then the warps.
  for (int off = 16; off >= L; off >>= 1) {
    for (int h = 0; h < G; ++h) {
      const float m_other = __shfl_xor_sync(0xffffffffu, m[h], off);
      const float l_other = __shfl_xor_sync(0xffffffffu, l[h], off);
      const float m_new = fmaxf(m[h], m_other);
      float w_self, w_other;
      MergeWeights(m[h], m_other, m_new, w_self, w_other);
      l[h] = l[h] * w_self + l_other * w_other;
      m[h] = m_new;
      for (int e = 0; e < 8; ++e) {
        const float a_other = __shfl_xor_sync(0xffffffffu, acc[h][e], off);
        acc[h][e] = acc[h][e] * w_self + a_other * w_other;
      }
    }
  }
  if (sub == 0) StoreWarpState(acc, m, l, warp, 8 * part, part == 0, partial, warp_m, warp_l);
  __syncthreads();
  MergeDecodeWarps<G>(p, partial, warp_m, warp_l);
}

// --- Decode, head_dim 128: tiles of 32 keys per warp ------------------------------------------
// The kernel above spends most of its time in dependent chains (a shuffle reduction per key and
// head, then the softmax update) with few bytes in flight. Here lane i of a warp owns key i of
// a 32-key tile for the scores (its whole K row, q from shared memory: no shuffles), the tile's
// softmax costs two warp reductions per head, and for the values lane i owns dims 4i .. 4i + 3 of
// every key of the tile (the probabilities through shared memory). All K and V loads of a tile
// are issued before any arithmetic on them: ~16 KB in flight per warp (bf16).
constexpr int kTileKeys = 32;
constexpr int kTileHd = 128;
// Blocks per SM the kernel is built for (registers a thread: 65536 / (128 * this)), which
// decode's split count fills (mplus-8b's 14,849 keys on 132 SMs: 47 splits at 3 an SM, 31 at
// 2). GQA 8 keeps eight heads' state per lane: at 3 blocks (168 registers) its K/V batches spill
// to local memory; so do GQA 4's pipelined bf16 tiles (a tile's V and the next tile's K live
// together).
constexpr int TileBlocksPerSm(int64_t group, bool pipelined) {
  return group >= 8 || pipelined ? 2 : 3;
}

// Four consecutive K/V elements (8 bytes of bf16 bits, 4 of e4m3 bits, or a float4), widened
// where used.
template <typename KV>
struct Raw4;
template <>
struct Raw4<uint16_t> {
  uint2 bits;
};
template <>
struct Raw4<uint8_t> {
  uint32_t bits;
};
template <>
struct Raw4<float> {
  float4 f;
};
__device__ __forceinline__ Raw4<uint16_t> LoadRaw4(const uint16_t* base, int64_t off) {
  return {*reinterpret_cast<const uint2*>(base + off)};
}
__device__ __forceinline__ Raw4<uint8_t> LoadRaw4(const uint8_t* base, int64_t off) {
  return {*reinterpret_cast<const uint32_t*>(base + off)};
}
__device__ __forceinline__ Raw4<float> LoadRaw4(const float* base, int64_t off) {
  return {*reinterpret_cast<const float4*>(base + off)};
}
__device__ __forceinline__ void Widen4(const Raw4<uint16_t>& r, float (&f)[4]) {
  f[0] = __uint_as_float(r.bits.x << 16), f[1] = __uint_as_float(r.bits.x & 0xffff0000u);
  f[2] = __uint_as_float(r.bits.y << 16), f[3] = __uint_as_float(r.bits.y & 0xffff0000u);
}
__device__ __forceinline__ void Widen4(const Raw4<uint8_t>& r, float (&f)[4]) {
  const float4 w = WidenF8x4(r.bits);
  f[0] = w.x, f[1] = w.y, f[2] = w.z, f[3] = w.w;
}
__device__ __forceinline__ void Widen4(const Raw4<float>& r, float (&f)[4]) {
  f[0] = r.f.x, f[1] = r.f.y, f[2] = r.f.z, f[3] = r.f.w;
}

// kPipelined (bf16 / fp8 K/V, whose tile's K and V loads go out together): a warp issues its
// next tile's K loads once this tile's scores are summed and its V loads once the values are,
// so they stream in while it computes (a warp has 2-4 tiles at mplus-8b's split counts; loaded
// one after another, its loads and arithmetic do not overlap). The same float operations:
// results are bit for bit the unpipelined kernel's. Not yet run on a GPU: launched only with
// MPLUS_CUDA_DECODE_PIPELINE=1 (cuda_backend.cc).
template <typename KV, int G, bool kPipelined>
__global__ void __launch_bounds__(kDecodeThreads, TileBlocksPerSm(G, kPipelined))
    DecodeAttentionTileKernel(Params p) {
  AllowDependentLaunch();  // as DecodeAttentionKernel
  {
    // While the kernel ahead (the step's K/V store) runs: each lane's key of its warp's first
    // tile, K and V rows, fetched into L2 (the store's row too: PrefetchL2).
    const int64_t key = min(blockIdx.y * p.keys_per_split + threadIdx.x, p.nk - 1);
    const int64_t row = (key * p.kv_heads + blockIdx.x) * kTileHd * int64_t{sizeof(KV)};
    for (int64_t at = 0; at < kTileHd * int64_t{sizeof(KV)}; at += 128) {
      PrefetchL2(static_cast<const char*>(p.k) + row + at);
      PrefetchL2(static_cast<const char*>(p.v) + row + at);
    }
  }
  WaitForPrecedingKernel();
  // bf16: a tile's K and V loads go out together (64 + 64 registers; fp8: 32 + 32). float32
  // (twice bf16's registers): K in two batches, then V in two batches after the softmax.
  constexpr int kBatches = sizeof(KV) == 4 ? 2 : 1;
  constexpr bool kVWithK = kBatches == 1;
  static_assert(!kPipelined || kVWithK, "pipelined tiles hold a whole tile's K and V");
  constexpr int kKChunks = kTileHd / 8 / kBatches;   // 8-element K chunks per lane per batch
  constexpr int kVKeys = kTileKeys / kBatches;       // keys whose V a lane holds at once
  constexpr int kStride = kDecodeWarps * kTileKeys;  // from one of a warp's tiles to its next
  const KV* k = static_cast<const KV*>(p.k);
  const KV* v = static_cast<const KV*>(p.v);
  __shared__ __align__(16) float q_s[G][kTileHd];
  __shared__ __align__(16) float prob_s[kDecodeWarps][kTileKeys][G];
  __shared__ float partial[kDecodeWarps][G][kHd];
  __shared__ float warp_m[kDecodeWarps][G], warp_l[kDecodeWarps][G];

  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int64_t g = blockIdx.x, split = blockIdx.y;
  const int64_t kv_cols = p.kv_heads * kTileHd;
  const int64_t key_begin = split * p.keys_per_split;
  const int64_t nk = p.last_position != nullptr ? min(*p.last_position + 1, p.nk) : p.nk;
  const int n = static_cast<int>(min(nk, key_begin + p.keys_per_split) - key_begin);
  for (int idx = tid; idx < G * kTileHd; idx += kDecodeThreads) {
    q_s[idx / kTileHd][idx % kTileHd] = p.q[(g * G) * kTileHd + idx] * p.scale_log2;
  }
  __syncthreads();

  float m[G], l[G], acc[G][4];
#pragma unroll
  for (int h = 0; h < G; ++h) {
    m[h] = -CUDART_INF_F;
    l[h] = 0.0f;
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[h][e] = 0.0f;
  }
  // Every lane of a warp runs the same tiles (the reductions need the whole warp): a lane past
  // the end reads the last key again and weighs it 0. Lane i holds key i of the tile at `base`
  // (K chunks of batch b), and dims 4i .. 4i + 3 of the V rows of keys first_key ...
  const KV* v_dims = v + key_begin * kv_cols + g * kTileHd + 4 * lane;
  const auto load_k = [&](int base, int b, Raw8<KV>(&kraw)[kKChunks]) {
    const KV* k_row = k + (key_begin + min(base + lane, n - 1)) * kv_cols + g * kTileHd;
#pragma unroll
    for (int c = 0; c < kKChunks; ++c) kraw[c] = LoadRaw8(k_row, (b * kKChunks + c) * 8);
  };
  const auto load_v = [&](int first_key, Raw4<KV>(&vraw)[kVKeys]) {
#pragma unroll
    for (int t = 0; t < kVKeys; ++t) {
      vraw[t] = LoadRaw4(v_dims, static_cast<int64_t>(min(first_key + t, n - 1)) * kv_cols);
    }
  };
  // The lane's key's scores, summed over batch b's chunks.
  const auto add_scores = [&](const Raw8<KV>(&kraw)[kKChunks], int b, float(&s)[G]) {
#pragma unroll
    for (int c = 0; c < kKChunks; ++c) {
      float kf[8];
      Widen8(kraw[c], kf);
      const int d0 = (b * kKChunks + c) * 8;
#pragma unroll
      for (int h = 0; h < G; ++h) {
        const float4 qa = *reinterpret_cast<const float4*>(&q_s[h][d0]);
        const float4 qb = *reinterpret_cast<const float4*>(&q_s[h][d0 + 4]);
        s[h] += qa.x * kf[0] + qa.y * kf[1] + qa.z * kf[2] + qa.w * kf[3] + qb.x * kf[4] +
                qb.y * kf[5] + qb.z * kf[6] + qb.w * kf[7];
      }
    }
  };
  // The tile's online-softmax update, per head (m and l are the same in every lane): the
  // probabilities into prob_s, the output so far rescaled.
  const auto softmax = [&](int base, const float(&s)[G]) {
    const bool in = base + lane < n;
    float corr[G];
#pragma unroll
    for (int h = 0; h < G; ++h) {
      const float m_new = fmaxf(m[h], WarpMax(in ? s[h] : -CUDART_INF_F));
      // A warp whose keys so far all scored -inf stays empty (avoids inf - inf).
      corr[h] = m_new == -CUDART_INF_F ? 1.0f : exp2f(m[h] - m_new);
      const float prob = in && m_new != -CUDART_INF_F ? exp2f(s[h] - m_new) : 0.0f;
      l[h] = l[h] * corr[h] + WarpSum(prob);
      m[h] = m_new;
      prob_s[warp][lane][h] = prob;
    }
    __syncwarp();
#pragma unroll
    for (int h = 0; h < G; ++h) {
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[h][e] *= corr[h];
    }
  };
  // The values of the tile's keys b * kVKeys ... weighted by their probabilities.
  const auto add_values = [&](const Raw4<KV>(&vraw)[kVKeys], int b) {
#pragma unroll
    for (int t = 0; t < kVKeys; ++t) {
      float vf[4];
      Widen4(vraw[t], vf);
#pragma unroll
      for (int h = 0; h < G; ++h) {
        const float prob = prob_s[warp][b * kVKeys + t][h];
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[h][e] += prob * vf[e];
      }
    }
  };

  if constexpr (kPipelined) {
    Raw8<KV> kraw[kKChunks];
    Raw4<KV> vraw[kVKeys];
    int base = warp * kTileKeys;
    if (base < n) {
      load_k(base, 0, kraw);
      load_v(base, vraw);
    }
    for (; base < n; base += kStride) {
      const int next = base + kStride;
      float s[G];
#pragma unroll
      for (int h = 0; h < G; ++h) s[h] = 0.0f;
      add_scores(kraw, 0, s);
      if (next < n) load_k(next, 0, kraw);
      softmax(base, s);
      add_values(vraw, 0);
      if (next < n) load_v(next, vraw);
      __syncwarp();  // the next tile overwrites prob_s
    }
  } else {
    for (int base = warp * kTileKeys; base < n; base += kStride) {
      float s[G];
#pragma unroll
      for (int h = 0; h < G; ++h) s[h] = 0.0f;
      Raw4<KV> vraw[kVKeys];
#pragma unroll
      for (int b = 0; b < kBatches; ++b) {
        Raw8<KV> kraw[kKChunks];
        load_k(base, b, kraw);
        if (kVWithK) load_v(base, vraw);
        add_scores(kraw, b, s);
      }
      softmax(base, s);
#pragma unroll
      for (int b = 0; b < kBatches; ++b) {
        if (!kVWithK) load_v(base + b * kVKeys, vraw);
        add_values(vraw, b);
      }
      __syncwarp();  // the next tile overwrites prob_s
    }
  }
  StoreWarpState(acc, m, l, warp, 4 * lane, lane == 0, partial, warp_m, warp_l);
  __syncthreads();
  MergeDecodeWarps<G>(p, partial, warp_m, warp_l);
}

// --- Prefill over bf16 / fp8 K/V on tensor cores (sm_80+ mma.sync, FlashAttention-2 style) ----
// Block (64 query rows, head h, split s): each warp owns 16 query rows, its Q fragments (bf16)
// in registers; 64-key K and V tiles go through shared memory; S = Q K^T and O += P V are
// m16n8k16 bf16 MMAs with float32 accumulation, the online softmax in float32 on the S
// fragments. Q and P are rounded to bf16 for the MMAs, as the official bf16 model's attention
// computes: this path is not bitwise the float32 one. fp8 K/V are widened to bf16 (exact) on
// their way into shared memory.
constexpr int kTcWarps = 4;
constexpr int kTcRows = 16 * kTcWarps;  // query rows per block
constexpr int kTcKeys = 64;             // keys per tile
constexpr int kTcHd = 128;
constexpr int kTcStride =
    kTcHd + 8;  // shared row, bf16: +16 bytes keeps fragment loads conflict-free

// Round to nearest even (NaN stays a NaN).
__device__ __forceinline__ uint32_t Bf16Bits(float f) {
  uint32_t u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0u;
  u += 0x7fffu + ((u >> 16) & 1u);
  return u >> 16;
}
// Two bf16 in a 32-bit MMA operand register: `lo` (the lower k index) in the low half.
__device__ __forceinline__ uint32_t PackBf16(float lo, float hi) {
  return Bf16Bits(lo) | (Bf16Bits(hi) << 16);
}

// d += a · b: A 16x16 (row-major fragment), B 16x8 (column-major fragment), D 16x8 float32.
__device__ __forceinline__ void MmaBf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                        uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Eight K/V elements from `src` (8-element aligned) as bf16 bits.
__device__ __forceinline__ uint4 LoadBf16x8(const uint16_t* src) {
  return *reinterpret_cast<const uint4*>(src);
}
__device__ __forceinline__ uint4 LoadBf16x8(const uint8_t* src) {
  // A widened e4m3 value is a bf16 value: its float32 bits' low half is zero.
  const auto pair = [](uint32_t w) {
    return (__float_as_uint(F8E4M3BitsToFloat(w)) >> 16) |
           (__float_as_uint(F8E4M3BitsToFloat(w >> 8)) & 0xffff0000u);
  };
  const uint2 b = *reinterpret_cast<const uint2*>(src);
  return make_uint4(pair(b.x), pair(b.x >> 16), pair(b.y), pair(b.y >> 16));
}

// KV: uint16_t bfloat16 or uint8_t e4m3 bits.
template <typename KV>
__global__ void __launch_bounds__(kTcWarps * 32) TensorCoreAttentionKernel(Params p) {
  __shared__ __align__(16) uint16_t k_s[kTcKeys][kTcStride];
  __shared__ __align__(16) uint16_t v_s[kTcKeys][kTcStride];
  const KV* k = static_cast<const KV*>(p.k);
  const KV* v = static_cast<const KV*>(p.v);
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int g = lane / 4, t4 = lane % 4;  // MMA fragment coordinates: row group, pair in row
  const int64_t h = blockIdx.y, kv_head = h / p.group, split = blockIdx.z;
  const int64_t q0 = blockIdx.x * int64_t{kTcRows};
  const int64_t q_cols = p.heads * kTcHd, kv_cols = p.kv_heads * kTcHd;
  const int64_t row0 = q0 + warp * 16 + g, row1 = row0 + 8;  // this thread's two query rows

  // Q fragments of the 8 k-steps over head_dim (rows past nq are zero).
  auto q_pair = [&](int64_t row, int d) -> uint32_t {
    if (row >= p.nq) return 0u;
    const float* src = p.q + row * q_cols + h * kTcHd + d;
    return PackBf16(src[0], src[1]);
  };
  uint32_t qf[kTcHd / 16][4];
  for (int kk = 0; kk < kTcHd / 16; ++kk) {
    const int d = kk * 16 + t4 * 2;
    qf[kk][0] = q_pair(row0, d);
    qf[kk][1] = q_pair(row1, d);
    qf[kk][2] = q_pair(row0, d + 8);
    qf[kk][3] = q_pair(row1, d + 8);
  }

  // Keys of this split, cut at the last visible key of the block's last query; per row, the
  // exclusive end of its visible keys (bottom-right causal mask; 0 for rows past nq).
  const int64_t last_row = min(p.nq, q0 + kTcRows) - 1;
  const int64_t split_begin = split * p.keys_per_split;
  const int64_t key_end =
      min(min(p.nk, split_begin + p.keys_per_split), p.nk - p.nq + last_row + 1);
  const int64_t lim0 = row0 < p.nq ? min(key_end, p.nk - p.nq + row0 + 1) : 0;
  const int64_t lim1 = row1 < p.nq ? min(key_end, p.nk - p.nq + row1 + 1) : 0;

  float o[kTcHd / 8][4];
  for (int nt = 0; nt < kTcHd / 8; ++nt) o[nt][0] = o[nt][1] = o[nt][2] = o[nt][3] = 0.0f;
  float m0 = -CUDART_INF_F, m1 = -CUDART_INF_F, l0 = 0.0f, l1 = 0.0f;

  for (int64_t kb = split_begin; kb < key_end; kb += kTcKeys) {
    __syncthreads();  // the previous tiles are consumed
    for (int idx = tid; idx < kTcKeys * (kTcHd / 8); idx += kTcWarps * 32) {
      const int r = idx / (kTcHd / 8), c = idx % (kTcHd / 8) * 8;
      const int64_t key = kb + r;
      uint4 kq = make_uint4(0, 0, 0, 0), vq = make_uint4(0, 0, 0, 0);
      if (key < key_end) {
        const int64_t off = key * kv_cols + kv_head * kTcHd + c;
        kq = LoadBf16x8(k + off);
        vq = LoadBf16x8(v + off);
      }
      *reinterpret_cast<uint4*>(&k_s[r][c]) = kq;
      *reinterpret_cast<uint4*>(&v_s[r][c]) = vq;
    }
    __syncthreads();

    // S = Q K^T, 16 x 64 per warp: 8 key tiles of 8 x 8 head_dim steps.
    float s[kTcKeys / 8][4];
    for (int nt = 0; nt < kTcKeys / 8; ++nt) {
      s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
      for (int kk = 0; kk < kTcHd / 16; ++kk) {
        const uint16_t* kr = &k_s[nt * 8 + g][kk * 16 + t4 * 2];
        MmaBf16(s[nt], qf[kk], *reinterpret_cast<const uint32_t*>(kr),
                *reinterpret_cast<const uint32_t*>(kr + 8));
      }
    }
    // Scale into the log2 domain, mask, and the rows' maxima over the quad of threads.
    float mx0 = -CUDART_INF_F, mx1 = -CUDART_INF_F;
    for (int nt = 0; nt < kTcKeys / 8; ++nt) {
      for (int e = 0; e < 2; ++e) {
        const int64_t key = kb + nt * 8 + t4 * 2 + e;
        s[nt][e] = key < lim0 ? s[nt][e] * p.scale_log2 : -CUDART_INF_F;
        s[nt][2 + e] = key < lim1 ? s[nt][2 + e] * p.scale_log2 : -CUDART_INF_F;
        mx0 = fmaxf(mx0, s[nt][e]);
        mx1 = fmaxf(mx1, s[nt][2 + e]);
      }
    }
    for (int off = 1; off < 4; off <<= 1) {
      mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, off));
      mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, off));
    }
    const float new0 = fmaxf(m0, mx0), new1 = fmaxf(m1, mx1);
    // A row with no visible key yet stays empty (avoids inf - inf).
    const float corr0 = new0 == -CUDART_INF_F ? 1.0f : exp2f(m0 - new0);
    const float corr1 = new1 == -CUDART_INF_F ? 1.0f : exp2f(m1 - new1);
    m0 = new0;
    m1 = new1;
    l0 *= corr0;
    l1 *= corr1;
    for (int nt = 0; nt < kTcHd / 8; ++nt) {
      o[nt][0] *= corr0;
      o[nt][1] *= corr0;
      o[nt][2] *= corr1;
      o[nt][3] *= corr1;
    }
    for (int nt = 0; nt < kTcKeys / 8; ++nt) {
      for (int e = 0; e < 2; ++e) {
        s[nt][e] = new0 == -CUDART_INF_F ? 0.0f : exp2f(s[nt][e] - new0);
        s[nt][2 + e] = new1 == -CUDART_INF_F ? 0.0f : exp2f(s[nt][2 + e] - new1);
        l0 += s[nt][e];
        l1 += s[nt][2 + e];
      }
    }
    // O += P V: P's accumulator fragments of two key tiles are the A fragment of a 16-key step.
    for (int j = 0; j < kTcKeys / 16; ++j) {
      const uint32_t a[4] = {PackBf16(s[2 * j][0], s[2 * j][1]), PackBf16(s[2 * j][2], s[2 * j][3]),
                             PackBf16(s[2 * j + 1][0], s[2 * j + 1][1]),
                             PackBf16(s[2 * j + 1][2], s[2 * j + 1][3])};
      const int key = j * 16 + t4 * 2;
      for (int nt = 0; nt < kTcHd / 8; ++nt) {
        const int d = nt * 8 + g;
        const uint32_t b0 = v_s[key][d] | (static_cast<uint32_t>(v_s[key + 1][d]) << 16);
        const uint32_t b1 = v_s[key + 8][d] | (static_cast<uint32_t>(v_s[key + 9][d]) << 16);
        MmaBf16(o[nt], a, b0, b1);
      }
    }
  }

  for (int off = 1; off < 4; off <<= 1) {
    l0 += __shfl_xor_sync(0xffffffffu, l0, off);
    l1 += __shfl_xor_sync(0xffffffffu, l1, off);
  }
  const bool split_mode = gridDim.z > 1;
  for (int half = 0; half < 2; ++half) {
    const int64_t row = half == 0 ? row0 : row1;
    if (row >= p.nq) continue;
    const float l = half == 0 ? l0 : l1;
    const float inv_l = l > 0.0f ? 1.0f / l : 0.0f;
    float* dst = split_mode ? p.part_o + ((split * p.nq + row) * p.heads + h) * kTcHd
                            : p.out + row * q_cols + h * kTcHd;
    for (int nt = 0; nt < kTcHd / 8; ++nt) {
      const int d = nt * 8 + t4 * 2;
      dst[d] = o[nt][2 * half] * inv_l;
      dst[d + 1] = o[nt][2 * half + 1] * inv_l;
    }
    if (split_mode && t4 == 0) {
      p.part_m[(split * p.nq + row) * p.heads + h] = half == 0 ? m0 : m1;
      p.part_l[(split * p.nq + row) * p.heads + h] = l;
    }
  }
}

// Prefill (more than a few query rows) over bf16 / fp8 K/V with head_dim 128 takes the tensor
// cores.
bool IsTensorCoreShape(const AttentionShape& shape, DType kv_dtype) {
  return (kv_dtype == DType::kBF16 || kv_dtype == DType::kF8E4M3) && shape.head_dim == kTcHd &&
         shape.nq >= 16;
}

// The decode kernel takes one query row, a group of 1, 2, 4 or 8 heads per K/V head and
// head_dim = 8 * L with L a power of two up to 16.
bool IsDecodeShape(const AttentionShape& shape) {
  const int64_t group = shape.num_heads / shape.num_kv_heads;
  const int64_t hd = shape.head_dim;
  const bool group_ok = group == 1 || group == 2 || group == 4 || group == 8;
  return shape.nq == 1 && group_ok && hd % 8 == 0 && hd / 8 <= 16 && ((hd / 8) & (hd / 8 - 1)) == 0;
}

// head_dim 128 takes DecodeAttentionTileKernel, other decode shapes DecodeAttentionKernel.
bool IsTileDecodeShape(const AttentionShape& shape) { return shape.head_dim == kTileHd; }

int64_t DecodeKeysPerSplit(const AttentionShape& shape, int num_sms, bool pipelined) {
  // As many blocks as fit on the GPU at once (one wave), splits of at least 64 keys: more
  // splits only add merging work.
  const int64_t blocks_per_sm =
      IsTileDecodeShape(shape) ? TileBlocksPerSm(shape.num_heads / shape.num_kv_heads, pipelined)
                               : 4;
  const int64_t want_splits =
      std::max<int64_t>(1, blocks_per_sm * int64_t{num_sms} / shape.num_kv_heads);
  const int64_t per = (shape.nk + want_splits - 1) / want_splits;
  return std::max<int64_t>((per + 31) / 32 * 32, 64);
}

// The decode kernel for the group G = p.group (1, 2, 4 or 8: IsDecodeShape); `pipelined` picks
// the tile kernel's pipelined loads where the K/V type has them (bf16, fp8).
template <typename KV>
cudaError_t LaunchDecode(const Params& p, int splits, cudaStream_t stream, bool dependent,
                         bool pipelined) {
  const dim3 grid(static_cast<unsigned>(p.kv_heads), static_cast<unsigned>(splits));
  const auto launch = [&](auto group) {
    constexpr int G = decltype(group)::value;
    if (p.hd == kTileHd) {
      constexpr bool kCanPipeline = sizeof(KV) < 4;
      const auto kernel = pipelined && kCanPipeline ? DecodeAttentionTileKernel<KV, G, kCanPipeline>
                                                    : DecodeAttentionTileKernel<KV, G, false>;
      return LaunchKernel(kernel, grid, dim3(kDecodeThreads), stream, dependent, p);
    }
    return LaunchKernel(DecodeAttentionKernel<KV, G>, grid, dim3(kDecodeThreads), stream, dependent,
                        p, static_cast<int>(p.hd / 8));
  };
  switch (p.group) {
    case 1:
      return launch(std::integral_constant<int, 1>());
    case 2:
      return launch(std::integral_constant<int, 2>());
    case 4:
      return launch(std::integral_constant<int, 4>());
    default:
      return launch(std::integral_constant<int, 8>());
  }
}

template <typename KV, bool kVec>
void LaunchTiles(dim3 grid, const Params& p, int64_t head_dim, cudaStream_t stream) {
  const int threads = kWarps * 32;
  switch ((head_dim + 31) / 32) {
    case 1:
      AttentionKernel<1, KV, kVec><<<grid, threads, 0, stream>>>(p);
      break;
    case 2:
      AttentionKernel<2, KV, kVec><<<grid, threads, 0, stream>>>(p);
      break;
    case 3:
      AttentionKernel<3, KV, kVec><<<grid, threads, 0, stream>>>(p);
      break;
    default:
      AttentionKernel<4, KV, kVec><<<grid, threads, 0, stream>>>(p);
      break;
  }
}

// Four-element loads need every loaded quad aligned: element offsets are multiples of 4 when
// head_dim and the row stride are, and the bases must be 4-element aligned.
template <typename KV>
void LaunchTiles(dim3 grid, const Params& p, int64_t head_dim, cudaStream_t stream) {
  const uintptr_t align = 4 * sizeof(KV);
  const bool vec = head_dim % 4 == 0 && (p.kv_heads * head_dim) % 4 == 0 &&
                   reinterpret_cast<uintptr_t>(p.k) % align == 0 &&
                   reinterpret_cast<uintptr_t>(p.v) % align == 0;
  if (vec) {
    LaunchTiles<KV, true>(grid, p, head_dim, stream);
  } else {
    LaunchTiles<KV, false>(grid, p, head_dim, stream);
  }
}

// The decode and tensor-core kernels read K/V rows eight elements at a time (fp8: 8 bytes; bf16
// and float32: 16-byte loads), so bases and row strides must be aligned to that.
bool KvRowsAligned(const AttentionShape& shape, const void* k, const void* v, DType kv_dtype) {
  const size_t kv_size = DTypeSize(kv_dtype);
  const size_t align = std::min<size_t>(16, 8 * kv_size);
  return reinterpret_cast<uintptr_t>(k) % align == 0 &&
         reinterpret_cast<uintptr_t>(v) % align == 0 &&
         static_cast<size_t>(shape.num_kv_heads * shape.head_dim) * kv_size % align == 0;
}

// Calls f with a null pointer of the element type of K/V of `kv_dtype` (F32, BF16 or F8E4M3).
template <typename F>
void WithKvType(DType kv_dtype, F&& f) {
  switch (kv_dtype) {
    case DType::kBF16:
      return f(static_cast<uint16_t*>(nullptr));
    case DType::kF8E4M3:
      return f(static_cast<uint8_t*>(nullptr));
    default:
      return f(static_cast<float*>(nullptr));
  }
}

int64_t KeysPerSplit(const AttentionShape& shape, int splits) {
  const int64_t per = (shape.nk + splits - 1) / splits;
  return (per + kKeys - 1) / kKeys * kKeys;
}

}  // namespace

int AttentionSplits(const AttentionShape& shape, int num_sms, DType kv_dtype,
                    bool pipelined_decode) {
  if (IsDecodeShape(shape)) {
    const int64_t per = DecodeKeysPerSplit(shape, num_sms, pipelined_decode);
    return static_cast<int>(std::min<int64_t>((shape.nk + per - 1) / per, 65535));
  }
  if (IsTensorCoreShape(shape, kv_dtype)) {
    // About two blocks per SM, splits of at least four 64-key tiles.
    const int64_t blocks = (shape.nq + kTcRows - 1) / kTcRows * shape.num_heads;
    if (blocks >= num_sms) return 1;
    const int64_t want = (2 * int64_t{num_sms} + blocks - 1) / blocks;
    const int64_t most = std::max<int64_t>(1, shape.nk / (4 * kTcKeys));
    return static_cast<int>(std::clamp<int64_t>(std::min(want, most), 1, 128));
  }
  const int64_t group = shape.num_heads / shape.num_kv_heads;
  const int64_t blocks = (shape.nq * group + kRows - 1) / kRows * shape.num_kv_heads;
  if (blocks >= num_sms) return 1;
  // Few (query, head) rows (shapes the decode kernel does not take): bound by how many K/V loads
  // are in flight, so aim at about eight blocks per SM (five fit at once), but no split shorter
  // than 64 keys (two tiles). Measured on an H200 before the decode kernel: two blocks per SM
  // (256-key splits) read the cache at ~0.4 TB/s.
  const int64_t want = (8 * int64_t{num_sms} + blocks - 1) / blocks;
  const int64_t most = std::max<int64_t>(1, shape.nk / 64);
  return static_cast<int>(std::clamp<int64_t>(std::min(want, most), 1, 128));
}

size_t AttentionWorkspaceBytes(const AttentionShape& shape, int splits) {
  if (splits <= 1) return 0;
  return static_cast<size_t>(splits * shape.nq * shape.num_heads * (shape.head_dim + 2)) *
         sizeof(float);
}

bool DecodeKernelTakes(const AttentionShape& shape, const void* k, const void* v, DType kv_dtype,
                       int splits) {
  return IsDecodeShape(shape) && KvRowsAligned(shape, k, v, kv_dtype) && splits <= 65535;
}

cudaError_t LaunchAttention(const float* q, const void* k, const void* v, DType kv_dtype,
                            float* out, const AttentionShape& shape, int splits, void* workspace,
                            cudaStream_t stream, bool dependent, const int64_t* last_position,
                            bool pipelined_decode) {
  if (shape.nq == 0) return cudaSuccess;
  const bool decode_kernel = DecodeKernelTakes(shape, k, v, kv_dtype, splits);
  if (last_position != nullptr && !decode_kernel) return cudaErrorInvalidValue;
  if (shape.head_dim <= 0 || shape.head_dim > kMaxAttentionHeadDim || splits < 1 ||
      shape.num_kv_heads <= 0 || shape.num_kv_heads > 65535 ||
      (kv_dtype != DType::kF32 && kv_dtype != DType::kBF16 && kv_dtype != DType::kF8E4M3)) {
    return cudaErrorInvalidValue;
  }
  Params p;
  p.q = q;
  p.k = k;
  p.v = v;
  p.out = out;
  p.nq = shape.nq;
  p.nk = shape.nk;
  p.heads = shape.num_heads;
  p.kv_heads = shape.num_kv_heads;
  p.hd = shape.head_dim;
  p.group = shape.num_heads / shape.num_kv_heads;
  p.keys_per_split = KeysPerSplit(shape, splits);
  p.last_position = last_position;
  // The same float32 scale as the reference, folded with log2(e) for exp2f.
  p.scale_log2 = (1.0f / sqrtf(static_cast<float>(shape.head_dim))) * kLog2e;
  const int64_t rows = shape.nq * shape.num_heads;
  float* ws = static_cast<float*>(workspace);
  p.part_o = ws;
  p.part_m = splits > 1 ? ws + splits * rows * shape.head_dim : nullptr;
  p.part_l = splits > 1 ? p.part_m + splits * rows : nullptr;

  const bool aligned = KvRowsAligned(shape, k, v, kv_dtype);
  const int64_t tiles = (shape.nq * p.group + kRows - 1) / kRows;
  if (tiles > 0x7fffffff) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(shape.num_kv_heads),
                  static_cast<unsigned>(splits));
  const bool tensor_cores = IsTensorCoreShape(shape, kv_dtype) && aligned;
  const int64_t row_tiles = (shape.nq + kTcRows - 1) / kTcRows;
  if (tensor_cores && (row_tiles > 0x7fffffff || shape.num_heads > 65535 || splits > 65535)) {
    return cudaErrorInvalidValue;
  }
  const dim3 tc_grid(static_cast<unsigned>(row_tiles), static_cast<unsigned>(shape.num_heads),
                     static_cast<unsigned>(splits));
  cudaError_t launched = cudaSuccess;
  WithKvType(kv_dtype, [&](auto* tag) {
    using KV = std::remove_pointer_t<decltype(tag)>;
    if constexpr (!std::is_same_v<KV, float>) {  // IsTensorCoreShape: never float32
      if (tensor_cores) {
        TensorCoreAttentionKernel<KV><<<tc_grid, kTcWarps * 32, 0, stream>>>(p);
        return;
      }
    }
    if (decode_kernel) {
      launched = LaunchDecode<KV>(p, splits, stream, dependent, pipelined_decode);
    } else {
      LaunchTiles<KV>(grid, p, shape.head_dim, stream);
    }
  });
  if (launched != cudaSuccess) return launched;
  if (cudaError_t err = cudaGetLastError(); err != cudaSuccess || splits == 1) return err;
  if (rows > 0x7fffffff) return cudaErrorInvalidValue;
  const int groups = decode_kernel ? 8 : 2;
  return LaunchKernel(decode_kernel ? CombineKernel<8> : CombineKernel<2>,
                      dim3(static_cast<unsigned>(rows)), dim3(groups * kHd), stream, dependent, p,
                      splits);
}

}  // namespace mplus::engine::cuda
