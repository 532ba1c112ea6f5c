#include "engine/cuda/device_memory.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <utility>

#include "engine/cuda/cuda_status.h"
#include "engine/cuda/device_info.h"
#include "engine/status_macros.h"

namespace mplus::engine::cuda {

absl::StatusOr<std::shared_ptr<DeviceState>> DeviceState::Create(int ordinal) {
  MPLUS_RETURN_IF_ERROR(GetDeviceInfo(ordinal).status());
  std::shared_ptr<DeviceState> state(new DeviceState(ordinal));
  MPLUS_RETURN_IF_ERROR(state->Activate());
  MPLUS_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&state->stream_, cudaStreamNonBlocking));
  // Keep freed blocks in the pool: a forward pass allocates and frees activations every step.
  cudaMemPool_t pool = nullptr;
  MPLUS_CUDA_RETURN_IF_ERROR(cudaDeviceGetDefaultMemPool(&pool, ordinal));
  uint64_t threshold = UINT64_MAX;
  MPLUS_CUDA_RETURN_IF_ERROR(
      cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold));
  return state;
}

DeviceState::~DeviceState() {
  if (stream_ == nullptr) return;
  // Errors here have nobody to go to; the process is tearing the device state down.
  cudaSetDevice(ordinal_);
  for (std::vector<void*>& blocks : kept_) {
    for (void* p : blocks) cudaFreeAsync(p, stream_);
  }
  cudaStreamSynchronize(stream_);
  cudaStreamDestroy(stream_);
}

absl::Status DeviceState::Activate() const {
  MPLUS_CUDA_RETURN_IF_ERROR(cudaSetDevice(ordinal_));
  return absl::OkStatus();
}

void DeviceState::Account(MemCategory category, int64_t delta) {
  bytes_[static_cast<int>(category)].fetch_add(delta, std::memory_order_relaxed);
  const int64_t total = total_.fetch_add(delta, std::memory_order_relaxed) + delta;
  int64_t peak = peak_.load(std::memory_order_relaxed);
  while (total > peak && !peak_.compare_exchange_weak(peak, total, std::memory_order_relaxed)) {
  }
}

void DeviceState::Defer(absl::Status status) {
  absl::MutexLock lock(&mu_);
  if (deferred_.ok()) deferred_ = std::move(status);
}

namespace {
int64_t SteadyNanos() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}
}  // namespace

DeviceState::WaitScope::WaitScope(DeviceState& state) : state_(state) {
  int64_t none = 0;
  owner_ = state_.wait_since_ns_.compare_exchange_strong(none, std::max<int64_t>(SteadyNanos(), 1));
}

DeviceState::WaitScope::~WaitScope() {
  if (owner_) state_.wait_since_ns_.store(0);
}

cudaError_t DeviceState::SynchronizeStream() {
  WaitScope wait(*this);
  return cudaStreamSynchronize(stream_);
}

double DeviceState::WaitSeconds() const {
  const int64_t since = wait_since_ns_.load();
  return since == 0 ? 0.0 : static_cast<double>(SteadyNanos() - since) / 1e9;
}

absl::Status DeviceState::TakeDeferredError() {
  absl::MutexLock lock(&mu_);
  return std::exchange(deferred_, absl::OkStatus());
}

void* DeviceState::TakeKept(int cls) {
  absl::MutexLock lock(&kept_mu_);
  if (kept_[cls].empty()) return nullptr;
  void* ptr = kept_[cls].back();
  kept_[cls].pop_back();
  Account(MemCategory::kWorkspace, -static_cast<int64_t>(size_t{256} << cls));
  return ptr;
}

bool DeviceState::Keep(int cls, void* ptr) {
  absl::MutexLock lock(&kept_mu_);
  if (kept_[cls].size() >= kKeptPerClass) return false;
  kept_[cls].push_back(ptr);
  Account(MemCategory::kWorkspace, static_cast<int64_t>(size_t{256} << cls));
  return true;
}

namespace {
thread_local RecordingArena* current_arena = nullptr;
}  // namespace

RecordingArena::Scope::Scope(RecordingArena* arena) : previous_(current_arena) {
  current_arena = arena;
}
RecordingArena::Scope::~Scope() { current_arena = previous_; }

RecordingArena* RecordingArena::Current(const DeviceState* state) {
  return current_arena != nullptr && current_arena->state_.get() == state ? current_arena : nullptr;
}

RecordingArena::~RecordingArena() {
  absl::MutexLock lock(&mu_);
  if (blocks_.empty()) return;
  cudaError_t err = cudaSetDevice(state_->ordinal_);
  for (const auto& [ptr, size] : blocks_) {
    if (err == cudaSuccess) err = cudaFreeAsync(ptr, state_->stream_);
    state_->Account(MemCategory::kWorkspace, -static_cast<int64_t>(size));
  }
  if (err != cudaSuccess) state_->Defer(CudaError(err, "cudaFreeAsync", __FILE__, __LINE__));
}

int64_t RecordingArena::bytes() const {
  absl::MutexLock lock(&mu_);
  int64_t total = 0;
  for (const auto& block : blocks_) total += static_cast<int64_t>(block.second);
  return total;
}

absl::StatusOr<std::shared_ptr<void>> RecordingArena::Alloc(size_t bytes) {
  size_t size = 256;  // powers of two, so that freed blocks fit later requests
  while (size < bytes) size *= 2;
  void* ptr = nullptr;
  {
    absl::MutexLock lock(&mu_);
    std::vector<void*>& free = free_[size];
    if (!free.empty()) {
      ptr = free.back();
      free.pop_back();
    } else {
      // On the compute stream, which is not the one being recorded: a real allocation.
      MPLUS_CUDA_RETURN_IF_ERROR(cudaMallocAsync(&ptr, size, state_->stream_));
      blocks_.emplace_back(ptr, size);
      state_->Account(MemCategory::kWorkspace, static_cast<int64_t>(size));
    }
  }
  return std::shared_ptr<void>(ptr, [arena = shared_from_this(), size](void* p) {
    absl::MutexLock lock(&arena->mu_);
    arena->free_[size].push_back(p);
  });
}

absl::StatusOr<std::shared_ptr<void>> DeviceState::Alloc(const std::shared_ptr<DeviceState>& self,
                                                         size_t bytes, MemCategory category) {
  bytes = std::max<size_t>(bytes, 1);
  if (RecordingArena* arena = RecordingArena::Current(self.get());
      arena != nullptr && category != MemCategory::kWeights) {
    return arena->Alloc(bytes);
  }
  int cls = -1;  // size class of a small non-weight block
  if (category != MemCategory::kWeights && bytes <= (size_t{256} << (kSizeClasses - 1))) {
    cls = 0;
    while ((size_t{256} << cls) < bytes) ++cls;
    bytes = size_t{256} << cls;
  }
  void* ptr = cls >= 0 ? self->TakeKept(cls) : nullptr;
  if (ptr == nullptr) MPLUS_CUDA_RETURN_IF_ERROR(cudaMallocAsync(&ptr, bytes, self->stream_));
  self->Account(category, static_cast<int64_t>(bytes));
  const bool weights = category == MemCategory::kWeights;
  if (weights) {
    absl::MutexLock lock(&self->mu_);
    self->weight_ranges_[reinterpret_cast<uintptr_t>(ptr)] = bytes;
  }
  return std::shared_ptr<void>(ptr, [self, bytes, category, cls, weights](void* p) {
    self->Account(category, -static_cast<int64_t>(bytes));
    if (weights) {
      absl::MutexLock lock(&self->mu_);
      self->weight_ranges_.erase(reinterpret_cast<uintptr_t>(p));
    }
    if (cls >= 0 && self->Keep(cls, p)) return;
    cudaError_t err = cudaSetDevice(self->ordinal_);
    if (err == cudaSuccess) err = cudaFreeAsync(p, self->stream_);
    if (err != cudaSuccess) self->Defer(CudaError(err, "cudaFreeAsync", __FILE__, __LINE__));
  });
}

bool DeviceState::HoldsWeights(const void* ptr) const {
  const auto at = reinterpret_cast<uintptr_t>(ptr);
  absl::MutexLock lock(&mu_);
  auto it = weight_ranges_.upper_bound(at);
  if (it == weight_ranges_.begin()) return false;
  --it;
  return at < it->first + it->second;
}

absl::StatusOr<void*> ScratchBuffer::Get(size_t bytes) {
  if (RecordingArena::Current(state_.get()) != nullptr) {
    recorded_.reset();  // the op that used it is recorded: later ones may reuse the block
    MPLUS_ASSIGN_OR_RETURN(recorded_, DeviceState::Alloc(state_, bytes, category_));
    return recorded_.get();
  }
  if (bytes <= bytes_ && mem_ != nullptr) return mem_.get();
  // Grow by at least half again so slowly growing shapes do not reallocate every call.
  const size_t want = std::max(bytes, bytes_ + bytes_ / 2);
  mem_.reset();
  bytes_ = 0;
  MPLUS_ASSIGN_OR_RETURN(mem_, DeviceState::Alloc(state_, want, category_));
  bytes_ = want;
  return mem_.get();
}

}  // namespace mplus::engine::cuda
