#include "engine/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <set>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"

namespace mplus::engine {
namespace {

using nlohmann::json;

// Headers of real checkpoints are a few MB at most; anything larger is corruption.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

std::optional<DType> ParseDType(const std::string& name) {
  if (name == "F32") return DType::kF32;
  if (name == "BF16") return DType::kBF16;
  if (name == "F16") return DType::kF16;
  if (name == "I64") return DType::kI64;
  if (name == "I32") return DType::kI32;
  return std::nullopt;
}

std::string ShapeString(absl::Span<const int64_t> shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

bool IsFloat(DType dtype) {
  return dtype == DType::kF32 || dtype == DType::kBF16 || dtype == DType::kF16;
}

// Reads a non-negative integer that fits in uint64 from a JSON value.
std::optional<uint64_t> ToU64(const json& v) {
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  if (v.is_number_integer() && v.get<int64_t>() >= 0)
    return static_cast<uint64_t>(v.get<int64_t>());
  return std::nullopt;
}

absl::StatusOr<TensorView> ParseEntry(const std::string& path, const std::string& name,
                                      const json& entry, const uint8_t* data, uint64_t data_size,
                                      std::pair<uint64_t, uint64_t>* range) {
  auto bad = [&](const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": tensor \"", name, "\": ", why));
  };
  if (!entry.is_object()) return bad("header entry is not an object");
  auto dt = entry.find("dtype");
  auto sh = entry.find("shape");
  auto off = entry.find("data_offsets");
  if (dt == entry.end() || !dt->is_string()) return bad("missing or non-string \"dtype\"");
  if (sh == entry.end() || !sh->is_array()) return bad("missing or non-array \"shape\"");
  if (off == entry.end() || !off->is_array() || off->size() != 2) {
    return bad("\"data_offsets\" must be an array [begin, end]");
  }
  TensorView view;
  view.name = name;
  const std::string dtype_name = dt->get<std::string>();
  std::optional<DType> dtype = ParseDType(dtype_name);
  if (!dtype) {
    return bad(
        absl::StrCat("unsupported dtype ", dtype_name, " (supported: F32, BF16, F16, I64, I32)"));
  }
  view.dtype = *dtype;
  uint64_t numel = 1;
  for (const json& d : *sh) {
    std::optional<uint64_t> dim = ToU64(d);
    if (!dim || *dim > (1ull << 40))
      return bad("shape has a negative, non-integer or absurd dimension");
    view.shape.push_back(static_cast<int64_t>(*dim));
    if (*dim != 0 && numel > std::numeric_limits<uint64_t>::max() / *dim) {
      return bad("shape overflows");
    }
    numel *= *dim;
  }
  std::optional<uint64_t> begin = ToU64((*off)[0]);
  std::optional<uint64_t> end = ToU64((*off)[1]);
  if (!begin || !end || *begin > *end) {
    return bad("\"data_offsets\" must be non-negative integers with begin <= end");
  }
  if (*end > data_size) {
    return bad(absl::StrCat("data_offsets [", *begin, ", ", *end,
                            ") lie outside the data section of ", data_size, " bytes"));
  }
  const uint64_t elem = DTypeSize(view.dtype);
  if (numel > std::numeric_limits<uint64_t>::max() / elem || numel * elem != *end - *begin) {
    return bad(absl::StrCat("shape ", ShapeString(view.shape), " x ", dtype_name, " needs ",
                            numel * elem, " bytes but data_offsets span ", *end - *begin));
  }
  view.data = data + *begin;
  view.nbytes = static_cast<size_t>(*end - *begin);
  *range = {*begin, *end};
  return view;
}

}  // namespace

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

float TensorView::GetFloat(int64_t i) const {
  const auto* bytes = static_cast<const uint8_t*>(data) + i * DTypeSize(dtype);
  switch (dtype) {
    case DType::kF32: {
      float f;
      std::memcpy(&f, bytes, sizeof f);
      return f;
    }
    case DType::kBF16:
    case DType::kF16: {
      uint16_t h;
      std::memcpy(&h, bytes, sizeof h);
      return dtype == DType::kBF16 ? BF16ToFloat(h) : F16ToFloat(h);
    }
    case DType::kI64: {
      int64_t v;
      std::memcpy(&v, bytes, sizeof v);
      return static_cast<float>(v);
    }
    case DType::kI32: {
      int32_t v;
      std::memcpy(&v, bytes, sizeof v);
      return static_cast<float>(v);
    }
    case DType::kF8E4M3:
      return F8E4M3ToFloat(*bytes);
  }
  return 0.0f;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    const std::string msg = absl::StrCat(path, ": cannot open: ", std::strerror(err));
    return err == ENOENT ? absl::NotFoundError(msg) : absl::PermissionDeniedError(msg);
  }
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a regular file"));
  }
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < 8) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, ": truncated safetensors file (",
                                                   file_size, " bytes, need at least 8)"));
  }
  void* map = ::mmap(nullptr, file_size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_err = errno;
  ::close(fd);  // the mapping keeps the file alive
  if (map == MAP_FAILED) {
    return absl::InternalError(absl::StrCat(path, ": mmap failed: ", std::strerror(map_err)));
  }
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  file->map_ = map;
  file->map_size_ = file_size;
  const auto* base = static_cast<const uint8_t*>(map);

  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | base[i];  // little endian
  if (header_len > file_size - 8) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": header length ", header_len,
                                                   " runs past the end of the file (", file_size,
                                                   " bytes); truncated or corrupt"));
  }
  if (header_len > kMaxHeaderBytes || header_len < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": implausible header length ", header_len));
  }
  const char* header_begin = reinterpret_cast<const char*>(base + 8);
  json header = json::parse(header_begin, header_begin + header_len, nullptr,
                            /*allow_exceptions=*/false);
  if (header.is_discarded()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": header is not valid JSON"));
  }
  if (!header.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": header is not a JSON object"));
  }

  const uint64_t data_offset = 8 + header_len;
  const uint64_t data_size = file_size - data_offset;
  const uint8_t* data = base + data_offset;
  // Consumers read tensors as float*/uint16_t*; a header not padded to 8 bytes would leave them
  // misaligned, so such (rare, non-standard) files get an aligned private copy.
  if (data_offset % 8 != 0 && data_size > 0) {
    file->aligned_copy_.reset(new uint64_t[(data_size + 7) / 8]);
    std::memcpy(file->aligned_copy_.get(), data, data_size);
    data = reinterpret_cast<const uint8_t*>(file->aligned_copy_.get());
  }

  std::vector<std::pair<std::pair<uint64_t, uint64_t>, std::string>> ranges;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") continue;
    std::pair<uint64_t, uint64_t> range;
    absl::StatusOr<TensorView> view =
        ParseEntry(path, it.key(), it.value(), data, data_size, &range);
    if (!view.ok()) return view.status();
    if (range.first != range.second) ranges.push_back({range, it.key()});
    file->tensors_.emplace(it.key(), *std::move(view));
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i) {
    if (ranges[i].first.first < ranges[i - 1].first.second) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": tensors \"", ranges[i - 1].second, "\" and \"", ranges[i].second,
                       "\" have overlapping data_offsets [", ranges[i - 1].first.first, ", ",
                       ranges[i - 1].first.second, ") and [", ranges[i].first.first, ", ",
                       ranges[i].first.second, ")"));
    }
  }
  return file;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) ::munmap(map_, map_size_);
}

absl::StatusOr<std::unique_ptr<WeightStore>> WeightStore::OpenDirectory(const std::string& dir) {
  namespace fs = std::filesystem;
  auto store = std::make_unique<WeightStore>();
  store->dir_ = dir;
  const fs::path index_path = fs::path(dir) / "model.safetensors.index.json";
  const fs::path single_path = fs::path(dir) / "model.safetensors";
  std::error_code ec;

  if (!fs::exists(index_path, ec)) {
    if (!fs::exists(single_path, ec)) {
      return absl::NotFoundError(absl::StrCat(
          dir, ": no model.safetensors or model.safetensors.index.json in checkpoint directory"));
    }
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(single_path);
    if (!file.ok()) return file.status();
    store->files_.push_back(*std::move(file));
  } else {
    std::ifstream in(index_path);
    json index = json::parse(in, nullptr, /*allow_exceptions=*/false);
    if (index.is_discarded() || !index.is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat(index_path.string(), ": not a valid JSON object"));
    }
    auto wm = index.find("weight_map");
    if (wm == index.end() || !wm->is_object() || wm->empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(index_path.string(), ": missing or empty \"weight_map\" object"));
    }
    // Open each shard once, in order of first mention.
    std::map<std::string, const SafetensorsFile*> shards;
    for (auto it = wm->begin(); it != wm->end(); ++it) {
      if (!it.value().is_string()) {
        return absl::InvalidArgumentError(absl::StrCat(index_path.string(), ": weight_map[\"",
                                                       it.key(), "\"] is not a file name"));
      }
      const std::string shard = it.value().get<std::string>();
      if (shard.empty() || shard.front() == '/' || shard.find("..") != std::string::npos) {
        return absl::InvalidArgumentError(absl::StrCat(
            index_path.string(), ": weight_map names an invalid shard \"", shard, "\""));
      }
      if (shards.count(shard)) continue;
      const fs::path shard_path = fs::path(dir) / shard;
      if (!fs::exists(shard_path, ec)) {
        return absl::NotFoundError(absl::StrCat(index_path.string(), ": shard \"", shard,
                                                "\" (holding tensor \"", it.key(),
                                                "\") is missing"));
      }
      absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(shard_path);
      if (!file.ok()) return file.status();
      shards[shard] = file->get();
      store->files_.push_back(*std::move(file));
    }
    for (auto it = wm->begin(); it != wm->end(); ++it) {
      const SafetensorsFile* shard = shards.at(it.value().get<std::string>());
      if (!shard->tensors().count(it.key())) {
        return absl::InvalidArgumentError(absl::StrCat(index_path.string(), ": tensor \"", it.key(),
                                                       "\" is not in its shard ", shard->path()));
      }
    }
  }

  for (const auto& file : store->files_) {
    for (const auto& [name, view] : file->tensors()) {
      auto [it, inserted] = store->index_.emplace(name, std::make_pair(file.get(), &view));
      if (!inserted) {
        return absl::InvalidArgumentError(absl::StrCat("tensor \"", name, "\" appears in both ",
                                                       it->second.first->path(), " and ",
                                                       file->path()));
      }
    }
  }
  return store;
}

absl::StatusOr<TensorView> WeightStore::Get(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) {
    return absl::NotFoundError(
        absl::StrCat("checkpoint ", dir_, ": missing tensor \"", name, "\""));
  }
  return *it->second.second;
}

absl::StatusOr<TensorView> WeightStore::GetFloat(const std::string& name,
                                                 absl::Span<const int64_t> shape) const {
  absl::StatusOr<TensorView> view = Get(name);
  if (!view.ok()) return view.status();
  if (!IsFloat(view->dtype)) {
    return absl::InvalidArgumentError(absl::StrCat(
        FileOf(name), ": tensor \"", name, "\" has dtype ", std::string(DTypeName(view->dtype)),
        ", expected a float type (F32, BF16, F16)"));
  }
  if (!std::equal(shape.begin(), shape.end(), view->shape.begin(), view->shape.end())) {
    return absl::InvalidArgumentError(absl::StrCat(FileOf(name), ": tensor \"", name,
                                                   "\" has shape ", ShapeString(view->shape),
                                                   ", expected ", ShapeString(shape)));
  }
  return view;
}

bool WeightStore::Contains(const std::string& name) const { return index_.count(name) > 0; }

std::vector<std::string> WeightStore::Names() const {
  std::vector<std::string> names;
  names.reserve(index_.size());
  for (const auto& [name, entry] : index_) names.push_back(name);
  return names;
}

std::string WeightStore::FileOf(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? dir_ : it->second.first->path();
}

absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors) {
  std::vector<TensorSpec> specs;
  specs.reserve(tensors.size());
  for (const TensorToWrite& t : tensors) specs.push_back({t.name, t.dtype, t.shape});
  absl::StatusOr<std::unique_ptr<SafetensorsWriter>> writer =
      SafetensorsWriter::Create(path, specs);
  if (!writer.ok()) return writer.status();
  for (const TensorToWrite& t : tensors) {
    if (absl::Status s = (*writer)->Append(t.bytes.data(), t.bytes.size()); !s.ok()) return s;
  }
  return (*writer)->Finish();
}

}  // namespace mplus::engine
