#include "engine/cuda/pinned_staging.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/parallel_for.h"
#include "engine/cuda/cuda_status.h"
#include "engine/status_macros.h"

namespace mplus::engine::cuda {
namespace {

// Each copy starts its part of a buffer on a 256-byte boundary, where memcpy and the DMA engines
// are fastest; at most 255 bytes per copy go unused.
constexpr size_t kAlign = 256;
static_assert(PinnedStaging::kBufferBytes % kAlign == 0);

}  // namespace

// Invariant behind every reuse: all copies run on the one stream_, so the last record of a
// buffer's event completes only after every copy enqueued from that buffer before it (stream
// order). Once that event is complete, the whole buffer may be overwritten or freed.

absl::StatusOr<std::unique_ptr<PinnedStaging>> PinnedStaging::Create(
    std::shared_ptr<DeviceState> state) {
  MPLUS_CUDA_RETURN_IF_ERROR(cudaSetDevice(state->ordinal()));
  std::unique_ptr<PinnedStaging> staging(new PinnedStaging(std::move(state)));
  for (Buffer& b : staging->buffers_) {
    // On failure, the destructor frees the buffers made so far (none has a copy in flight).
    if (cudaError_t err = cudaHostAlloc(&b.host, kBufferBytes, cudaHostAllocDefault);
        err != cudaSuccess) {
      b.host = nullptr;
      // Clear the calling thread's last error, or the next kernel launch of this thread (the
      // launchers return cudaGetLastError) would report this handled failure as its own.
      cudaGetLastError();
      return absl::ResourceExhaustedError(absl::StrCat(
          "cudaHostAlloc of ", kNumBuffers, " x ", kBufferBytes, " pinned staging bytes failed: ",
          cudaGetErrorName(err), " (", cudaGetErrorString(err), ")"));
    }
    MPLUS_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&b.done, cudaEventDisableTiming));
  }
  return staging;
}

PinnedStaging::~PinnedStaging() {
  // Errors here have nobody to go to. A buffer is freed only once its event shows its copies are
  // done (an event never recorded counts as complete); otherwise it is leaked, since freeing
  // page-locked memory a DMA may still read is worse than losing it.
  const bool device_ok = cudaSetDevice(ordinal_) == cudaSuccess;
  for (Buffer& b : buffers_) {
    bool idle = device_ok && !b.in_doubt;
    if (b.done != nullptr) {
      idle = idle && cudaEventSynchronize(b.done) == cudaSuccess;
      if (device_ok) cudaEventDestroy(b.done);  // released once complete, if it is not yet
    }
    if (b.host != nullptr && idle) cudaFreeHost(b.host);
  }
}

absl::Status PinnedStaging::Advance() {
  const int next = (current_ + 1) % kNumBuffers;
  DeviceState::WaitScope wait(*state_);
  if (cudaError_t err = cudaEventSynchronize(buffers_[next].done); err != cudaSuccess) {
    // We cannot tell whether its copies have read the buffer: never touch it again.
    buffers_[next].in_doubt = true;
    broken_ = CudaError(err, "cudaEventSynchronize(staging buffer)", __FILE__, __LINE__);
    return broken_;
  }
  current_ = next;
  used_ = 0;
  return absl::OkStatus();
}

absl::Status PinnedStaging::Stage(const void* src, size_t bytes, void* dst) {
  if (bytes > 0 && src == nullptr) {
    return absl::InvalidArgumentError("PinnedStaging::Stage: null source");
  }
  const char* from = static_cast<const char*>(src);
  return StagePieces(
      bytes, 1,
      [&](char* pinned, size_t offset, size_t n) { ParallelCopy(pinned, from + offset, n); }, dst);
}

absl::Status PinnedStaging::StageRows(
    int64_t rows, size_t row_bytes,
    absl::FunctionRef<void(int64_t first, int64_t count, void* out)> fill, void* dst) {
  if (rows < 0 || row_bytes == 0 || row_bytes > kBufferBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("PinnedStaging::StageRows: ", rows, " rows of ", row_bytes, " bytes"));
  }
  return StagePieces(
      static_cast<size_t>(rows) * row_bytes, row_bytes,
      [&](char* pinned, size_t offset, size_t n) {
        fill(static_cast<int64_t>(offset / row_bytes), static_cast<int64_t>(n / row_bytes), pinned);
      },
      dst);
}

absl::Status PinnedStaging::StagePieces(
    size_t bytes, size_t granule,
    absl::FunctionRef<void(char* pinned, size_t offset, size_t n)> fill, void* dst) {
  if (bytes == 0) return absl::OkStatus();  // also keeps memcpy away from null pointers
  if (dst == nullptr) {
    return absl::InvalidArgumentError("PinnedStaging::Stage: null destination");
  }
  if (!broken_.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("pinned staging unusable after an earlier CUDA error: ", broken_.message()));
  }
  MPLUS_CUDA_RETURN_IF_ERROR(cudaSetDevice(ordinal_));
  char* to = static_cast<char*>(dst);
  size_t offset = 0;
  while (offset < bytes) {
    // A piece is whole granules; a buffer with less than one left is passed over.
    if (kBufferBytes - used_ < std::min(granule, bytes - offset)) MPLUS_RETURN_IF_ERROR(Advance());
    Buffer& b = buffers_[current_];
    // [used_, kBufferBytes) of the current buffer: no copy enqueued this round reads it, and
    // Advance waited for the previous round's copies when the ring entered this buffer.
    char* pinned = static_cast<char*>(b.host) + used_;
    const size_t n = std::min(bytes - offset, (kBufferBytes - used_) / granule * granule);
    fill(pinned, offset, n);
    // A failed enqueue leaves nothing reading the buffer: the bytes may be overwritten.
    MPLUS_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(to + offset, pinned, n, cudaMemcpyHostToDevice, stream_));
    if (cudaError_t err = cudaEventRecord(b.done, stream_); err != cudaSuccess) {
      // The copy is enqueued, but no event tells when it has read the buffer.
      b.in_doubt = true;
      broken_ = CudaError(err, "cudaEventRecord(staging buffer)", __FILE__, __LINE__);
      return broken_;
    }
    used_ = (used_ + n + kAlign - 1) / kAlign * kAlign;  // <= kBufferBytes (static_assert)
    offset += n;
  }
  return absl::OkStatus();
}

}  // namespace mplus::engine::cuda
