// Host-to-device copies through a ring of pinned (page-locked) host buffers, so that a copy
// returns as soon as the caller's bytes are in pinned memory instead of waiting for the GPU.
//
// What this buys, exactly: cudaMemcpyAsync from pinned memory is asynchronous to the host, so
// Stage memcpys the caller's bytes into a ring buffer (CPU; on several threads for megabytes,
// common/parallel_for.h), enqueues the pinned -> device DMA on the stream and returns. The caller
// may then overwrite or free its memory, and the host goes on with its own work (long-term
// selection, fetching the next vectors, the next staging memcpy, enqueueing later kernels) while
// the GPU is still computing what was enqueued before. Copying from pageable memory and then
// synchronising the stream instead makes the host wait for all earlier GPU work at every copy.
//
// What it does not buy: the DMA does not overlap the kernels enqueued before it. The copies go
// on the compute stream itself. A separate copy stream would not help: a destination may still
// be read by kernels enqueued earlier (the same rows of the `seq` tensor are rewritten for every
// layer while the previous layer's kernels read them), so a copy there would first have to wait
// for an event recorded on the compute stream when the copy is enqueued, which orders it after
// all earlier compute, the same place it takes on the compute stream. Being on the compute
// stream also orders the copy before any later work that reads its destination (no RAW hazard)
// and after earlier work that reads or writes it (no WAR/WAW hazard), with no extra events.
//
// The host still waits (1) when it reaches a ring buffer whose previous copies the GPU has not
// yet reached, i.e. when more than about kTotalBytes are staged ahead of the GPU, and (2) at the
// caller's own synchronisation points (CopyToHost, Synchronize).
//
// Thread-safety: none; the owner serialises calls (the CUDA backend holds its mutex).
#ifndef MPLUS_ENGINE_CUDA_PINNED_STAGING_H_
#define MPLUS_ENGINE_CUDA_PINNED_STAGING_H_

#include <cuda_runtime_api.h>

#include <array>
#include <cstddef>
#include <memory>
#include <utility>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/cuda/device_memory.h"

namespace mplus::engine::cuda {

class PinnedStaging {
 public:
  // Sizing: an mplus-8b generate uploads 2560 retrieved rows x 4096 float32 = 40 MiB per layer.
  // The ring holds one layer's upload plus the short-term rows, so staging layer l+1 only reuses
  // buffers of layer l's copies, which the GPU has finished by then whenever the host
  // synchronised in between (retrieval reads the layer's queries or top-k back). Four buffers
  // make the reuse wait a quarter of the ring; 64 MiB of page-locked memory per GPU is small
  // next to a GPU server's host memory.
  static constexpr size_t kBufferBytes = size_t{16} << 20;
  static constexpr int kNumBuffers = 4;
  static constexpr size_t kTotalBytes = kBufferBytes * kNumBuffers;

  // A ring for copies on the stream of `state` (whose stream must outlive the ring: the
  // destructor waits for the ring's events). ResourceExhausted when the pinned memory cannot be
  // allocated (e.g. a page-locking limit): the caller can still copy without it.
  static absl::StatusOr<std::unique_ptr<PinnedStaging>> Create(std::shared_ptr<DeviceState> state);
  // Waits for the copies still reading the buffers, then frees them.
  ~PinnedStaging();
  PinnedStaging(const PinnedStaging&) = delete;
  PinnedStaging& operator=(const PinnedStaging&) = delete;

  // Copies `bytes` of host `src` to device `dst`, enqueued on the stream in order (chunks of at
  // most kBufferBytes). Returns once `src` has been read: the caller may reuse it right away.
  // Work enqueued on the stream afterwards sees the data. After a CUDA failure that leaves a
  // buffer's use unknown, every later call fails (FailedPrecondition) rather than risk
  // overwriting bytes a copy may still read.
  absl::Status Stage(const void* src, size_t bytes, void* dst);
  // The same for `rows` rows of `row_bytes` (at most kBufferBytes) that `fill(first, count,
  // out)` writes, packed, straight into the ring (a gather needs no host buffer of its own).
  absl::Status StageRows(int64_t rows, size_t row_bytes,
                         absl::FunctionRef<void(int64_t first, int64_t count, void* out)> fill,
                         void* dst);

 private:
  struct Buffer {
    void* host = nullptr;        // kBufferBytes of pinned memory
    cudaEvent_t done = nullptr;  // recorded after each copy out of `host`
    bool in_doubt = false;       // a copy may read `host` with no event covering it
  };

  explicit PinnedStaging(std::shared_ptr<DeviceState> state)
      : state_(std::move(state)), ordinal_(state_->ordinal()), stream_(state_->stream()) {}
  // Moves to the next buffer once its previous copies are done.
  absl::Status Advance();
  // Stage's loop: `bytes` in pieces of whole `granule`s, each written into the ring by
  // `fill(pinned, offset, n)` and copied to dst + offset.
  absl::Status StagePieces(size_t bytes, size_t granule,
                           absl::FunctionRef<void(char* pinned, size_t offset, size_t n)> fill,
                           void* dst);

  const std::shared_ptr<DeviceState> state_;  // marks the host's waits (stall watchdog)
  const int ordinal_;
  const cudaStream_t stream_;
  std::array<Buffer, kNumBuffers> buffers_;
  int current_ = 0;
  size_t used_ = 0;  // bytes of buffers_[current_] handed out this round
  absl::Status broken_;
};

}  // namespace mplus::engine::cuda

#endif  // MPLUS_ENGINE_CUDA_PINNED_STAGING_H_
