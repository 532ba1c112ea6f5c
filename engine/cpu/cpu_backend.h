// The reference backend: plain C++ loops, multithreaded over output rows, float32 compute.
#ifndef MPLUS_ENGINE_CPU_CPU_BACKEND_H_
#define MPLUS_ENGINE_CPU_CPU_BACKEND_H_

#include <memory>
#include <string>
#include <vector>

#include "common/thread_pool.h"
#include "engine/backend.h"

namespace mplus::engine::cpu {

class CpuBackend : public Backend {
 public:
  // num_threads <= 0: one per CPU the process may use (AvailableCpus).
  explicit CpuBackend(int num_threads = 0) : pool_(num_threads) {}

  Device device() const override { return Device::kCpu; }
  std::string name() const override { return "cpu"; }

  absl::StatusOr<Tensor> Allocate(DType dtype, std::vector<int64_t> shape) override;
  absl::StatusOr<Tensor> UploadWeight(const TensorView& view) override;
  absl::Status CopyFromHost(const void* src, DType src_dtype, const Tensor& dst) override;
  absl::Status CopyToHost(const Tensor& src, void* dst) override;
  absl::Status Copy(const Tensor& src, const Tensor& dst) override;
  absl::Status Synchronize() override { return absl::OkStatus(); }

  absl::Status MatMul(const Tensor& x, const Tensor& w, const Tensor& out, float alpha,
                      bool accumulate) override;
  absl::Status RmsNorm(const Tensor& x, const Tensor& weight, float eps,
                       const Tensor& out) override;
  absl::Status Rope(const Tensor& x, int64_t head_dim, absl::Span<const int64_t> positions,
                    const Tensor& inv_freq) override;
  absl::Status Attention(const Tensor& q, const Tensor& k, const Tensor& v, int64_t num_heads,
                         int64_t num_kv_heads, int64_t head_dim, const Tensor& out) override;
  absl::Status SiluMul(const Tensor& gate, const Tensor& up, const Tensor& out) override;
  absl::Status Silu(const Tensor& x) override;
  absl::Status Add(const Tensor& a, const Tensor& b, const Tensor& out) override;
  absl::Status AddRow(const Tensor& x, const Tensor& row) override;
  absl::Status Embedding(const Tensor& table, absl::Span<const int32_t> ids,
                         const Tensor& out) override;

 private:
  mplus::ThreadPool pool_;
};

// Widens n elements of a float-typed buffer, starting at element `offset`, to float32.
void LoadFloats(const void* data, DType dtype, int64_t offset, int64_t n, float* out);

}  // namespace mplus::engine::cpu

#endif  // MPLUS_ENGINE_CPU_CPU_BACKEND_H_
