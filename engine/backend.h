// The device backend: tensors that live on a device and the handful of ops the M+ forward needs.
// Model code calls only this interface, so CPU (engine/cpu) and CUDA (engine/cuda) backends are
// interchangeable. Activations are float32; weights may be float32, bfloat16 or float16 and are
// widened to float32 inside the ops (compute is always float32).
#ifndef MPLUS_ENGINE_BACKEND_H_
#define MPLUS_ENGINE_BACKEND_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/dtype.h"
#include "engine/safetensors.h"

namespace mplus::engine {

enum class Device : uint8_t { kCpu, kCuda };

// A dense row-major tensor on one device. Storage is either owned (shared among copies of the
// Tensor object, freed with the last one) or borrowed (e.g. a memory-mapped weight). Copying a
// Tensor copies the handle, not the data.
class Tensor {
 public:
  Tensor() = default;

  // Borrows `data` (not freed by the tensor); the caller keeps it alive.
  static Tensor Borrow(DType dtype, std::vector<int64_t> shape, Device device, void* data) {
    Tensor t;
    t.dtype_ = dtype;
    t.shape_ = std::move(shape);
    t.device_ = device;
    t.data_ = data;
    return t;
  }
  // Takes ownership of `storage` (its deleter frees the device memory).
  static Tensor Own(DType dtype, std::vector<int64_t> shape, Device device,
                    std::shared_ptr<void> storage) {
    Tensor t = Borrow(dtype, std::move(shape), device, storage.get());
    t.storage_ = std::move(storage);
    return t;
  }

  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  const std::vector<int64_t>& shape() const { return shape_; }
  int64_t dim(int i) const { return shape_[i]; }
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t s : shape_) n *= s;
    return n;
  }
  size_t nbytes() const { return static_cast<size_t>(numel()) * DTypeSize(dtype_); }
  bool empty() const { return data_ == nullptr; }
  // Matrices view a tensor as [rows = dim(0), cols = everything else].
  int64_t rows() const { return shape_.empty() ? 1 : shape_[0]; }
  int64_t cols() const { return rows() == 0 ? 0 : numel() / rows(); }

  void* data() const { return data_; }
  template <typename T>
  T* data_as() const {
    return static_cast<T*>(data_);
  }

  // Rows [begin, end) of dim 0, sharing storage (contiguous, so always a valid tensor).
  Tensor Rows(int64_t begin, int64_t end) const {
    Tensor t = *this;
    t.shape_[0] = end - begin;
    t.data_ = static_cast<char*>(data_) + static_cast<size_t>(begin * cols()) * DTypeSize(dtype_);
    return t;
  }
  // Same storage, another shape with the same element count.
  Tensor Reshaped(std::vector<int64_t> shape) const {
    Tensor t = *this;
    t.shape_ = std::move(shape);
    return t;
  }

 private:
  DType dtype_ = DType::kF32;
  std::vector<int64_t> shape_;
  Device device_ = Device::kCpu;
  void* data_ = nullptr;
  std::shared_ptr<void> storage_;
};

// Long-term retrieval keys of one layer held by a backend that scores them itself (in GPU memory
// for CUDA). Made by Backend::NewRetrievalKeys; owned by the session whose keys they mirror.
class RetrievalKeys {
 public:
  virtual ~RetrievalKeys() = default;
  virtual int64_t size() const = 0;  // rows
  virtual size_t bytes() const = 0;  // device bytes held
};

// Ops recorded by Backend::Record, enqueued again as one unit by Replay.
class Recording {
 public:
  virtual ~Recording() = default;
  virtual absl::Status Replay() = 0;
};

// One linear of a LoraMatMulGroup: weight w [m, k], LoRA a [r, k] and b [m, r] (both empty
// when the linear has no LoRA).
struct LoraLinear {
  Tensor w, a, b;
};

// All ops take 2-D views ([rows, cols]); "out" tensors are float32 and preallocated by the
// caller. Unless an op says otherwise, out must not alias an input. Ops may run asynchronously;
// CopyToHost and Synchronize wait. Errors (shape/dtype/device mismatches) are InvalidArgument.
class Backend {
 public:
  virtual ~Backend() = default;

  virtual Device device() const = 0;
  virtual std::string name() const = 0;

  // --- Memory -----------------------------------------------------------------------------
  // Uninitialised device tensor.
  virtual absl::StatusOr<Tensor> Allocate(DType dtype, std::vector<int64_t> shape) = 0;
  // A checkpoint tensor made usable by the ops (the CPU borrows the mapped bytes; a GPU copies).
  virtual absl::StatusOr<Tensor> UploadWeight(const TensorView& view) = 0;
  // Whether UploadWeight(s) copy the bytes: only then may a host buffer uploaded from (a weight
  // made at load, say) go once the upload returns. Default: no (it is borrowed).
  virtual bool CopiesWeights() const { return false; }
  // Several weights that ops may be given together (q, k and v read the same input): a backend
  // may place them back to back in this order, so that LoraMatMulGroup can treat them as one
  // matrix. Default: UploadWeight each.
  virtual absl::StatusOr<std::vector<Tensor>> UploadWeights(absl::Span<const TensorView> views);
  // Host `src` (numel of dst elements of `src_dtype`, any float dtype) into float32 `dst`,
  // converting; or a same-dtype byte copy.
  virtual absl::Status CopyFromHost(const void* src, DType src_dtype, const Tensor& dst) = 0;
  // Writes rows [first, first + count) of a host source, packed, at `out`.
  using HostRowsFill = absl::FunctionRef<void(int64_t first, int64_t count, void* out)>;
  // CopyFromHost of `rows` host rows of `row_bytes` (dst's elements, of `src_dtype`) that `fill`
  // gathers: a backend that moves host data through buffers of its own (the CUDA backend's
  // pinned staging) has `fill` write there, saving a pass over the bytes. Default: `fill` into
  // one host buffer, then CopyFromHost.
  virtual absl::Status CopyRowsFromHost(int64_t rows, size_t row_bytes, DType src_dtype,
                                        HostRowsFill fill, const Tensor& dst);
  // Device `src` into host memory of the same dtype (blocking).
  virtual absl::Status CopyToHost(const Tensor& src, void* dst) = 0;
  // The index of the largest non-NaN element of float32 `x`, the lowest on ties; 0 when every
  // element is NaN (engine/float_range.h's ArgmaxIgnoringNaN: a greedy token). Blocking; a GPU
  // sends back the index instead of the tensor. Default: CopyToHost, then the host's argmax.
  virtual absl::StatusOr<int64_t> Argmax(const Tensor& x);
  // Device-to-device copy of equal element counts: equal dtypes (memmove semantics), or float32
  // to bfloat16 (round to nearest even, as torch) or bfloat16 to float32 (exact); converting
  // copies must not alias.
  virtual absl::Status Copy(const Tensor& src, const Tensor& dst) = 0;
  virtual absl::Status Synchronize() = 0;
  // How long the host has been waiting for the device in the oldest wait still in progress
  // (seconds; 0 when none). No op takes more than a fraction of a second, so minutes mean a hung
  // device; the server's stall watchdog acts on it. Backends without a device: always 0.
  virtual double DeviceWaitSeconds() const { return 0.0; }

  // --- Ops --------------------------------------------------------------------------------
  // out[n, m] = alpha * x[n, k] · w[m, k]^T (+ out when accumulate). x float32; w any float
  // dtype. LoRA is two of these: t = x·A^T, then out += scale * t·B^T.
  virtual absl::Status MatMul(const Tensor& x, const Tensor& w, const Tensor& out,
                              float alpha = 1.0f, bool accumulate = false) = 0;
  // Llama RMSNorm: out = weight * (x / sqrt(mean(x^2) + eps)), normalised in float32.
  // out may alias x.
  virtual absl::Status RmsNorm(const Tensor& x, const Tensor& weight, float eps,
                               const Tensor& out) = 0;
  // In-place rotary embedding, HF rotate_half convention (first/second halves of each head).
  // x is [n, heads * head_dim]; row i has position positions[i]; angles are computed in float32
  // as float(position) * inv_freq[j] (inv_freq float32 [head_dim / 2] on the device).
  virtual absl::Status Rope(const Tensor& x, int64_t head_dim, absl::Span<const int64_t> positions,
                            const Tensor& inv_freq) = 0;
  // Softmax attention with scale 1/sqrt(head_dim). q [nq, H*hd]; k, v [nk, Hkv*hd] with
  // nk >= nq, both float32 or both bfloat16 (widened exactly; all math in float32); query head
  // h reads kv head h / (H / Hkv). Bottom-right causal mask: query i sees keys
  // 0 .. nk - nq + i (a prefix of keys seen by all, then causal). out [nq, H*hd] float32.
  virtual absl::Status Attention(const Tensor& q, const Tensor& k, const Tensor& v,
                                 int64_t num_heads, int64_t num_kv_heads, int64_t head_dim,
                                 const Tensor& out) = 0;
  // out = silu(gate) * up; out may alias gate or up.
  virtual absl::Status SiluMul(const Tensor& gate, const Tensor& up, const Tensor& out) = 0;
  // In-place x = silu(x).
  virtual absl::Status Silu(const Tensor& x) = 0;
  // out = a + b (same shapes); out may alias a or b.
  virtual absl::Status Add(const Tensor& a, const Tensor& b, const Tensor& out) = 0;
  // In-place x[i, :] += row for every row i (row has x.cols() elements, any float dtype).
  virtual absl::Status AddRow(const Tensor& x, const Tensor& row) = 0;
  // out[i, :] = table[ids[i], :], widened to float32 or (a plain row gather) in the table's
  // dtype; ids must be in range (checked).
  virtual absl::Status Embedding(const Tensor& table, absl::Span<const int32_t> ids,
                                 const Tensor& out) = 0;

  // --- Fused ops: the defaults (engine/backend.cc) compose the ops above; a backend may do ---
  // --- each in fewer passes (CUDA: one GEMV launch fewer per LoRA linear in decode).      ---
  // LoRA linear: y = x·w^T + scale · (x·a^T)·b^T with a [r, k] and b [m, r] (any float
  // dtypes; both empty: no LoRA term; x and out float32 as MatMul); out = y, or with accumulate
  // out = out + y, added after y is complete (a residual add in the reference's order).
  virtual absl::Status LoraMatMul(const Tensor& x, const Tensor& w, const Tensor& a,
                                  const Tensor& b, float scale, const Tensor& out,
                                  bool accumulate = false);
  // out[i] = x·w_i^T (+ scale · (x·a_i^T)·b_i^T) for each linear i of `group`, all reading x.
  // Default: MatMul / LoraMatMul each.
  virtual absl::Status LoraMatMulGroup(const Tensor& x, absl::Span<const LoraLinear> group,
                                       float scale, absl::Span<const Tensor> outs);
  // Writes float32 keys k (before RoPE) and values v ([n, kv_cols]) into KV cache rows k_rows /
  // v_rows ([n, kv_cols], both F32 or both BF16): keys are rounded to the cache dtype (the
  // official bf16 model projects in bf16), rotated in float32 at `positions` (as Rope), and
  // rounded again; values are rounded. Afterwards k holds unspecified values.
  virtual absl::Status StoreKeysValues(const Tensor& k, const Tensor& v, int64_t head_dim,
                                       absl::Span<const int64_t> positions, const Tensor& inv_freq,
                                       const Tensor& k_rows, const Tensor& v_rows);

  // --- Decode steps that can be recorded once and replayed (optional) ----------------------
  // A decode step's ops at a position held in device memory, so that the same recorded ops serve
  // every step: `position` is an int64 [1] tensor on this backend. StoreKeysValuesAt stores the
  // one row of k, v at positions {position} into row `position` of k_cache / v_cache;
  // RopeAt rotates the one row of x at {position}; AttentionAt attends the one row of q to cache
  // rows [0, position]. The defaults read the position back (a blocking copy) and call the ops
  // above.
  virtual absl::Status StoreKeysValuesAt(const Tensor& k, const Tensor& v, int64_t head_dim,
                                         const Tensor& position, const Tensor& inv_freq,
                                         const Tensor& k_cache, const Tensor& v_cache);
  virtual absl::Status RopeAt(const Tensor& x, int64_t head_dim, const Tensor& position,
                              const Tensor& inv_freq);
  virtual absl::Status AttentionAt(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                                   const Tensor& position, int64_t num_heads, int64_t num_kv_heads,
                                   int64_t head_dim, const Tensor& out);
  // StoreKeysValuesAt(k, v, ...) and RopeAt(q, ...) at the same position: a decode step's new
  // key / value row stored and its query rotated. Default: those two ops.
  virtual absl::Status RopeStoreKeysValuesAt(const Tensor& q, const Tensor& k, const Tensor& v,
                                             int64_t head_dim, const Tensor& position,
                                             const Tensor& inv_freq, const Tensor& k_cache,
                                             const Tensor& v_cache);
  // Records the ops `enqueue` issues on the calling thread, without running them, for
  // Recording::Replay to run them as one unit (CUDA: a graph, one launch for hundreds of
  // kernels). Whatever must differ between replays has to be read from device memory (the *At
  // ops); memory allocated while recording stays reserved for the recording. Ops that cannot be
  // recorded make this fail, and nothing is left enqueued. Unimplemented here (and on the CPU).
  virtual absl::StatusOr<std::unique_ptr<Recording>> Record(
      const std::function<absl::Status()>& enqueue) {
    return absl::UnimplementedError(name() + " does not record ops");
  }

  // --- Long-term retrieval on the backend (optional) --------------------------------------
  // Keys of `key_dim` floats stored as `dtype` (kF32 or kBF16), or null when this backend scores
  // on the host's keys (the CPU: they are already in its memory).
  virtual absl::StatusOr<std::unique_ptr<RetrievalKeys>> NewRetrievalKeys(int64_t key_dim,
                                                                          DType dtype) {
    return std::unique_ptr<RetrievalKeys>();
  }
  // Makes `keys` equal to the host rows [0, rows) of `host_keys` ([rows, key_dim] of the dtype
  // `keys` was made with), given that its rows [0, unchanged_rows) already are: only the rest is
  // copied.
  virtual absl::Status SyncRetrievalKeys(RetrievalKeys& keys, const void* host_keys, int64_t rows,
                                         int64_t unchanged_rows) {
    return absl::UnimplementedError(name() + " keeps no retrieval keys");
  }
  // Indices, ascending, of the k keys with the best mean over `queries` ([nq, key_dim] float32
  // on this backend) of sigmoid(query · key); all of them when k >= size. Ties go to the lower
  // index and NaN ranks last, as memstore/retrieval_scorer.h.
  virtual absl::StatusOr<std::vector<int64_t>> TopRetrievalKeys(const RetrievalKeys& keys,
                                                                const Tensor& queries, int64_t k) {
    return absl::UnimplementedError(name() + " keeps no retrieval keys");
  }
};

}  // namespace mplus::engine

#endif  // MPLUS_ENGINE_BACKEND_H_
