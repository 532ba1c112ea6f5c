// SafetensorsWriter: the standard layout (8-byte little-endian header length, JSON header padded
// with spaces to a multiple of 8, then the tensor bytes).
#include <cerrno>
#include <cstring>
#include <set>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/safetensors.h"
#include "nlohmann/json.hpp"

namespace mplus::engine {

size_t TensorSpec::nbytes() const {
  size_t n = DTypeSize(dtype);
  for (int64_t d : shape) n *= static_cast<size_t>(d);
  return n;
}

absl::StatusOr<std::unique_ptr<SafetensorsWriter>> SafetensorsWriter::Create(
    const std::string& path, const std::vector<TensorSpec>& specs) {
  nlohmann::json header = nlohmann::json::object();
  header["__metadata__"] = {{"format", "pt"}};
  uint64_t offset = 0;
  for (const TensorSpec& spec : specs) {
    if (spec.name.empty() || spec.name == "__metadata__" || header.contains(spec.name)) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": empty, reserved or duplicate tensor name \"", spec.name, "\""));
    }
    for (int64_t d : spec.shape) {
      if (d < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat(path, ": tensor \"", spec.name, "\" has a negative dimension"));
      }
    }
    const uint64_t end = offset + spec.nbytes();
    header[spec.name] = {{"dtype", std::string(DTypeName(spec.dtype))},
                         {"shape", spec.shape},
                         {"data_offsets", {offset, end}}};
    offset = end;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');

  std::unique_ptr<SafetensorsWriter> writer(new SafetensorsWriter());
  writer->path_ = path;
  writer->expected_ = offset;
  writer->out_ = std::fopen(path.c_str(), "wb");
  if (writer->out_ == nullptr) {
    return absl::PermissionDeniedError(
        absl::StrCat(path, ": cannot create: ", std::strerror(errno)));
  }
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(uint64_t{text.size()} >> (8 * i));
  if (std::fwrite(len, 1, 8, writer->out_) != 8 ||
      std::fwrite(text.data(), 1, text.size(), writer->out_) != text.size()) {
    return absl::DataLossError(absl::StrCat(path, ": write failed: ", std::strerror(errno)));
  }
  return writer;
}

SafetensorsWriter::~SafetensorsWriter() {
  if (out_ != nullptr) std::fclose(out_);
}

absl::Status SafetensorsWriter::Append(const void* data, size_t nbytes) {
  if (out_ == nullptr) return absl::FailedPreconditionError(path_ + ": writer already finished");
  if (written_ + nbytes > expected_) {
    return absl::InvalidArgumentError(absl::StrCat(path_, ": ", written_ + nbytes,
                                                   " bytes appended, header declares ", expected_));
  }
  if (nbytes > 0 && std::fwrite(data, 1, nbytes, out_) != nbytes) {
    return absl::DataLossError(absl::StrCat(path_, ": write failed: ", std::strerror(errno)));
  }
  written_ += nbytes;
  return absl::OkStatus();
}

absl::Status SafetensorsWriter::Finish() {
  if (out_ == nullptr) return absl::FailedPreconditionError(path_ + ": writer already finished");
  std::FILE* out = out_;
  out_ = nullptr;
  const bool close_ok = std::fclose(out) == 0;
  if (written_ != expected_) {
    return absl::InvalidArgumentError(
        absl::StrCat(path_, ": only ", written_, " of ", expected_, " data bytes were appended"));
  }
  if (!close_ok) {
    return absl::DataLossError(absl::StrCat(path_, ": close failed: ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

}  // namespace mplus::engine
