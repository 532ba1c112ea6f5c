#include "engine/cuda/cuda_backend.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "engine/backend_checks.h"
#include "engine/cuda/attention.h"
#include "engine/cuda/cuda_status.h"
#include "engine/cuda/device_memory.h"
#include "engine/cuda/gemm.h"
#include "engine/cuda/gemv.h"
#include "engine/cuda/kernels.h"
#include "engine/cuda/pinned_staging.h"
#include "engine/cuda/retrieval.h"
#include "engine/status_macros.h"

namespace mplus::engine::cuda {
namespace {

// Hopper's recommended cuBLASLt workspace.
constexpr size_t kGemmWorkspaceBytes = size_t{32} << 20;

absl::Status CheckCuda(const Tensor& t, const char* what) {
  return CheckOnDevice(t, Device::kCuda, what);
}
// A host upload that converts: any float dtype into float32 (UploadWidened).
absl::Status CheckWidening(DType src_dtype, const Tensor& dst, const char* what) {
  if (dst.dtype() == DType::kF32 && IsFloatDType(src_dtype)) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(what, ": cannot convert ", DTypeName(src_dtype),
                                                 " to ", DTypeName(dst.dtype())));
}

absl::Status CheckF32(const Tensor& t, const char* what) {
  return engine::CheckF32(t, Device::kCuda, what);
}
absl::Status CheckFloat(const Tensor& t, const char* what) {
  return engine::CheckFloat(t, Device::kCuda, what);
}

// The element types of a KV cache the attention and K/V store kernels take.
bool IsKvCacheDType(DType dtype) {
  return dtype == DType::kF32 || dtype == DType::kBF16 || dtype == DType::kF8E4M3;
}

// A decode step's position: one int64 on the GPU.
bool IsPosition(const Tensor& position) {
  return position.dtype() == DType::kI64 && position.numel() == 1 &&
         position.device() == Device::kCuda;
}

// Whether the tensors lie back to back in memory, in order.
bool BackToBack(absl::Span<const Tensor* const> ts) {
  for (size_t i = 1; i < ts.size(); ++i) {
    if (static_cast<const char*>(ts[i - 1]->data()) + ts[i - 1]->nbytes() != ts[i]->data()) {
      return false;
    }
  }
  return true;
}

}  // namespace

class CudaBackend : public Backend {
 public:
  static absl::StatusOr<std::unique_ptr<Backend>> Create(int ordinal);
  ~CudaBackend() override;

  Device device() const override { return Device::kCuda; }
  std::string name() const override { return absl::StrCat("cuda:", state_->ordinal()); }

  absl::StatusOr<Tensor> Allocate(DType dtype, std::vector<int64_t> shape) override;
  absl::StatusOr<Tensor> UploadWeight(const TensorView& view) override;
  bool CopiesWeights() const override { return true; }
  absl::StatusOr<std::vector<Tensor>> UploadWeights(absl::Span<const TensorView> views) override;
  absl::Status CopyFromHost(const void* src, DType src_dtype, const Tensor& dst) override;
  absl::Status CopyRowsFromHost(int64_t rows, size_t row_bytes, DType src_dtype, HostRowsFill fill,
                                const Tensor& dst) override;
  absl::Status CopyToHost(const Tensor& src, void* dst) override;
  absl::StatusOr<int64_t> Argmax(const Tensor& x) override;
  absl::Status Copy(const Tensor& src, const Tensor& dst) override;
  absl::Status Synchronize() override;
  double DeviceWaitSeconds() const override { return state_->WaitSeconds(); }

  absl::Status MatMul(const Tensor& x, const Tensor& w, const Tensor& out, float alpha,
                      bool accumulate) override;
  absl::Status RmsNorm(const Tensor& x, const Tensor& weight, float eps,
                       const Tensor& out) override;
  absl::Status Rope(const Tensor& x, int64_t head_dim, absl::Span<const int64_t> positions,
                    const Tensor& inv_freq) override;
  absl::Status Attention(const Tensor& q, const Tensor& k, const Tensor& v, int64_t num_heads,
                         int64_t num_kv_heads, int64_t head_dim, const Tensor& out) override;
  absl::Status LoraMatMul(const Tensor& x, const Tensor& w, const Tensor& a, const Tensor& b,
                          float scale, const Tensor& out, bool accumulate) override;
  absl::Status LoraMatMulGroup(const Tensor& x, absl::Span<const LoraLinear> group, float scale,
                               absl::Span<const Tensor> outs) override;
  absl::Status StoreKeysValues(const Tensor& k, const Tensor& v, int64_t head_dim,
                               absl::Span<const int64_t> positions, const Tensor& inv_freq,
                               const Tensor& k_rows, const Tensor& v_rows) override;
  absl::Status SiluMul(const Tensor& gate, const Tensor& up, const Tensor& out) override;
  absl::Status Silu(const Tensor& x) override;
  absl::Status Add(const Tensor& a, const Tensor& b, const Tensor& out) override;
  absl::Status AddRow(const Tensor& x, const Tensor& row) override;
  absl::Status Embedding(const Tensor& table, absl::Span<const int32_t> ids,
                         const Tensor& out) override;

  absl::Status RopeStoreKeysValuesAt(const Tensor& q, const Tensor& k, const Tensor& v,
                                     int64_t head_dim, const Tensor& position,
                                     const Tensor& inv_freq, const Tensor& k_cache,
                                     const Tensor& v_cache) override;
  absl::Status StoreKeysValuesAt(const Tensor& k, const Tensor& v, int64_t head_dim,
                                 const Tensor& position, const Tensor& inv_freq,
                                 const Tensor& k_cache, const Tensor& v_cache) override;
  absl::Status RopeAt(const Tensor& x, int64_t head_dim, const Tensor& position,
                      const Tensor& inv_freq) override;
  absl::Status AttentionAt(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                           const Tensor& position, int64_t num_heads, int64_t num_kv_heads,
                           int64_t head_dim, const Tensor& out) override;
  absl::StatusOr<std::unique_ptr<Recording>> Record(
      const std::function<absl::Status()>& enqueue) override;

  absl::StatusOr<std::unique_ptr<RetrievalKeys>> NewRetrievalKeys(int64_t key_dim,
                                                                  DType dtype) override;
  absl::Status SyncRetrievalKeys(RetrievalKeys& keys, const void* host_keys, int64_t rows,
                                 int64_t unchanged_rows) override;
  absl::StatusOr<std::vector<int64_t>> TopRetrievalKeys(const RetrievalKeys& keys,
                                                        const Tensor& queries, int64_t k) override;

  CudaMemoryStats MemoryStats() const;
  double HostWaitSeconds() const { return wait_ns_.load(std::memory_order_relaxed) * 1e-9; }
  void ResetMemoryPeak() { state_->ResetPeak(); }

 private:
  explicit CudaBackend(std::shared_ptr<DeviceState> state)
      : state_(state),
        convert_(state, MemCategory::kWorkspace),
        attention_(state, MemCategory::kWorkspace),
        indices_(state, MemCategory::kWorkspace) {}

  // Where ops enqueue: the device's compute stream, or while the calling thread records, the
  // capture stream (other threads' work goes on the compute stream, outside the recording).
  cudaStream_t stream() const {
    return recording_thread_.load(std::memory_order_relaxed) == std::this_thread::get_id()
               ? capture_stream_
               : state_->stream();
  }
  // Checks Attention's operands; the shape they make.
  absl::StatusOr<AttentionShape> AttentionArgs(const Tensor& q, const Tensor& k, const Tensor& v,
                                               int64_t num_heads, int64_t num_kv_heads,
                                               int64_t head_dim, const Tensor& out);
  // Attention (last_position null) or AttentionAt over checked operands.
  absl::Status LaunchAttentionOp(const Tensor& q, const Tensor& k, const Tensor& v,
                                 const AttentionShape& shape, int splits, const Tensor& out,
                                 const int64_t* last_position);
  static absl::StatusOr<DType> WeightDType(const TensorView& view);
  // Enqueues a copy of `bytes` of host `src` to device `dst` on the stream; `src` may be reused
  // as soon as this returns.
  absl::Status UploadBytes(const void* src, size_t bytes, void* dst)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Copies a small host array into the index scratch.
  template <typename T>
  absl::StatusOr<const T*> UploadIndices(absl::Span<const T> host)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Positions for a RoPE kernel: null when they are consecutive from positions[0] (nothing to
  // upload), else uploaded into the index scratch.
  absl::StatusOr<const int64_t*> DevicePositions(absl::Span<const int64_t> positions)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The retrieval scorer on this backend's stream, made on first use.
  absl::StatusOr<GpuRetrievalScorer*> Scorer();
  // Widens `numel` host elements of `dtype` into float32 device memory at dst.
  absl::Status UploadWidened(const void* src, DType dtype, int64_t numel, float* dst)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Copies `bytes` (maybe 0) from device `src` to host `dst`, then waits for the stream; timed
  // into wait_ns_. A copy (bytes > 0) needs mu_ held (it may use download_).
  cudaError_t WaitForStream(const void* src = nullptr, size_t bytes = 0, void* dst = nullptr);
  // Copy between different dtypes (float32 <-> bfloat16 or float8 e4m3 only); takes mu_.
  absl::Status ConvertingCopy(const Tensor& src, const Tensor& dst);
  // StoreKeysValuesAt, and with q RopeStoreKeysValuesAt, as one kernel where it takes them.
  absl::Status StoreAt(const Tensor* q, const Tensor& k, const Tensor& v, int64_t head_dim,
                       const Tensor& position, const Tensor& inv_freq, const Tensor& k_cache,
                       const Tensor& v_cache);
  // gemv_ for a GEMV over `w`: programmatic only when w is weight memory, which no kernel
  // writes (the GEMV streams its first rows before waiting for the kernel ahead).
  GemvDevice GemvFor(const Tensor& w) const {
    GemvDevice g = gemv_;
    g.programmatic_launch = g.programmatic_launch && state_->HoldsWeights(w.data());
    return g;
  }
  // Whether a kernel over `rows` rows that waits before reading anything launches as a
  // programmatic dependent of the kernel ahead (kernels.h): a decode step's (one row), so that no
  // launch gap is exposed between its short kernels. Not a prefill's: there the gaps are small
  // next to the kernels, and on an H100 (session 11) launching those programmatically too left
  // ~25 ms more GPU idle time in a resident 1024-token prefill. A plain launch only waits longer,
  // so results cannot change.
  bool dependent(int64_t rows) const { return gemv_.programmatic_launch && rows == 1; }

  const std::shared_ptr<DeviceState> state_;
  int num_sms_ = 0;
  GemvDevice gemv_;
  // Decode attention's pipelined tile loads (attention.h), with MPLUS_CUDA_DECODE_PIPELINE=1:
  // off by default until it has run on a GPU (the same results by construction).
  bool pipelined_decode_ = false;
  std::atomic<int64_t> wait_ns_{0};
  mutable absl::Mutex mu_;
  std::shared_ptr<void> gemm_workspace_;
  std::unique_ptr<LtGemm> gemm_ ABSL_GUARDED_BY(mu_);
  ScratchBuffer convert_ ABSL_GUARDED_BY(mu_);    // bf16 activations, widened weights
  ScratchBuffer attention_ ABSL_GUARDED_BY(mu_);  // split-key partial results
  ScratchBuffer indices_ ABSL_GUARDED_BY(mu_);    // positions, token ids
  // Host-to-device copies; null when no pinned memory could be had (UploadBytes then waits).
  std::unique_ptr<PinnedStaging> staging_ ABSL_GUARDED_BY(mu_);
  // Downloads of at most kDownloadBytes land here first (null: no pinned memory could be had).
  // A pageable copy goes through the driver's own staging buffers; a DMA into pinned memory and
  // a memcpy is cheaper (a sampled decode step's 513 KB of logits: ~0.07 ms a step less on an
  // H100).
  static constexpr size_t kDownloadBytes = size_t{2} << 20;
  struct FreePinned {
    void operator()(void* p) const { cudaFreeHost(p); }
  };
  std::unique_ptr<void, FreePinned> download_ ABSL_GUARDED_BY(mu_);
  absl::Mutex scorer_mu_;
  std::unique_ptr<GpuRetrievalScorer> scorer_ ABSL_GUARDED_BY(scorer_mu_);
  // Record: one recording at a time, on its own stream.
  absl::Mutex record_mu_;
  cudaStream_t capture_stream_ = nullptr;  // made by the first Record
  std::atomic<std::thread::id> recording_thread_{};
};

absl::StatusOr<std::unique_ptr<Backend>> CudaBackend::Create(int ordinal) {
  MPLUS_ASSIGN_OR_RETURN(std::shared_ptr<DeviceState> state, DeviceState::Create(ordinal));
  std::unique_ptr<CudaBackend> backend(new CudaBackend(state));
  MPLUS_CUDA_RETURN_IF_ERROR(
      cudaDeviceGetAttribute(&backend->num_sms_, cudaDevAttrMultiProcessorCount, ordinal));
  MPLUS_CUDA_RETURN_IF_ERROR(GetGemvDevice(&backend->gemv_));
  const char* pipeline = std::getenv("MPLUS_CUDA_DECODE_PIPELINE");
  backend->pipelined_decode_ = pipeline != nullptr && std::string_view(pipeline) == "1";
  MPLUS_ASSIGN_OR_RETURN(backend->gemm_workspace_,
                         DeviceState::Alloc(state, kGemmWorkspaceBytes, MemCategory::kWorkspace));
  absl::MutexLock lock(&backend->mu_);
  MPLUS_ASSIGN_OR_RETURN(backend->gemm_,
                         LtGemm::Create(backend->gemm_workspace_.get(), kGemmWorkspaceBytes));
  void* download = nullptr;
  if (cudaHostAlloc(&download, kDownloadBytes, cudaHostAllocDefault) == cudaSuccess) {
    backend->download_.reset(download);
  } else {
    cudaGetLastError();  // handled: downloads stay pageable (as PinnedStaging::Create's failure)
  }
  absl::StatusOr<std::unique_ptr<PinnedStaging>> staging = PinnedStaging::Create(backend->state_);
  if (staging.ok()) {
    backend->staging_ = *std::move(staging);
  } else if (!absl::IsResourceExhausted(staging.status())) {
    return staging.status();
  }
  // Without pinned memory (page-locking limits) copies still work, synchronously.
  return backend;
}

CudaBackend::~CudaBackend() {
  // Work still queued may use the scratch buffers and the GEMM plans destroyed below.
  if (state_->Activate().ok()) cudaStreamSynchronize(stream());
  if (capture_stream_ != nullptr) cudaStreamDestroy(capture_stream_);
}

CudaMemoryStats CudaBackend::MemoryStats() const {
  CudaMemoryStats stats;
  stats.weights_bytes = state_->bytes(MemCategory::kWeights);
  stats.workspace_bytes = state_->bytes(MemCategory::kWorkspace);
  stats.other_bytes = state_->bytes(MemCategory::kOther);
  stats.peak_total_bytes = state_->peak_bytes();
  return stats;
}

// Every host-to-device copy of the backend comes here. The copy goes on the compute stream, so
// it runs after the earlier kernels that may still read or write `dst` and before the later
// ones that read it (see engine/cuda/pinned_staging.h for why no separate copy stream).
absl::Status CudaBackend::UploadBytes(const void* src, size_t bytes, void* dst) {
  if (bytes == 0) return absl::OkStatus();
  if (recording_thread_.load(std::memory_order_relaxed) == std::this_thread::get_id()) {
    // A replay would copy whatever the host buffer then holds.
    return absl::FailedPreconditionError("a host-to-device copy cannot be recorded");
  }
  if (staging_ != nullptr) return staging_->Stage(src, bytes, dst);
  if (src == nullptr) return absl::InvalidArgumentError("host-to-device copy from null");
  // From pageable memory cudaMemcpyAsync may return before the DMA has read `src`, which the
  // caller may reuse once we return: wait for it (and so for all earlier work).
  MPLUS_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream()));
  MPLUS_CUDA_RETURN_IF_ERROR(state_->SynchronizeStream());
  return absl::OkStatus();
}

template <typename T>
absl::StatusOr<const T*> CudaBackend::UploadIndices(absl::Span<const T> host) {
  const size_t bytes = host.size() * sizeof(T);
  // Growing the scratch frees the old buffer stream-ordered: earlier kernels keep their indices.
  MPLUS_ASSIGN_OR_RETURN(void* dst, indices_.Get(bytes));
  MPLUS_RETURN_IF_ERROR(UploadBytes(host.data(), bytes, dst));
  return static_cast<const T*>(dst);
}

absl::Status CudaBackend::UploadWidened(const void* src, DType dtype, int64_t numel, float* dst) {
  if (numel == 0) return absl::OkStatus();
  const size_t bytes = static_cast<size_t>(numel) * DTypeSize(dtype);
  // convert_ may still be read by earlier kernels (a MatMul's bf16 activations): the staged copy
  // into it is ordered after them on the stream, and the widen kernel after the copy. Growing
  // convert_ frees the old buffer stream-ordered, so those kernels keep a valid pointer.
  MPLUS_ASSIGN_OR_RETURN(void* raw, convert_.Get(bytes));
  MPLUS_RETURN_IF_ERROR(UploadBytes(src, bytes, raw));
  MPLUS_CUDA_RETURN_IF_ERROR(LaunchWidenToF32(raw, dtype, numel, dst, stream()));
  return absl::OkStatus();
}

absl::StatusOr<Tensor> CudaBackend::Allocate(DType dtype, std::vector<int64_t> shape) {
  int64_t n = 1;
  for (int64_t s : shape) {
    if (s < 0) return absl::InvalidArgumentError("Allocate: negative dimension");
    n *= s;
  }
  MPLUS_RETURN_IF_ERROR(state_->Activate());
  MPLUS_ASSIGN_OR_RETURN(
      std::shared_ptr<void> storage,
      DeviceState::Alloc(state_, static_cast<size_t>(n) * DTypeSize(dtype), MemCategory::kOther));
  return Tensor::Own(dtype, std::move(shape), Device::kCuda, std::move(storage));
}

// The dtype a checkpoint tensor has on the GPU: float16 is widened once at upload (see the
// header) so MatMul never sees it.
absl::StatusOr<DType> CudaBackend::WeightDType(const TensorView& view) {
  if (view.data == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("UploadWeight: ", view.name, " has no data"));
  }
  if (!IsFloatDType(view.dtype)) {
    return absl::InvalidArgumentError(
        absl::StrCat("UploadWeight: ", view.name, " has dtype ", DTypeName(view.dtype)));
  }
  if (view.nbytes != static_cast<size_t>(view.numel()) * DTypeSize(view.dtype)) {
    return absl::InvalidArgumentError(absl::StrCat("UploadWeight: ", view.name, " has ",
                                                   view.nbytes, " bytes for ", view.numel(),
                                                   " elements"));
  }
  return view.dtype == DType::kF16 ? DType::kF32 : view.dtype;
}

absl::StatusOr<Tensor> CudaBackend::UploadWeight(const TensorView& view) {
  MPLUS_ASSIGN_OR_RETURN(const DType dtype, WeightDType(view));
  const int64_t numel = view.numel();
  absl::MutexLock lock(&mu_);
  MPLUS_RETURN_IF_ERROR(state_->Activate());
  MPLUS_ASSIGN_OR_RETURN(std::shared_ptr<void> storage,
                         DeviceState::Alloc(state_, static_cast<size_t>(numel) * DTypeSize(dtype),
                                            MemCategory::kWeights));
  if (dtype == view.dtype) {
    MPLUS_RETURN_IF_ERROR(UploadBytes(view.data, view.nbytes, storage.get()));
  } else {
    MPLUS_RETURN_IF_ERROR(
        UploadWidened(view.data, view.dtype, numel, static_cast<float*>(storage.get())));
  }
  // Load time: wait, so that a failed copy is reported by the upload of its own tensor.
  MPLUS_CUDA_RETURN_IF_ERROR(state_->SynchronizeStream());
  return Tensor::Own(dtype, view.shape, Device::kCuda, std::move(storage));
}

// One allocation, the tensors back to back (views sharing it), when they all keep their dtype
// (bf16 or float32) and 256-byte multiples (every one stays as aligned as its own allocation).
absl::StatusOr<std::vector<Tensor>> CudaBackend::UploadWeights(absl::Span<const TensorView> views) {
  size_t total = 0;
  bool packed = views.size() > 1;
  for (const TensorView& v : views) {
    MPLUS_ASSIGN_OR_RETURN(const DType dtype, WeightDType(v));
    packed = packed && dtype == v.dtype && dtype == views[0].dtype && v.nbytes % 256 == 0;
    total += v.nbytes;
  }
  if (!packed) return Backend::UploadWeights(views);
  absl::MutexLock lock(&mu_);
  MPLUS_RETURN_IF_ERROR(state_->Activate());
  MPLUS_ASSIGN_OR_RETURN(std::shared_ptr<void> storage,
                         DeviceState::Alloc(state_, total, MemCategory::kWeights));
  std::vector<Tensor> out;
  size_t offset = 0;
  for (const TensorView& v : views) {
    void* dst = static_cast<char*>(storage.get()) + offset;
    MPLUS_RETURN_IF_ERROR(UploadBytes(v.data, v.nbytes, dst));
    // Aliasing shared_ptr: a view at `dst` that keeps the whole allocation alive.
    out.push_back(
        Tensor::Own(v.dtype, v.shape, Device::kCuda, std::shared_ptr<void>(storage, dst)));
    offset += v.nbytes;
  }
  MPLUS_CUDA_RETURN_IF_ERROR(state_->SynchronizeStream());
  return out;
}

absl::Status CudaBackend::CopyFromHost(const void* src, DType src_dtype, const Tensor& dst) {
  MPLUS_RETURN_IF_ERROR(CheckCuda(dst, "CopyFromHost"));
  absl::MutexLock lock(&mu_);
  MPLUS_RETURN_IF_ERROR(state_->Activate());
  if (src_dtype == dst.dtype()) return UploadBytes(src, dst.nbytes(), dst.data());
  MPLUS_RETURN_IF_ERROR(CheckWidening(src_dtype, dst, "CopyFromHost"));
  return UploadWidened(src, src_dtype, dst.numel(), dst.data_as<float>());
}

absl::Status CudaBackend::CopyRowsFromHost(int64_t rows, size_t row_bytes, DType src_dtype,
                                           HostRowsFill fill, const Tensor& dst) {
  MPLUS_RETURN_IF_ERROR(CheckCuda(dst, "CopyRowsFromHost"));
  const size_t bytes = static_cast<size_t>(dst.numel()) * DTypeSize(src_dtype);
  if (rows < 0 || static_cast<size_t>(rows) * row_bytes != bytes) {
    return absl::InvalidArgumentError(absl::StrCat("CopyRowsFromHost: ", rows, " rows of ",
                                                   row_bytes, " bytes for ", ShapeString(dst), " ",
                                                   DTypeName(src_dtype), " elements"));
  }
  const bool widen = src_dtype != dst.dtype();
  if (widen) MPLUS_RETURN_IF_ERROR(CheckWidening(src_dtype, dst, "CopyRowsFromHost"));
  {
    absl::MutexLock lock(&mu_);
    // Without the ring (no pinned memory, or rows too long for its buffers) or while recording
    // (where UploadBytes refuses), the default path below says what applies.
    if (staging_ != nullptr && row_bytes <= PinnedStaging::kBufferBytes &&
        recording_thread_.load(std::memory_order_relaxed) != std::this_thread::get_id()) {
      MPLUS_RETURN_IF_ERROR(state_->Activate());
      if (bytes == 0) return absl::OkStatus();
      // Widening goes through convert_ as in UploadWidened (stream-ordered reuse).
      void* target = dst.data();
      if (widen) {
        MPLUS_ASSIGN_OR_RETURN(target, convert_.Get(bytes));
      }
      MPLUS_RETURN_IF_ERROR(staging_->StageRows(rows, row_bytes, fill, target));
      if (widen) {
        MPLUS_CUDA_RETURN_IF_ERROR(
            LaunchWidenToF32(target, src_dtype, dst.numel(), dst.data_as<float>(), stream()));
      }
      return absl::OkStatus();
    }
  }
  return Backend::CopyRowsFromHost(rows, row_bytes, src_dtype, fill, dst);
}

cudaError_t CudaBackend::WaitForStream(const void* src, size_t bytes, void* dst) {
  DeviceState::WaitScope wait(*state_);
  const auto start = std::chrono::steady_clock::now();
  cudaError_t err = cudaSuccess;
  // Into pageable memory the copy itself waits for the stream: both count as waiting, as does
  // the memcpy out of the pinned buffer.
  void* pinned = bytes > 0 && bytes <= kDownloadBytes ? download_.get() : nullptr;
  if (bytes > 0) {
    err = cudaMemcpyAsync(pinned != nullptr ? pinned : dst, src, bytes, cudaMemcpyDeviceToHost,
                          stream());
  }
  if (err == cudaSuccess) err = cudaStreamSynchronize(stream());
  if (err == cudaSuccess && pinned != nullptr) std::memcpy(dst, pinned, bytes);
  wait_ns_.fetch_add(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start)
          .count(),
      std::memory_order_relaxed);
  return err;
}

absl::Status CudaBackend::CopyToHost(const Tensor& src, void* dst) {
  MPLUS_RETURN_IF_ERROR(CheckCuda(src, "CopyToHost"));
  absl::MutexLock lock(&mu_);
  MPLUS_RETURN_IF_ERROR(state_->Activate());
  MPLUS_CUDA_RETURN_IF_ERROR(WaitForStream(src.data(), src.nbytes(), dst));
  return state_->TakeDeferredError();
}

absl::StatusOr<int64_t> CudaBackend::Argmax(const Tensor& x) {
  MPLUS_RETURN_IF_ERROR(CheckCuda(x, "Argmax"));
  MPLUS_RETURN_IF_ERROR(CheckF32(x, "Argmax"));
  absl::MutexLock lock(&mu_);
  MPLUS_RETURN_IF_ERROR(state_->Activate());
  // The index scratch: earlier kernels reading positions from it ran before this one (stream
  // order), and the next upload into it comes after the copy below has waited.
  MPLUS_ASSIGN_OR_RETURN(void* index, indices_.Get(sizeof(int64_t)));
  MPLUS_CUDA_RETURN_IF_ERROR(
      LaunchArgmax(x.data_as<float>(), x.numel(), static_cast<int64_t*>(index), stream()));
  int64_t host = 0;
  MPLUS_CUDA_RETURN_IF_ERROR(WaitForStream(index, sizeof host, &host));
  MPLUS_RETURN_IF_ERROR(state_->TakeDeferredError());
  return host;
}

absl::Status CudaBackend::Copy(const Tensor& src, const Tensor& dst) {
  MPLUS_RETURN_IF_ERROR(CheckCuda(src, "Copy"));
  MPLUS_RETURN_IF_ERROR(CheckCuda(dst, "Copy"));
  if (src.numel() != dst.numel()) return ShapeError("Copy", src, dst);
  if (src.dtype() != dst.dtype()) return ConvertingCopy(src, dst);
  const size_t bytes = src.nbytes();
  if (bytes == 0 || src.data() == dst.data()) return absl::OkStatus();
  absl::MutexLock lock(&mu_);
  MPLUS_RETURN_IF_ERROR(state_->Activate());
  const char* s = static_cast<const char*>(src.data());
  char* d = static_cast<char*>(dst.data());
  if (Overlap(s, bytes, d, bytes)) {
    // Overlapping ranges (memmove semantics, as on the CPU): go through scratch.
    MPLUS_ASSIGN_OR_RETURN(void* tmp, convert_.Get(bytes));
    MPLUS_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(tmp, s, bytes, cudaMemcpyDeviceToDevice, stream()));
    s = static_cast<const char*>(tmp);
  }
  MPLUS_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(d, s, bytes, cudaMemcpyDeviceToDevice, stream()));
  return absl::OkStatus();
}

// float32 <-> bfloat16 or float8 e4m3 (a KV cache written from float32 projections, or read
// back): one element-wise kernel from src into dst, which is why the two must not share bytes.
absl::Status CudaBackend::ConvertingCopy(const Tensor& src, const Tensor& dst) {
  const auto narrow = [](DType t) { return t == DType::kBF16 || t == DType::kF8E4M3; };
  const bool to_narrow = src.dtype() == DType::kF32 && narrow(dst.dtype());
  const bool to_f32 = narrow(src.dtype()) && dst.dtype() == DType::kF32;
  if (!to_narrow && !to_f32) {
    return absl::InvalidArgumentError(absl::StrCat("Copy: cannot convert ", DTypeName(src.dtype()),
                                                   " to ", DTypeName(dst.dtype())));
  }
  const int64_t n = src.numel();
  if (n == 0) return absl::OkStatus();
  if (Overlap(src.data(), src.nbytes(), dst.data(), dst.nbytes())) {
    return absl::InvalidArgumentError(absl::StrCat("Copy: converting copy ", ShapeString(src), " ",
                                                   DTypeName(src.dtype()), " -> ",
                                                   DTypeName(dst.dtype()), " must not alias"));
  }
  absl::MutexLock lock(&mu_);
  MPLUS_RETURN_IF_ERROR(state_->Activate());
  if (to_narrow) {
    MPLUS_CUDA_RETURN_IF_ERROR(
        LaunchNarrowF32(src.data_as<const float>(), n, dst.dtype(), dst.data(), stream()));
  } else {
    MPLUS_CUDA_RETURN_IF_ERROR(
        LaunchWidenToF32(src.data(), src.dtype(), n, dst.data_as<float>(), stream()));
  }
  return absl::OkStatus();
}

absl::Status CudaBackend::Synchronize() {
  MPLUS_RETURN_IF_ERROR(state_->Activate());
  MPLUS_CUDA_RETURN_IF_ERROR(WaitForStream());
  return state_->TakeDeferredError();
}

absl::Status CudaBackend::MatMul(const Tensor& x, const Tensor& w, const Tensor& out, float alpha,
                                 bool accumulate) {
  MPLUS_RETURN_IF_ERROR(CheckF32(x, "MatMul x"));
  MPLUS_RETURN_IF_ERROR(CheckFloat(w, "MatMul w"));
  MPLUS_RETURN_IF_ERROR(CheckF32(out, "MatMul out"));
  const int64_t n = x.rows(), k = x.cols(), m = w.rows();
  if (w.cols() != k) return ShapeError("MatMul", x, w);
  if (out.rows() != n || out.cols() != m) return ShapeError("MatMul out", out, w);
  if (n == 0 || m == 0) return absl::OkStatus();
  absl::MutexLock lock(&mu_);
  MPLUS_RETURN_IF_ERROR(state_->Activate());
  if (k == 0) {
    if (!accumulate) {
      MPLUS_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(out.data(), 0, out.nbytes(), stream()));
    }
    return absl::OkStatus();
  }
  const float beta = accumulate ? 1.0f : 0.0f;
  float* d = out.data_as<float>();
  switch (w.dtype()) {
    case DType::kBF16: {
      if (GemvSupported(n, k, x.data(), w.data())) {  // decode: a few rows
        MPLUS_CUDA_RETURN_IF_ERROR(
            LaunchGemvBf16(x.data_as<const float>(), w.data_as<const uint16_t>(), n, m, k, alpha,
                           accumulate, PlainGemv(d, m), GemvFor(w), stream()));
        return absl::OkStatus();
      }
      MPLUS_ASSIGN_OR_RETURN(void* xb, convert_.Get(static_cast<size_t>(n * k) * 2));
      MPLUS_CUDA_RETURN_IF_ERROR(
          LaunchF32ToBF16(x.data_as<const float>(), n * k, static_cast<uint16_t*>(xb), stream()));
      return gemm_->Run(DType::kBF16, xb, w.data(), d, n, m, k, alpha, beta, stream());
    }
    case DType::kF16:
    case DType::kF8E4M3: {
      // F16: only tensors that bypassed UploadWeight get here. Widen per call (slow path).
      MPLUS_ASSIGN_OR_RETURN(void* wf, convert_.Get(static_cast<size_t>(m * k) * sizeof(float)));
      MPLUS_CUDA_RETURN_IF_ERROR(
          LaunchWidenToF32(w.data(), w.dtype(), m * k, static_cast<float*>(wf), stream()));
      return gemm_->Run(DType::kF32, x.data(), wf, d, n, m, k, alpha, beta, stream());
    }
    case DType::kF32:
      return gemm_->Run(DType::kF32, x.data(), w.data(), d, n, m, k, alpha, beta, stream());
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("MatMul: weights of ", DTypeName(w.dtype()), " are not supported"));
  }
}

absl::Status CudaBackend::RmsNorm(const Tensor& x, const Tensor& weight, float eps,
                                  const Tensor& out) {
  MPLUS_RETURN_IF_ERROR(CheckF32(x, "RmsNorm x"));
  MPLUS_RETURN_IF_ERROR(CheckFloat(weight, "RmsNorm weight"));
  MPLUS_RETURN_IF_ERROR(CheckF32(out, "RmsNorm out"));
  const int64_t n = x.rows(), d = x.cols();
  if (weight.numel() != d || out.rows() != n || out.cols() != d) {
    return ShapeError("RmsNorm", x, weight);
  }
  absl::MutexLock lock(&mu_);
  MPLUS_RETURN_IF_ERROR(state_->Activate());
  MPLUS_CUDA_RETURN_IF_ERROR(LaunchRmsNorm(x.data_as<const float>(), weight.data(), weight.dtype(),
                                           n, d, eps, out.data_as<float>(), stream(), dependent(n),
                                           state_->HoldsWeights(weight.data())));
  return absl::OkStatus();
}

absl::StatusOr<const int64_t*> CudaBackend::DevicePositions(absl::Span<const int64_t> positions) {
  for (size_t i = 1; i < positions.size(); ++i) {
    if (positions[i] != positions[0] + static_cast<int64_t>(i)) return UploadIndices(positions);
  }
  return nullptr;  // consecutive (every forward pass)
}

absl::Status CudaBackend::Rope(const Tensor& x, int64_t head_dim,
                               absl::Span<const int64_t> positions, const Tensor& inv_freq) {
  MPLUS_RETURN_IF_ERROR(CheckRope(x, Device::kCuda, head_dim, positions, inv_freq));
  const int64_t n = x.rows(), cols = x.cols();
  if (n == 0) return absl::OkStatus();
  absl::MutexLock lock(&mu_);
  MPLUS_RETURN_IF_ERROR(state_->Activate());
  MPLUS_ASSIGN_OR_RETURN(const int64_t* pos, DevicePositions(positions));
  MPLUS_CUDA_RETURN_IF_ERROR(LaunchRope(x.data_as<float>(), n, cols, head_dim, pos, positions[0],
                                        inv_freq.data_as<const float>(), stream(), dependent(n)));
  return absl::OkStatus();
}

absl::StatusOr<AttentionShape> CudaBackend::AttentionArgs(const Tensor& q, const Tensor& k,
                                                          const Tensor& v, int64_t num_heads,
                                                          int64_t num_kv_heads, int64_t head_dim,
                                                          const Tensor& out) {
  for (const Tensor* t : {&q, &out}) MPLUS_RETURN_IF_ERROR(CheckF32(*t, "Attention"));
  for (const Tensor* t : {&k, &v}) MPLUS_RETURN_IF_ERROR(CheckCuda(*t, "Attention"));
  // bf16 / fp8 K/V: a narrow KV cache read in place (widened in the kernels' loads).
  const DType kv_dtype = k.dtype();
  if (!IsKvCacheDType(kv_dtype) || v.dtype() != kv_dtype) {
    return absl::InvalidArgumentError(
        absl::StrCat("Attention: K and V must both be F32, BF16 or F8_E4M3, got ",
                     DTypeName(kv_dtype), " and ", DTypeName(v.dtype())));
  }
  const int64_t nq = q.rows(), nk = k.rows();
  if (num_kv_heads <= 0 || num_heads % num_kv_heads != 0 || head_dim <= 0 ||
      q.cols() != num_heads * head_dim || k.cols() != num_kv_heads * head_dim || v.rows() != nk ||
      v.cols() != k.cols() || out.rows() != nq || out.cols() != q.cols() || nk < nq) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Attention: q ", ShapeString(q), " k ", ShapeString(k), " v ", ShapeString(v), " out ",
        ShapeString(out), " heads ", num_heads, "/", num_kv_heads, " head_dim ", head_dim));
  }
  if (head_dim > kMaxAttentionHeadDim) {
    return absl::UnimplementedError(absl::StrCat("Attention: head_dim ", head_dim, " > ",
                                                 kMaxAttentionHeadDim,
                                                 " is not supported on CUDA"));
  }
  return AttentionShape{nq, nk, num_heads, num_kv_heads, head_dim};
}

absl::Status CudaBackend::LaunchAttentionOp(const Tensor& q, const Tensor& k, const Tensor& v,
                                            const AttentionShape& shape, int splits,
                                            const Tensor& out, const int64_t* last_position) {
  if (shape.nq == 0) return absl::OkStatus();
  absl::MutexLock lock(&mu_);
  MPLUS_RETURN_IF_ERROR(state_->Activate());
  void* ws = nullptr;
  if (const size_t bytes = AttentionWorkspaceBytes(shape, splits); bytes > 0) {
    MPLUS_ASSIGN_OR_RETURN(ws, attention_.Get(bytes));
  }
  MPLUS_CUDA_RETURN_IF_ERROR(LaunchAttention(
      q.data_as<const float>(), k.data(), v.data(), k.dtype(), out.data_as<float>(), shape, splits,
      ws, stream(), dependent(shape.nq), last_position, pipelined_decode_));
  return absl::OkStatus();
}

absl::Status CudaBackend::Attention(const Tensor& q, const Tensor& k, const Tensor& v,
                                    int64_t num_heads, int64_t num_kv_heads, int64_t head_dim,
                                    const Tensor& out) {
  MPLUS_ASSIGN_OR_RETURN(const AttentionShape shape,
                         AttentionArgs(q, k, v, num_heads, num_kv_heads, head_dim, out));
  return LaunchAttentionOp(
      q, k, v, shape, AttentionSplits(shape, num_sms_, k.dtype(), pipelined_decode_), out, nullptr);
}

// --- Decode steps at a device-held position (recordable: nothing is read back) -----------------
// Shapes the kernels do not take go the default way, which reads the position back: recording
// such a step fails, and the model then decodes op by op.

absl::Status CudaBackend::AttentionAt(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                                      const Tensor& position, int64_t num_heads,
                                      int64_t num_kv_heads, int64_t head_dim, const Tensor& out) {
  // The splits cover the whole cache; those past the position see no key.
  MPLUS_ASSIGN_OR_RETURN(const AttentionShape shape, AttentionArgs(q, k_cache, v_cache, num_heads,
                                                                   num_kv_heads, head_dim, out));
  const int splits = AttentionSplits(shape, num_sms_, k_cache.dtype(), pipelined_decode_);
  if (q.rows() != 1 || !IsPosition(position) ||
      !DecodeKernelTakes(shape, k_cache.data(), v_cache.data(), k_cache.dtype(), splits)) {
    return Backend::AttentionAt(q, k_cache, v_cache, position, num_heads, num_kv_heads, head_dim,
                                out);
  }
  return LaunchAttentionOp(q, k_cache, v_cache, shape, splits, out,
                           position.data_as<const int64_t>());
}

absl::Status CudaBackend::RopeAt(const Tensor& x, int64_t head_dim, const Tensor& position,
                                 const Tensor& inv_freq) {
  const int64_t cols = x.cols();
  if (x.rows() != 1 || !IsPosition(position) || x.dtype() != DType::kF32 ||
      x.device() != Device::kCuda || inv_freq.dtype() != DType::kF32 ||
      inv_freq.device() != Device::kCuda || head_dim <= 0 || head_dim % 2 != 0 ||
      cols % head_dim != 0 || inv_freq.numel() != head_dim / 2) {
    return Backend::RopeAt(x, head_dim, position, inv_freq);
  }
  absl::MutexLock lock(&mu_);
  MPLUS_RETURN_IF_ERROR(state_->Activate());
  MPLUS_CUDA_RETURN_IF_ERROR(LaunchRope(x.data_as<float>(), 1, cols, head_dim,
                                        position.data_as<const int64_t>(), 0,
                                        inv_freq.data_as<const float>(), stream(), dependent(1)));
  return absl::OkStatus();
}

// The caller keeps the position below the caches' rows (the kernel trusts it).
absl::Status CudaBackend::StoreKeysValuesAt(const Tensor& k, const Tensor& v, int64_t head_dim,
                                            const Tensor& position, const Tensor& inv_freq,
                                            const Tensor& k_cache, const Tensor& v_cache) {
  return StoreAt(nullptr, k, v, head_dim, position, inv_freq, k_cache, v_cache);
}

// The query rotated by the kernel that stores the key / value row: one launch instead of two, the
// same float operations as RopeAt's.
absl::Status CudaBackend::RopeStoreKeysValuesAt(const Tensor& q, const Tensor& k, const Tensor& v,
                                                int64_t head_dim, const Tensor& position,
                                                const Tensor& inv_freq, const Tensor& k_cache,
                                                const Tensor& v_cache) {
  return StoreAt(&q, k, v, head_dim, position, inv_freq, k_cache, v_cache);
}

absl::Status CudaBackend::StoreAt(const Tensor* q, const Tensor& k, const Tensor& v,
                                  int64_t head_dim, const Tensor& position, const Tensor& inv_freq,
                                  const Tensor& k_cache, const Tensor& v_cache) {
  const int64_t cols = k.cols();
  const DType cache = k_cache.dtype();
  bool fused = k.rows() == 1 && IsPosition(position) && k.dtype() == DType::kF32 &&
               v.dtype() == DType::kF32 && inv_freq.dtype() == DType::kF32 &&
               IsKvCacheDType(cache) && v_cache.dtype() == cache && v.rows() == 1 &&
               v.cols() == cols && k_cache.cols() == cols && v_cache.cols() == cols &&
               v_cache.rows() == k_cache.rows() && head_dim > 0 && head_dim % 2 == 0 &&
               cols % head_dim == 0 && inv_freq.numel() == head_dim / 2;
  for (const Tensor* t : {&k, &v, &inv_freq, &k_cache, &v_cache}) {
    fused = fused && t->device() == Device::kCuda;
  }
  for (const Tensor* src : {&k, &v}) {
    for (const Tensor* dst : {&k_cache, &v_cache}) {
      fused = fused && !Overlap(src->data(), src->nbytes(), dst->data(), dst->nbytes());
    }
  }
  if (q != nullptr) {  // rotated in place: apart from everything the kernel reads or writes
    fused = fused && q->rows() == 1 && q->dtype() == DType::kF32 && q->cols() % head_dim == 0 &&
            q->device() == Device::kCuda;
    for (const Tensor* other : {&k, &v, &inv_freq, &position, &k_cache, &v_cache}) {
      fused = fused && !Overlap(q->data(), q->nbytes(), other->data(), other->nbytes());
    }
  }
  if (!fused || Overlap(k_cache.data(), k_cache.nbytes(), v_cache.data(), v_cache.nbytes())) {
    if (q != nullptr) {
      return Backend::RopeStoreKeysValuesAt(*q, k, v, head_dim, position, inv_freq, k_cache,
                                            v_cache);
    }
    return Backend::StoreKeysValuesAt(k, v, head_dim, position, inv_freq, k_cache, v_cache);
  }
  absl::MutexLock lock(&mu_);
  MPLUS_RETURN_IF_ERROR(state_->Activate());
  MPLUS_CUDA_RETURN_IF_ERROR(LaunchStoreKeysValues(
      k.data_as<const float>(), v.data_as<const float>(), 1, cols, head_dim,
      position.data_as<const int64_t>(), 0, inv_freq.data_as<const float>(), cache, k_cache.data(),
      v_cache.data(), stream(), dependent(1), /*rows_at_positions=*/true,
      q != nullptr ? q->data_as<float>() : nullptr, q != nullptr ? q->cols() : 0));
  return absl::OkStatus();
}

namespace {

// Recorded ops as an executable CUDA graph, launched on the compute stream (after what is
// enqueued there, before what follows). Holds the arena its ops' memory came from.
class CudaRecording : public Recording {
 public:
  CudaRecording(std::shared_ptr<DeviceState> state, cudaGraphExec_t exec,
                std::shared_ptr<RecordingArena> arena)
      : state_(std::move(state)), exec_(exec), arena_(std::move(arena)) {}
  // A launch still running finishes first (CUDA frees an in-flight graph on completion); the
  // arena's blocks are then freed on the stream, after it.
  ~CudaRecording() override {
    if (state_->Activate().ok()) cudaGraphExecDestroy(exec_);
  }
  CudaRecording(const CudaRecording&) = delete;
  CudaRecording& operator=(const CudaRecording&) = delete;

  absl::Status Replay() override {
    MPLUS_RETURN_IF_ERROR(state_->Activate());
    MPLUS_CUDA_RETURN_IF_ERROR(cudaGraphLaunch(exec_, state_->stream()));
    return absl::OkStatus();
  }

 private:
  const std::shared_ptr<DeviceState> state_;
  const cudaGraphExec_t exec_;
  const std::shared_ptr<RecordingArena> arena_;
};

}  // namespace

// The ops `enqueue` issues on this thread go to capture_stream_ (stream()), and the memory they
// allocate to a fresh arena; nothing runs. Work of other threads keeps going to the compute
// stream meanwhile, outside the recording. An op that fails (one that must read something back,
// say) fails the recording: the capture is ended and dropped.
absl::StatusOr<std::unique_ptr<Recording>> CudaBackend::Record(
    const std::function<absl::Status()>& enqueue) {
  absl::MutexLock record_lock(&record_mu_);
  MPLUS_RETURN_IF_ERROR(state_->Activate());
  // Every failure below clears the thread's last CUDA error: the caller falls back to running
  // the ops one by one, and the first launch check there must not find this one.
  if (capture_stream_ == nullptr) {
    if (const cudaError_t err = cudaStreamCreateWithFlags(&capture_stream_, cudaStreamNonBlocking);
        err != cudaSuccess) {
      capture_stream_ = nullptr;
      cudaGetLastError();
      return CudaError(err, "cudaStreamCreateWithFlags", __FILE__, __LINE__);
    }
  }
  auto arena = std::make_shared<RecordingArena>(state_);
  absl::Status status;
  cudaGraph_t graph = nullptr;
  {
    RecordingArena::Scope scope(arena.get());
    recording_thread_.store(std::this_thread::get_id());
    // Relaxed: other threads may allocate and free device memory meanwhile.
    cudaError_t err = cudaStreamBeginCapture(capture_stream_, cudaStreamCaptureModeRelaxed);
    if (err == cudaSuccess) {
      status = enqueue();
      err = cudaStreamEndCapture(capture_stream_, &graph);  // also after a failed op
    }
    recording_thread_.store(std::thread::id());
    {
      absl::MutexLock lock(&mu_);
      for (ScratchBuffer* scratch : {&convert_, &attention_, &indices_}) scratch->EndRecording();
    }
    if (status.ok() && err != cudaSuccess)
      status = CudaError(err, "stream capture", __FILE__, __LINE__);
  }
  cudaGetLastError();  // reported above
  if (!status.ok()) {
    if (graph != nullptr) cudaGraphDestroy(graph);
    return status;
  }
  cudaGraphExec_t exec = nullptr;
  const cudaError_t err = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);
  if (err != cudaSuccess) {
    cudaGetLastError();
    return CudaError(err, "cudaGraphInstantiate", __FILE__, __LINE__);
  }
  return std::make_unique<CudaRecording>(state_, exec, std::move(arena));
}

// Decode's linears (a few rows, bf16 weights): the LoRA B term and a residual add (accumulate)
// ride in the epilogue of the base GEMV, which adds out after the LoRA term as the composed way
// does: two launches instead of four. Other shapes and dtypes go the composed way.
absl::Status CudaBackend::LoraMatMul(const Tensor& x, const Tensor& w, const Tensor& a,
                                     const Tensor& b, float scale, const Tensor& out,
                                     bool accumulate) {
  const int64_t n = x.rows(), k = x.cols(), m = w.rows(), r = a.empty() ? 0 : a.rows();
  bool fused = x.dtype() == DType::kF32 && out.dtype() == DType::kF32 &&
               w.dtype() == DType::kBF16 && n > 0 && m > 0 && w.cols() == k && out.rows() == n &&
               out.cols() == m && GemvSupported(n, k, x.data(), w.data());
  for (const Tensor* t : {&x, &w, &out}) fused = fused && t->device() == Device::kCuda;
  if (!a.empty()) {
    fused = fused && a.dtype() == DType::kBF16 && b.dtype() == DType::kBF16 && r > 0 &&
            a.cols() == k && b.rows() == m && b.cols() == r &&
            GemvSupported(n, k, x.data(), a.data()) && a.device() == Device::kCuda &&
            b.device() == Device::kCuda;
  }
  if (!fused || Overlap(x.data(), x.nbytes(), out.data(), out.nbytes())) {
    return Backend::LoraMatMul(x, w, a, b, scale, out, accumulate);
  }
  Tensor t;
  if (r > 0) {
    MPLUS_ASSIGN_OR_RETURN(t, Allocate(DType::kF32, {n, r}));
  }
  absl::MutexLock lock(&mu_);
  MPLUS_RETURN_IF_ERROR(state_->Activate());
  GemvEpilogue ep = PlainGemv(out.data_as<float>(), m);
  if (r > 0) {
    MPLUS_CUDA_RETURN_IF_ERROR(
        LaunchGemvBf16(x.data_as<const float>(), a.data_as<const uint16_t>(), n, r, k, 1.0f, false,
                       PlainGemv(t.data_as<float>(), r), GemvFor(a), stream()));
    ep.lora_b[0] = b.data_as<const uint16_t>();
    ep.lora_t = t.data_as<const float>();
    ep.lora_r = ep.lora_t_cols = r;
    ep.lora_scale = scale;
  }
  MPLUS_CUDA_RETURN_IF_ERROR(LaunchGemvBf16(x.data_as<const float>(), w.data_as<const uint16_t>(),
                                            n, m, k, 1.0f, accumulate, ep, GemvFor(w), stream()));
  return absl::OkStatus();
}

// q, k, v (or gate, up) in decode: their weights back to back (UploadWeights) are one GEMV whose
// epilogue routes each linear's rows to its output with its LoRA B term, after one GEMV for all
// their A matrices (also back to back): two launches instead of two or three per linear. Without
// LoRA (every linear's A empty: the decoder's, merged into the weights) the one GEMV alone.
absl::Status CudaBackend::LoraMatMulGroup(const Tensor& x, absl::Span<const LoraLinear> group,
                                          float scale, absl::Span<const Tensor> outs) {
  const int64_t n = x.rows(), k = x.cols();
  const int count = static_cast<int>(group.size());
  bool fused = count >= 2 && count <= kMaxGemvSegments && outs.size() == group.size() &&
               x.dtype() == DType::kF32 && x.device() == Device::kCuda && n > 0;
  const bool lora = fused && !group[0].a.empty();
  std::vector<const Tensor*> ws, as;
  const int64_t r = lora ? group[0].a.rows() : 0;
  int64_t m = 0;
  for (int i = 0; fused && i < count; ++i) {
    const LoraLinear& l = group[i];
    const Tensor& out = outs[i];
    fused = l.a.empty() != lora && l.w.dtype() == DType::kBF16 && l.w.cols() == k &&
            out.dtype() == DType::kF32 && out.rows() == n && out.cols() == l.w.rows() &&
            l.w.device() == Device::kCuda && out.device() == Device::kCuda &&
            !Overlap(x.data(), x.nbytes(), out.data(), out.nbytes());
    if (lora) {
      fused = fused && l.a.dtype() == DType::kBF16 && l.b.dtype() == DType::kBF16 &&
              l.a.cols() == k && l.a.rows() == r && r > 0 && l.b.rows() == l.w.rows() &&
              l.b.cols() == r && l.a.device() == Device::kCuda && l.b.device() == Device::kCuda;
      as.push_back(&l.a);
    }
    ws.push_back(&l.w);
    m += l.w.rows();
  }
  fused = fused && BackToBack(ws) && GemvSupported(n, k, x.data(), ws[0]->data());
  if (lora) fused = fused && BackToBack(as) && GemvSupported(n, k, x.data(), as[0]->data());
  if (!fused) return Backend::LoraMatMulGroup(x, group, scale, outs);
  Tensor t;
  if (lora) {
    MPLUS_ASSIGN_OR_RETURN(t, Allocate(DType::kF32, {n, count * r}));
  }
  GemvEpilogue ep;
  ep.segments = count;
  int64_t end = 0;
  for (int i = 0; i < count; ++i) {
    end += group[i].w.rows();
    ep.end[i] = end;
    ep.out[i] = outs[i].data_as<float>();
    if (lora) ep.lora_b[i] = group[i].b.data_as<const uint16_t>();
  }
  if (lora) {
    ep.lora_t = t.data_as<const float>();
    ep.lora_r = r;
    ep.lora_t_cols = count * r;
    ep.lora_scale = scale;
  }
  absl::MutexLock lock(&mu_);
  MPLUS_RETURN_IF_ERROR(state_->Activate());
  if (lora) {
    MPLUS_CUDA_RETURN_IF_ERROR(LaunchGemvBf16(
        x.data_as<const float>(), as[0]->data_as<const uint16_t>(), n, count * r, k, 1.0f, false,
        PlainGemv(t.data_as<float>(), count * r), GemvFor(*as[0]), stream()));
  }
  MPLUS_CUDA_RETURN_IF_ERROR(LaunchGemvBf16(x.data_as<const float>(),
                                            ws[0]->data_as<const uint16_t>(), n, m, k, 1.0f, false,
                                            ep, GemvFor(*ws[0]), stream()));
  return absl::OkStatus();
}

// One kernel instead of the composed five (round, widen, RoPE, two converting copies). Shapes
// the kernel does not take, and every error, go the composed way.
absl::Status CudaBackend::StoreKeysValues(const Tensor& k, const Tensor& v, int64_t head_dim,
                                          absl::Span<const int64_t> positions,
                                          const Tensor& inv_freq, const Tensor& k_rows,
                                          const Tensor& v_rows) {
  const int64_t n = k.rows(), cols = k.cols();
  const DType cache = k_rows.dtype();
  bool fused = k.dtype() == DType::kF32 && v.dtype() == DType::kF32 &&
               inv_freq.dtype() == DType::kF32 && IsKvCacheDType(cache) &&
               v_rows.dtype() == cache && v.rows() == n && v.cols() == cols &&
               k_rows.numel() == n * cols && v_rows.numel() == n * cols && head_dim > 0 &&
               head_dim % 2 == 0 && cols % head_dim == 0 && inv_freq.numel() == head_dim / 2 &&
               static_cast<int64_t>(positions.size()) == n;
  for (const Tensor* t : {&k, &v, &inv_freq, &k_rows, &v_rows}) {
    fused = fused && t->device() == Device::kCuda;
  }
  // In place into float32 is fine (each element is read before it is written, by the same
  // thread); other overlaps are not (a narrow element lands in a float another thread may not
  // have read yet).
  const auto bad_overlap = [](const Tensor& src, const Tensor& dst) {
    const bool in_place = src.data() == dst.data() && src.dtype() == dst.dtype();
    return !in_place && Overlap(src.data(), src.nbytes(), dst.data(), dst.nbytes());
  };
  if (!fused || bad_overlap(k, k_rows) || bad_overlap(v, v_rows) || bad_overlap(k, v_rows) ||
      bad_overlap(v, k_rows) ||
      Overlap(k_rows.data(), k_rows.nbytes(), v_rows.data(), v_rows.nbytes())) {
    return Backend::StoreKeysValues(k, v, head_dim, positions, inv_freq, k_rows, v_rows);
  }
  if (n == 0) return absl::OkStatus();
  absl::MutexLock lock(&mu_);
  MPLUS_RETURN_IF_ERROR(state_->Activate());
  MPLUS_ASSIGN_OR_RETURN(const int64_t* pos, DevicePositions(positions));
  MPLUS_CUDA_RETURN_IF_ERROR(
      LaunchStoreKeysValues(k.data_as<const float>(), v.data_as<const float>(), n, cols, head_dim,
                            pos, positions[0], inv_freq.data_as<const float>(), cache,
                            k_rows.data(), v_rows.data(), stream(), dependent(n)));
  return absl::OkStatus();
}

absl::Status CudaBackend::SiluMul(const Tensor& gate, const Tensor& up, const Tensor& out) {
  for (const Tensor* t : {&gate, &up, &out}) MPLUS_RETURN_IF_ERROR(CheckF32(*t, "SiluMul"));
  if (gate.numel() != up.numel() || out.numel() != gate.numel()) {
    return ShapeError("SiluMul", gate, up);
  }
  absl::MutexLock lock(&mu_);
  MPLUS_RETURN_IF_ERROR(state_->Activate());
  MPLUS_CUDA_RETURN_IF_ERROR(LaunchSiluMul(gate.data_as<const float>(), up.data_as<const float>(),
                                           out.data_as<float>(), gate.numel(), stream(),
                                           dependent(gate.rows())));
  return absl::OkStatus();
}

absl::Status CudaBackend::Silu(const Tensor& x) {
  MPLUS_RETURN_IF_ERROR(CheckF32(x, "Silu"));
  absl::MutexLock lock(&mu_);
  MPLUS_RETURN_IF_ERROR(state_->Activate());
  MPLUS_CUDA_RETURN_IF_ERROR(LaunchSilu(x.data_as<float>(), x.numel(), stream()));
  return absl::OkStatus();
}

absl::Status CudaBackend::Add(const Tensor& a, const Tensor& b, const Tensor& out) {
  for (const Tensor* t : {&a, &b, &out}) MPLUS_RETURN_IF_ERROR(CheckF32(*t, "Add"));
  if (a.numel() != b.numel() || out.numel() != a.numel()) return ShapeError("Add", a, b);
  absl::MutexLock lock(&mu_);
  MPLUS_RETURN_IF_ERROR(state_->Activate());
  MPLUS_CUDA_RETURN_IF_ERROR(LaunchAdd(a.data_as<const float>(), b.data_as<const float>(),
                                       out.data_as<float>(), a.numel(), stream()));
  return absl::OkStatus();
}

absl::Status CudaBackend::AddRow(const Tensor& x, const Tensor& row) {
  MPLUS_RETURN_IF_ERROR(CheckF32(x, "AddRow x"));
  MPLUS_RETURN_IF_ERROR(CheckFloat(row, "AddRow row"));
  const int64_t d = x.cols();
  if (row.numel() != d) return ShapeError("AddRow", x, row);
  absl::MutexLock lock(&mu_);
  MPLUS_RETURN_IF_ERROR(state_->Activate());
  MPLUS_CUDA_RETURN_IF_ERROR(
      LaunchAddRow(x.data_as<float>(), x.rows(), d, row.data(), row.dtype(), stream()));
  return absl::OkStatus();
}

absl::Status CudaBackend::Embedding(const Tensor& table, absl::Span<const int32_t> ids,
                                    const Tensor& out) {
  MPLUS_RETURN_IF_ERROR(CheckFloat(table, "Embedding table"));
  MPLUS_RETURN_IF_ERROR(CheckCuda(out, "Embedding out"));
  // F32 out widens; out in the table's own dtype is a plain row gather (e.g. bf16 rows copied
  // into a bf16 KV cache). Ids are checked here, on the host, so a bad one never reaches the GPU.
  MPLUS_RETURN_IF_ERROR(CheckEmbedding(table, ids, out));
  const int64_t d = table.cols();
  if (ids.empty()) return absl::OkStatus();
  absl::MutexLock lock(&mu_);
  MPLUS_RETURN_IF_ERROR(state_->Activate());
  MPLUS_ASSIGN_OR_RETURN(const int32_t* dev_ids, UploadIndices(ids));
  const int64_t n = static_cast<int64_t>(ids.size());
  if (out.dtype() == DType::kF32) {
    MPLUS_CUDA_RETURN_IF_ERROR(LaunchEmbedding(table.data(), table.dtype(), d, dev_ids, n,
                                               out.data_as<float>(), stream()));
  } else {
    MPLUS_CUDA_RETURN_IF_ERROR(
        LaunchGatherRows(table.data(), table.dtype(), d, dev_ids, n, out.data(), stream()));
  }
  return absl::OkStatus();
}

absl::StatusOr<GpuRetrievalScorer*> CudaBackend::Scorer() {
  absl::MutexLock lock(&scorer_mu_);
  if (scorer_ == nullptr) {
    MPLUS_ASSIGN_OR_RETURN(scorer_, GpuRetrievalScorer::Create(state_));
  }
  return scorer_.get();
}

absl::StatusOr<std::unique_ptr<RetrievalKeys>> CudaBackend::NewRetrievalKeys(int64_t key_dim,
                                                                             DType dtype) {
  MPLUS_ASSIGN_OR_RETURN(GpuRetrievalScorer * scorer, Scorer());
  MPLUS_ASSIGN_OR_RETURN(std::unique_ptr<DeviceRetrievalKeys> keys,
                         scorer->NewKeys(key_dim, dtype));
  return std::unique_ptr<RetrievalKeys>(std::move(keys));
}

absl::Status CudaBackend::SyncRetrievalKeys(RetrievalKeys& keys, const void* host_keys,
                                            int64_t rows, int64_t unchanged_rows) {
  auto* device_keys = dynamic_cast<DeviceRetrievalKeys*>(&keys);
  if (device_keys == nullptr) {
    return absl::InvalidArgumentError("SyncRetrievalKeys: keys were not made by a CUDA backend");
  }
  if (rows < 0 || unchanged_rows < 0 || unchanged_rows > rows) {
    return absl::InvalidArgumentError(
        absl::StrCat("SyncRetrievalKeys: ", unchanged_rows, " unchanged of ", rows, " rows"));
  }
  MPLUS_ASSIGN_OR_RETURN(GpuRetrievalScorer * scorer, Scorer());
  const int64_t keep = std::min(unchanged_rows, device_keys->size());
  scorer->Truncate(*device_keys, keep);
  // Through the pinned staging ring (on the scorer's stream, this backend's): a layer's keys
  // are ~77 MB at 150k bf16 keys, which a pageable copy moved at ~5 GB/s.
  return scorer->Append(*device_keys,
                        static_cast<const char*>(host_keys) + keep * device_keys->row_bytes(),
                        rows - keep, [this](const void* src, size_t bytes, void* dst) {
                          absl::MutexLock lock(&mu_);
                          return UploadBytes(src, bytes, dst);
                        });
}

absl::StatusOr<std::vector<int64_t>> CudaBackend::TopRetrievalKeys(const RetrievalKeys& keys,
                                                                   const Tensor& queries,
                                                                   int64_t k) {
  const auto* device_keys = dynamic_cast<const DeviceRetrievalKeys*>(&keys);
  if (device_keys == nullptr) {
    return absl::InvalidArgumentError("TopRetrievalKeys: keys were not made by a CUDA backend");
  }
  MPLUS_RETURN_IF_ERROR(CheckF32(queries, "TopRetrievalKeys"));
  if (queries.rows() < 1 || queries.cols() != device_keys->key_dim()) {
    return absl::InvalidArgumentError(absl::StrCat("TopRetrievalKeys: queries ",
                                                   ShapeString(queries), " for keys of ",
                                                   device_keys->key_dim(), " floats"));
  }
  MPLUS_ASSIGN_OR_RETURN(GpuRetrievalScorer * scorer, Scorer());
  return scorer->TopK(*device_keys, queries.data_as<float>(), queries.rows(), k,
                      GpuRetrievalScorer::QueriesOn::kDevice);
}

absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(int device_ordinal) {
  return CudaBackend::Create(device_ordinal);
}

namespace {

// `backend` as the CUDA backend, for the functions below that only it offers.
absl::StatusOr<CudaBackend*> AsCuda(const Backend& backend, const char* what) {
  auto* cuda = dynamic_cast<CudaBackend*>(const_cast<Backend*>(&backend));
  if (cuda == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": backend ", backend.name(), " is not a CUDA backend"));
  }
  return cuda;
}

}  // namespace

absl::StatusOr<CudaMemoryStats> GetCudaMemoryStats(const Backend& backend) {
  MPLUS_ASSIGN_OR_RETURN(CudaBackend * cuda, AsCuda(backend, "GetCudaMemoryStats"));
  return cuda->MemoryStats();
}

absl::StatusOr<double> GetCudaHostWaitSeconds(const Backend& backend) {
  MPLUS_ASSIGN_OR_RETURN(CudaBackend * cuda, AsCuda(backend, "GetCudaHostWaitSeconds"));
  return cuda->HostWaitSeconds();
}

absl::Status ResetCudaMemoryPeak(Backend& backend) {
  MPLUS_ASSIGN_OR_RETURN(CudaBackend * cuda, AsCuda(backend, "ResetCudaMemoryPeak"));
  cuda->ResetMemoryPeak();
  return absl::OkStatus();
}

}  // namespace mplus::engine::cuda
