// Stream-ordered device allocations with per-category accounting, shared by the CUDA backend
// and the deleters of the tensors it hands out (which may outlive the backend object).
#ifndef MPLUS_ENGINE_CUDA_DEVICE_MEMORY_H_
#define MPLUS_ENGINE_CUDA_DEVICE_MEMORY_H_

#include <cuda_runtime_api.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace mplus::engine::cuda {

enum class MemCategory : int { kWeights = 0, kWorkspace = 1, kOther = 2 };

class DeviceState;

// The device memory of one recording (CudaBackend::Record): while a thread records, every
// non-weight block it allocates on the arena's device comes from here, and stays reserved for as
// long as the recording may be replayed (the arena lives until its recording and every tensor
// from it are gone). A block freed while recording is reused by later allocations of the same
// recording only: its ops replay in recorded order, so that reuse is as safe as stream order.
// Blocks count as workspace.
class RecordingArena : public std::enable_shared_from_this<RecordingArena> {
 public:
  explicit RecordingArena(std::shared_ptr<DeviceState> state) : state_(std::move(state)) {}
  ~RecordingArena();  // frees every block, ordered after what the stream holds
  RecordingArena(const RecordingArena&) = delete;
  RecordingArena& operator=(const RecordingArena&) = delete;

  // Makes `arena` the calling thread's arena for its lifetime (then the previous one again).
  class Scope {
   public:
    explicit Scope(RecordingArena* arena);
    ~Scope();
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

   private:
    RecordingArena* previous_;
  };
  // The calling thread's arena for `state`'s device, or null.
  static RecordingArena* Current(const DeviceState* state);

  int64_t bytes() const;
  absl::StatusOr<std::shared_ptr<void>> Alloc(size_t bytes);

 private:
  const std::shared_ptr<DeviceState> state_;
  mutable absl::Mutex mu_;
  std::vector<std::pair<void*, size_t>> blocks_ ABSL_GUARDED_BY(mu_);
  std::map<size_t, std::vector<void*>> free_ ABSL_GUARDED_BY(mu_);  // by block size
};

// One device and its compute stream. Memory comes from the device's stream-ordered pool on that
// stream, so freeing a buffer never waits for the GPU and never races work already enqueued.
// Small activations (a decode step allocates and frees ~20 per layer) are kept on free lists by
// power-of-two size instead of going back to the pool: cudaMallocAsync + cudaFreeAsync cost the
// host microseconds each. Reuse is as stream-ordered as the pool's, all work being on stream().
// Kept blocks are accounted as workspace.
class DeviceState {
 public:
  static absl::StatusOr<std::shared_ptr<DeviceState>> Create(int ordinal);
  ~DeviceState();  // waits for the stream, then destroys it
  DeviceState(const DeviceState&) = delete;
  DeviceState& operator=(const DeviceState&) = delete;

  int ordinal() const { return ordinal_; }
  cudaStream_t stream() const { return stream_; }
  // Makes this device current for the calling thread.
  absl::Status Activate() const;

  // `bytes` (at least 1) of device memory accounted to `category`; freed (stream-ordered) when
  // the last copy of the pointer goes away. From the thread's RecordingArena while it records.
  static absl::StatusOr<std::shared_ptr<void>> Alloc(const std::shared_ptr<DeviceState>& self,
                                                     size_t bytes, MemCategory category);

  int64_t bytes(MemCategory category) const {
    return bytes_[static_cast<int>(category)].load(std::memory_order_relaxed);
  }
  int64_t peak_bytes() const { return peak_.load(std::memory_order_relaxed); }
  // Starts a new peak from what is held now (to measure one phase, e.g. one session).
  void ResetPeak() {
    peak_.store(total_.load(std::memory_order_relaxed), std::memory_order_relaxed);
  }
  // The first error a deleter hit (deleters cannot return one); reported by Synchronize.
  absl::Status TakeDeferredError();
  // Whether `ptr` lies in live weight memory (no kernel writes it: a GEMV may read it before
  // waiting for the kernel ahead, dependent_launch.cuh).
  bool HoldsWeights(const void* ptr) const;

  // Marks the host as waiting for this device while it lives (Backend::DeviceWaitSeconds).
  class WaitScope {
   public:
    explicit WaitScope(DeviceState& state);
    ~WaitScope();
    WaitScope(const WaitScope&) = delete;
    WaitScope& operator=(const WaitScope&) = delete;

   private:
    DeviceState& state_;
    bool owner_ = false;  // the oldest wait in progress: clears the mark when it ends
  };
  // cudaStreamSynchronize(stream()) under a WaitScope.
  cudaError_t SynchronizeStream();
  // How long the oldest wait in progress has lasted, in seconds; 0 when none.
  double WaitSeconds() const;

 private:
  friend class RecordingArena;
  explicit DeviceState(int ordinal) : ordinal_(ordinal) {}
  void Account(MemCategory category, int64_t delta);
  void Defer(absl::Status status);
  // A kept block of size class `cls` (bytes 256 << cls), or null.
  void* TakeKept(int cls);
  // Keeps `ptr` for reuse; false when its class's list is full (the caller frees it).
  bool Keep(int cls, void* ptr);

  static constexpr int kSizeClasses = 13;  // 256 B .. 1 MiB
  static constexpr int kKeptPerClass = 32;

  const int ordinal_;
  cudaStream_t stream_ = nullptr;
  std::atomic<int64_t> bytes_[3] = {0, 0, 0};
  std::atomic<int64_t> total_{0}, peak_{0};
  std::atomic<int64_t> wait_since_ns_{0};  // steady clock; 0: no wait in progress
  mutable absl::Mutex mu_;
  absl::Status deferred_ ABSL_GUARDED_BY(mu_);
  std::map<uintptr_t, size_t> weight_ranges_ ABSL_GUARDED_BY(mu_);  // start -> bytes
  absl::Mutex kept_mu_;
  std::vector<void*> kept_[kSizeClasses] ABSL_GUARDED_BY(kept_mu_);
};

// A growable device buffer (op scratch). Growing frees the old buffer stream-ordered, so work
// already enqueued on the stream keeps a valid pointer. While the calling thread records, Get
// hands out a block of the recording's arena instead (the shared buffer may be regrown, and
// freed, while the recording is still replayed), held until the next Get or EndRecording.
class ScratchBuffer {
 public:
  ScratchBuffer(std::shared_ptr<DeviceState> state, MemCategory category)
      : state_(std::move(state)), category_(category) {}
  absl::StatusOr<void*> Get(size_t bytes);
  void EndRecording() { recorded_.reset(); }

 private:
  std::shared_ptr<DeviceState> state_;
  MemCategory category_;
  std::shared_ptr<void> mem_;
  size_t bytes_ = 0;
  std::shared_ptr<void> recorded_;
};

}  // namespace mplus::engine::cuda

#endif  // MPLUS_ENGINE_CUDA_DEVICE_MEMORY_H_
