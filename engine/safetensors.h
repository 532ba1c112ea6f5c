// Memory-mapped safetensors checkpoints: one file or shards listed in
// model.safetensors.index.json. Every header is validated before any tensor is handed out.
#ifndef MPLUS_ENGINE_SAFETENSORS_H_
#define MPLUS_ENGINE_SAFETENSORS_H_

#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/dtype.h"

namespace mplus::engine {

// A read-only view of one tensor's bytes (row-major), valid while its file is open.
struct TensorView {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  size_t nbytes = 0;

  int64_t numel() const;
  // Element i converted to float32 (for checks and small tensors, not hot loops).
  float GetFloat(int64_t i) const;
};

// One mapped file.
class SafetensorsFile {
 public:
  // Maps `path` and validates: header length within the file, JSON well formed, dtypes known,
  // shapes consistent with byte ranges, ranges inside the data section and non-overlapping.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::map<std::string, TensorView>& tensors() const { return tensors_; }

 private:
  SafetensorsFile() = default;
  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  std::map<std::string, TensorView> tensors_;
  // Only for files whose data section is not 8-byte aligned (header not padded).
  std::unique_ptr<uint64_t[]> aligned_copy_;
};

// All tensors of a checkpoint directory (single file or sharded).
class WeightStore {
 public:
  static absl::StatusOr<std::unique_ptr<WeightStore>> OpenDirectory(const std::string& dir);

  // NotFound naming the tensor and the checkpoint when absent.
  absl::StatusOr<TensorView> Get(const std::string& name) const;
  // Get + check dtype is float (F32/BF16/F16) and shape equals `shape`; the error names the
  // file, the tensor, and expected vs. found.
  absl::StatusOr<TensorView> GetFloat(const std::string& name,
                                      absl::Span<const int64_t> shape) const;
  bool Contains(const std::string& name) const;
  std::vector<std::string> Names() const;
  // File a tensor came from (for error messages).
  std::string FileOf(const std::string& name) const;

 private:
  std::string dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, std::pair<const SafetensorsFile*, const TensorView*>> index_;
};

// Writes tensors (float32 or as given) to a safetensors file; used by tools and tests.
struct TensorToWrite {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};
absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors);

// Name, dtype and shape of a tensor to be streamed by SafetensorsWriter.
struct TensorSpec {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  size_t nbytes() const;
};

// Streams a safetensors file whose header is known up front, so that multi-GB tensors never
// have to be held in memory: Create writes the header (padded to 8 bytes, "__metadata__":
// {"format": "pt"}), Append adds the data of the tensors in `specs` order, Finish checks that
// every byte arrived and closes the file.
class SafetensorsWriter {
 public:
  static absl::StatusOr<std::unique_ptr<SafetensorsWriter>> Create(
      const std::string& path, const std::vector<TensorSpec>& specs);
  ~SafetensorsWriter();
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;

  absl::Status Append(const void* data, size_t nbytes);
  absl::Status Finish();

 private:
  SafetensorsWriter() = default;
  std::string path_;
  std::FILE* out_ = nullptr;
  uint64_t expected_ = 0;
  uint64_t written_ = 0;
};

}  // namespace mplus::engine

#endif  // MPLUS_ENGINE_SAFETENSORS_H_
