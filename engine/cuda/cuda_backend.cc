#include "engine/cuda/cuda_backend.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <string>
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
absl::Status CheckF32(const Tensor& t, const char* what) {
  return engine::CheckF32(t, Device::kCuda, what);
}
absl::Status CheckFloat(const Tensor& t, const char* what) {
  return engine::CheckFloat(t, Device::kCuda, what);
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
  absl::Status CopyFromHost(const void* src, DType src_dtype, const Tensor& dst) override;
  absl::Status CopyToHost(const Tensor& src, void* dst) override;
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
                          float scale, const Tensor& out) override;
  absl::Status StoreKeysValues(const Tensor& k, const Tensor& v, int64_t head_dim,
                               absl::Span<const int64_t> positions, const Tensor& inv_freq,
                               const Tensor& k_rows, const Tensor& v_rows) override;
  absl::Status SiluMul(const Tensor& gate, const Tensor& up, const Tensor& out) override;
  absl::Status Silu(const Tensor& x) override;
  absl::Status Add(const Tensor& a, const Tensor& b, const Tensor& out) override;
  absl::Status AddRow(const Tensor& x, const Tensor& row) override;
  absl::Status Embedding(const Tensor& table, absl::Span<const int32_t> ids,
                         const Tensor& out) override;

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

  cudaStream_t stream() const { return state_->stream(); }
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
  // into wait_ns_.
  cudaError_t WaitForStream(const void* src = nullptr, size_t bytes = 0, void* dst = nullptr);
  // Copy between different dtypes (float32 <-> bfloat16 only); takes mu_.
  absl::Status ConvertingCopy(const Tensor& src, const Tensor& dst);

  const std::shared_ptr<DeviceState> state_;
  int num_sms_ = 0;
  std::atomic<int64_t> wait_ns_{0};
  mutable absl::Mutex mu_;
  std::shared_ptr<void> gemm_workspace_;
  std::unique_ptr<LtGemm> gemm_ ABSL_GUARDED_BY(mu_);
  ScratchBuffer convert_ ABSL_GUARDED_BY(mu_);    // bf16 activations, widened weights
  ScratchBuffer attention_ ABSL_GUARDED_BY(mu_);  // split-key partial results
  ScratchBuffer indices_ ABSL_GUARDED_BY(mu_);    // positions, token ids
  // Host-to-device copies; null when no pinned memory could be had (UploadBytes then waits).
  std::unique_ptr<PinnedStaging> staging_ ABSL_GUARDED_BY(mu_);
  absl::Mutex scorer_mu_;
  std::unique_ptr<GpuRetrievalScorer> scorer_ ABSL_GUARDED_BY(scorer_mu_);
};

absl::StatusOr<std::unique_ptr<Backend>> CudaBackend::Create(int ordinal) {
  MPLUS_ASSIGN_OR_RETURN(std::shared_ptr<DeviceState> state, DeviceState::Create(ordinal));
  std::unique_ptr<CudaBackend> backend(new CudaBackend(state));
  MPLUS_CUDA_RETURN_IF_ERROR(
      cudaDeviceGetAttribute(&backend->num_sms_, cudaDevAttrMultiProcessorCount, ordinal));
  MPLUS_ASSIGN_OR_RETURN(backend->gemm_workspace_,
                         DeviceState::Alloc(state, kGemmWorkspaceBytes, MemCategory::kWorkspace));
  absl::MutexLock lock(&backend->mu_);
  MPLUS_ASSIGN_OR_RETURN(backend->gemm_,
                         LtGemm::Create(backend->gemm_workspace_.get(), kGemmWorkspaceBytes));
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

absl::StatusOr<Tensor> CudaBackend::UploadWeight(const TensorView& view) {
  if (view.data == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("UploadWeight: ", view.name, " has no data"));
  }
  if (!IsFloatDType(view.dtype)) {
    return absl::InvalidArgumentError(
        absl::StrCat("UploadWeight: ", view.name, " has dtype ", DTypeName(view.dtype)));
  }
  // float16 is widened once here (see the header) so MatMul never sees it.
  const DType dtype = view.dtype == DType::kF16 ? DType::kF32 : view.dtype;
  const int64_t numel = view.numel();
  if (view.nbytes != static_cast<size_t>(numel) * DTypeSize(view.dtype)) {
    return absl::InvalidArgumentError(absl::StrCat("UploadWeight: ", view.name, " has ",
                                                   view.nbytes, " bytes for ", numel, " elements"));
  }
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

absl::Status CudaBackend::CopyFromHost(const void* src, DType src_dtype, const Tensor& dst) {
  MPLUS_RETURN_IF_ERROR(CheckCuda(dst, "CopyFromHost"));
  absl::MutexLock lock(&mu_);
  MPLUS_RETURN_IF_ERROR(state_->Activate());
  if (src_dtype == dst.dtype()) return UploadBytes(src, dst.nbytes(), dst.data());
  if (dst.dtype() != DType::kF32 || !IsFloatDType(src_dtype)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "CopyFromHost: cannot convert ", DTypeName(src_dtype), " to ", DTypeName(dst.dtype())));
  }
  return UploadWidened(src, src_dtype, dst.numel(), dst.data_as<float>());
}

cudaError_t CudaBackend::WaitForStream(const void* src, size_t bytes, void* dst) {
  DeviceState::WaitScope wait(*state_);
  const auto start = std::chrono::steady_clock::now();
  cudaError_t err = cudaSuccess;
  // Into pageable memory the copy itself waits for the stream: both count as waiting.
  if (bytes > 0) err = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream());
  if (err == cudaSuccess) err = cudaStreamSynchronize(stream());
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

// float32 <-> bfloat16 (a bf16 KV cache written from float32 projections, or read back): one
// element-wise kernel from src into dst, which is why the two must not share bytes.
absl::Status CudaBackend::ConvertingCopy(const Tensor& src, const Tensor& dst) {
  const bool to_bf16 = src.dtype() == DType::kF32 && dst.dtype() == DType::kBF16;
  const bool to_f32 = src.dtype() == DType::kBF16 && dst.dtype() == DType::kF32;
  if (!to_bf16 && !to_f32) {
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
  if (to_bf16) {
    MPLUS_CUDA_RETURN_IF_ERROR(
        LaunchF32ToBF16(src.data_as<const float>(), n, dst.data_as<uint16_t>(), stream()));
  } else {
    MPLUS_CUDA_RETURN_IF_ERROR(
        LaunchWidenToF32(src.data(), DType::kBF16, n, dst.data_as<float>(), stream()));
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
        MPLUS_CUDA_RETURN_IF_ERROR(LaunchGemvBf16(x.data_as<const float>(),
                                                  w.data_as<const uint16_t>(), d, n, m, k, alpha,
                                                  accumulate, GemvLora{}, num_sms_, stream()));
        return absl::OkStatus();
      }
      MPLUS_ASSIGN_OR_RETURN(void* xb, convert_.Get(static_cast<size_t>(n * k) * 2));
      MPLUS_CUDA_RETURN_IF_ERROR(
          LaunchF32ToBF16(x.data_as<const float>(), n * k, static_cast<uint16_t*>(xb), stream()));
      return gemm_->Run(DType::kBF16, xb, w.data(), d, n, m, k, alpha, beta, stream());
    }
    case DType::kF16: {
      // Only tensors that bypassed UploadWeight get here: widen per call (slow path).
      MPLUS_ASSIGN_OR_RETURN(void* wf, convert_.Get(static_cast<size_t>(m * k) * sizeof(float)));
      MPLUS_CUDA_RETURN_IF_ERROR(
          LaunchWidenToF32(w.data(), DType::kF16, m * k, static_cast<float*>(wf), stream()));
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
                                           n, d, eps, out.data_as<float>(), stream()));
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
  MPLUS_RETURN_IF_ERROR(CheckF32(x, "Rope x"));
  MPLUS_RETURN_IF_ERROR(CheckF32(inv_freq, "Rope inv_freq"));
  const int64_t n = x.rows(), cols = x.cols(), half = head_dim / 2;
  if (head_dim <= 0 || head_dim % 2 != 0 || cols % head_dim != 0 || inv_freq.numel() != half ||
      static_cast<int64_t>(positions.size()) != n) {
    return absl::InvalidArgumentError(absl::StrCat("Rope: x ", ShapeString(x), ", head_dim ",
                                                   head_dim, ", ", positions.size(),
                                                   " positions, inv_freq ", inv_freq.numel()));
  }
  if (n == 0) return absl::OkStatus();
  absl::MutexLock lock(&mu_);
  MPLUS_RETURN_IF_ERROR(state_->Activate());
  MPLUS_ASSIGN_OR_RETURN(const int64_t* pos, DevicePositions(positions));
  MPLUS_CUDA_RETURN_IF_ERROR(LaunchRope(x.data_as<float>(), n, cols, head_dim, pos, positions[0],
                                        inv_freq.data_as<const float>(), stream()));
  return absl::OkStatus();
}

absl::Status CudaBackend::Attention(const Tensor& q, const Tensor& k, const Tensor& v,
                                    int64_t num_heads, int64_t num_kv_heads, int64_t head_dim,
                                    const Tensor& out) {
  for (const Tensor* t : {&q, &out}) MPLUS_RETURN_IF_ERROR(CheckF32(*t, "Attention"));
  for (const Tensor* t : {&k, &v}) MPLUS_RETURN_IF_ERROR(CheckCuda(*t, "Attention"));
  // bf16 K/V: a bfloat16 KV cache read in place (widened in the kernel's tile loads).
  const DType kv_dtype = k.dtype();
  if ((kv_dtype != DType::kF32 && kv_dtype != DType::kBF16) || v.dtype() != kv_dtype) {
    return absl::InvalidArgumentError(
        absl::StrCat("Attention: K and V must both be F32 or both BF16, got ", DTypeName(kv_dtype),
                     " and ", DTypeName(v.dtype())));
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
  if (nq == 0) return absl::OkStatus();
  const AttentionShape shape{nq, nk, num_heads, num_kv_heads, head_dim};
  const int splits = AttentionSplits(shape, num_sms_);
  absl::MutexLock lock(&mu_);
  MPLUS_RETURN_IF_ERROR(state_->Activate());
  void* ws = nullptr;
  if (const size_t bytes = AttentionWorkspaceBytes(shape, splits); bytes > 0) {
    MPLUS_ASSIGN_OR_RETURN(ws, attention_.Get(bytes));
  }
  MPLUS_CUDA_RETURN_IF_ERROR(LaunchAttention(q.data_as<const float>(), k.data(), v.data(), kv_dtype,
                                             out.data_as<float>(), shape, splits, ws, stream()));
  return absl::OkStatus();
}

// Decode's LoRA linears (a few rows, bf16 weights): the B term rides in the epilogue of the
// base GEMV, two launches instead of three. Anything else, and every error, goes the composed way.
absl::Status CudaBackend::LoraMatMul(const Tensor& x, const Tensor& w, const Tensor& a,
                                     const Tensor& b, float scale, const Tensor& out) {
  const int64_t n = x.rows(), k = x.cols(), m = w.rows(), r = a.rows();
  bool fused = x.dtype() == DType::kF32 && out.dtype() == DType::kF32 &&
               w.dtype() == DType::kBF16 && a.dtype() == DType::kBF16 &&
               b.dtype() == DType::kBF16 && n > 0 && m > 0 && r > 0 && w.cols() == k &&
               a.cols() == k && b.rows() == m && b.cols() == r && out.rows() == n &&
               out.cols() == m && GemvSupported(n, k, x.data(), w.data()) &&
               GemvSupported(n, k, x.data(), a.data());
  for (const Tensor* t : {&x, &w, &a, &b, &out}) fused = fused && t->device() == Device::kCuda;
  if (!fused || Overlap(x.data(), x.nbytes(), out.data(), out.nbytes())) {
    return Backend::LoraMatMul(x, w, a, b, scale, out);
  }
  MPLUS_ASSIGN_OR_RETURN(Tensor t, Allocate(DType::kF32, {n, r}));
  absl::MutexLock lock(&mu_);
  MPLUS_RETURN_IF_ERROR(state_->Activate());
  MPLUS_CUDA_RETURN_IF_ERROR(LaunchGemvBf16(x.data_as<const float>(), a.data_as<const uint16_t>(),
                                            t.data_as<float>(), n, r, k, 1.0f, false, GemvLora{},
                                            num_sms_, stream()));
  const GemvLora lora{t.data_as<const float>(), b.data_as<const uint16_t>(), r, scale};
  MPLUS_CUDA_RETURN_IF_ERROR(LaunchGemvBf16(x.data_as<const float>(), w.data_as<const uint16_t>(),
                                            out.data_as<float>(), n, m, k, 1.0f, false, lora,
                                            num_sms_, stream()));
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
               inv_freq.dtype() == DType::kF32 && (cache == DType::kF32 || cache == DType::kBF16) &&
               v_rows.dtype() == cache && v.rows() == n && v.cols() == cols &&
               k_rows.numel() == n * cols && v_rows.numel() == n * cols && head_dim > 0 &&
               head_dim % 2 == 0 && cols % head_dim == 0 && inv_freq.numel() == head_dim / 2 &&
               static_cast<int64_t>(positions.size()) == n;
  for (const Tensor* t : {&k, &v, &inv_freq, &k_rows, &v_rows}) {
    fused = fused && t->device() == Device::kCuda;
  }
  // In place is fine (each element is read before it is written, by the same thread); other
  // overlaps are not.
  const auto bad_overlap = [](const Tensor& src, const Tensor& dst) {
    return src.data() != dst.data() && Overlap(src.data(), src.nbytes(), dst.data(), dst.nbytes());
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
  MPLUS_CUDA_RETURN_IF_ERROR(LaunchStoreKeysValues(
      k.data_as<const float>(), v.data_as<const float>(), n, cols, head_dim, pos, positions[0],
      inv_freq.data_as<const float>(), cache, k_rows.data(), v_rows.data(), stream()));
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
                                           out.data_as<float>(), gate.numel(), stream()));
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
  return scorer->Append(*device_keys,
                        static_cast<const char*>(host_keys) + keep * device_keys->row_bytes(),
                        rows - keep);
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
