// Helpers shared by the GPU check and timing code (tests/gpu): host <-> backend tensors, and
// backend settings from the environment.
#ifndef MPLUS_TESTS_GPU_GPU_TEST_UTIL_H_
#define MPLUS_TESTS_GPU_GPU_TEST_UTIL_H_

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/backend.h"
#include "engine/dtype.h"
#include "engine/safetensors.h"

namespace mplus::gpu_test {

using engine::Backend;
using engine::DType;
using engine::Tensor;

inline std::vector<float> RandomFloats(int64_t n, uint32_t seed, float lo = -1.0f,
                                       float hi = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = dist(rng);
  return v;
}

// Host bytes of `values` in `dtype` (F32, BF16, F16 or F8E4M3).
inline std::vector<uint8_t> Encode(const std::vector<float>& values, DType dtype) {
  std::vector<uint8_t> bytes(values.size() * engine::DTypeSize(dtype));
  for (size_t i = 0; i < values.size(); ++i) {
    if (dtype == DType::kF32) {
      std::memcpy(bytes.data() + 4 * i, &values[i], 4);
    } else if (dtype == DType::kF8E4M3) {
      bytes[i] = engine::FloatToF8E4M3(values[i]);
    } else {
      const uint16_t h =
          dtype == DType::kBF16 ? engine::FloatToBF16(values[i]) : engine::FloatToF16(values[i]);
      std::memcpy(bytes.data() + 2 * i, &h, 2);
    }
  }
  return bytes;
}

// The values `dtype` can represent closest to `values` (what the device actually holds).
inline std::vector<float> Rounded(const std::vector<float>& values, DType dtype) {
  std::vector<float> out(values);
  for (float& x : out) {
    if (dtype == DType::kBF16) x = engine::BF16ToFloat(engine::FloatToBF16(x));
    if (dtype == DType::kF16) x = engine::F16ToFloat(engine::FloatToF16(x));
    if (dtype == DType::kF8E4M3) x = engine::F8E4M3ToFloat(engine::FloatToF8E4M3(x));
  }
  return out;
}

// `values` stored as `dtype` (F32, BF16 or F16): host rows as a backend takes them.
inline std::vector<uint8_t> Stored(const std::vector<float>& values, DType dtype) {
  std::vector<uint8_t> out(values.size() * engine::DTypeSize(dtype));
  engine::FloatsToDType(values.data(), static_cast<int64_t>(values.size()), dtype, out.data());
  return out;
}

// A float32 tensor on `backend` holding `values`.
inline absl::StatusOr<Tensor> Upload(Backend& backend, const std::vector<float>& values,
                                     std::vector<int64_t> shape) {
  absl::StatusOr<Tensor> t = backend.Allocate(DType::kF32, std::move(shape));
  if (!t.ok()) return t;
  if (absl::Status s = backend.CopyFromHost(values.data(), DType::kF32, *t); !s.ok()) return s;
  return t;
}

// A `dtype` tensor on `backend` holding `values` (representable in dtype: rounded to it first),
// converted on the backend from a float32 upload.
inline absl::StatusOr<Tensor> UploadAs(Backend& backend, const std::vector<float>& values,
                                       DType dtype, std::vector<int64_t> shape) {
  absl::StatusOr<Tensor> wide = Upload(backend, values, shape);
  if (!wide.ok()) return wide;
  absl::StatusOr<Tensor> t = backend.Allocate(dtype, std::move(shape));
  if (!t.ok()) return t;
  if (absl::Status s = backend.Copy(*wide, *t); !s.ok()) return s;
  return t;
}

// A float32 tensor filled with NaN, so that any element an op fails to write shows up.
inline absl::StatusOr<Tensor> Poisoned(Backend& backend, std::vector<int64_t> shape) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return Upload(backend,
                std::vector<float>(static_cast<size_t>(n), std::numeric_limits<float>::quiet_NaN()),
                std::move(shape));
}

inline absl::StatusOr<std::vector<float>> Download(Backend& backend, const Tensor& t) {
  std::vector<float> out(static_cast<size_t>(t.numel()));
  if (absl::Status s = backend.CopyToHost(t, out.data()); !s.ok()) return s;
  return out;
}

// The position of a decode step as the ops read it: an int64 [1] tensor on `b`.
inline absl::StatusOr<Tensor> Position(Backend& b, int64_t value) {
  absl::StatusOr<Tensor> t = b.Allocate(DType::kI64, {1});
  if (!t.ok()) return t.status();
  if (absl::Status s = b.CopyFromHost(&value, DType::kI64, *t); !s.ok()) return s;
  return t;
}

// Download of each of `ts`.
inline absl::StatusOr<std::vector<std::vector<float>>> DownloadEach(Backend& backend,
                                                                    const std::vector<Tensor>& ts) {
  std::vector<std::vector<float>> out;
  for (const Tensor& t : ts) {
    absl::StatusOr<std::vector<float>> host = Download(backend, t);
    if (!host.ok()) return host.status();
    out.push_back(std::move(*host));
  }
  return out;
}

// A checkpoint-like weight: keeps the host bytes alive for backends that borrow them.
struct HostWeight {
  std::vector<uint8_t> bytes;
  engine::TensorView view;
};
inline std::unique_ptr<HostWeight> MakeWeight(const std::vector<float>& values, DType dtype,
                                              std::vector<int64_t> shape) {
  auto w = std::make_unique<HostWeight>();
  w->bytes = Encode(values, dtype);
  w->view.name = "test_weight";
  w->view.dtype = dtype;
  w->view.shape = std::move(shape);
  w->view.data = w->bytes.data();
  w->view.nbytes = w->bytes.size();
  return w;
}

// Sets an environment variable while it lives (the CUDA backend reads its MPLUS_CUDA_* settings
// when one is made), then restores it.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const std::string& value) : name_(name) {
    const char* old = std::getenv(name);
    if (old != nullptr) saved_ = old;
    setenv(name, value.c_str(), 1);
  }
  ~ScopedEnv() {
    if (saved_) {
      setenv(name_, saved_->c_str(), 1);
    } else {
      unsetenv(name_);
    }
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
  std::optional<std::string> saved_;
};

}  // namespace mplus::gpu_test

#endif  // MPLUS_TESTS_GPU_GPU_TEST_UTIL_H_
