// Corrupt or inconsistent checkpoints must fail with a clear error (naming the file and the
// tensor or field) and never crash.
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "engine/checkpoint_writer.h"
#include "engine/model_config.h"
#include "engine/model_weights.h"
#include "engine/safetensors.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace mplus::engine {
namespace {

namespace fs = std::filesystem;
using ::testing::AllOf;
using ::testing::HasSubstr;

const std::string kFixtures = MPLUS_FIXTURES_DIR;

fs::path FreshDir(const std::string& name) {
  const fs::path dir = fs::path(::testing::TempDir()) / ("bad_checkpoint_test_" + name);
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

// A file with an explicit header length (default: the header's size) and `data_size` data bytes.
fs::path WriteRaw(const std::string& name, const std::string& header, size_t data_size,
                  std::optional<uint64_t> header_len = std::nullopt) {
  const fs::path path = FreshDir(name) / "model.safetensors";
  std::ofstream out(path, std::ios::binary);
  const uint64_t len = header_len.value_or(header.size());
  out.write(reinterpret_cast<const char*>(&len), 8);
  out << header;
  out << std::string(data_size, '\0');
  return path;
}

absl::Status OpenStatus(const fs::path& path) { return SafetensorsFile::Open(path).status(); }

TEST(BadCheckpointTest, TruncatedFile) {
  const fs::path path = FreshDir("tiny_file") / "model.safetensors";
  std::ofstream(path) << "abc";
  const absl::Status s = OpenStatus(path);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), AllOf(HasSubstr(path.string()), HasSubstr("truncated")));
  EXPECT_EQ(OpenStatus(FreshDir("empty") / "none.safetensors").code(), absl::StatusCode::kNotFound);
}

TEST(BadCheckpointTest, HeaderLengthPastEof) {
  const fs::path path = WriteRaw("past_eof", "{}", 0, 1000);
  EXPECT_THAT(
      OpenStatus(path).message(),
      AllOf(HasSubstr(path.string()), HasSubstr("header length 1000"), HasSubstr("past the end")));
  // A huge length must not be trusted either (no allocation, no overflow).
  EXPECT_THAT(OpenStatus(WriteRaw("huge_len", "{}", 0, ~0ull)).message(),
              HasSubstr("past the end"));
}

TEST(BadCheckpointTest, HeaderNotJson) {
  EXPECT_THAT(OpenStatus(WriteRaw("not_json", "{\"a\": [1, 2", 0)).message(),
              HasSubstr("not valid JSON"));
  EXPECT_THAT(OpenStatus(WriteRaw("not_object", "[1, 2, 3]", 0)).message(),
              HasSubstr("not a JSON object"));
  EXPECT_THAT(OpenStatus(WriteRaw("bad_entry", R"({"w": 5})", 0)).message(),
              AllOf(HasSubstr("\"w\""), HasSubstr("not an object")));
  EXPECT_THAT(
      OpenStatus(WriteRaw("no_shape", R"({"w": {"dtype": "F32", "data_offsets": [0, 4]}})", 4))
          .message(),
      HasSubstr("shape"));
  EXPECT_THAT(OpenStatus(WriteRaw("neg_dim",
                                  R"({"w": {"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4))
                  .message(),
              HasSubstr("dimension"));
}

TEST(BadCheckpointTest, MetadataIsIgnored) {
  auto file = SafetensorsFile::Open(WriteRaw(
      "metadata",
      R"({"__metadata__": {"format": "pt"}, "w": {"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
      4));
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->tensors().size(), 1u);
}

TEST(BadCheckpointTest, UnsupportedDtype) {
  for (const char* dtype : {"F64", "U8", "F8_E4M3", "BOOL"}) {
    const std::string header = std::string(R"({"w": {"dtype": ")") + dtype +
                               R"(", "shape": [1], "data_offsets": [0, 8]}})";
    const absl::Status s = OpenStatus(WriteRaw(std::string("dtype_") + dtype, header, 8));
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(s.message(),
                AllOf(HasSubstr("unsupported dtype"), HasSubstr(dtype), HasSubstr("\"w\"")));
  }
}

TEST(BadCheckpointTest, ShapeDisagreesWithByteRange) {
  const absl::Status s = OpenStatus(WriteRaw(
      "shape_bytes", R"({"w": {"dtype":"BF16","shape":[2,3],"data_offsets":[0,16]}})", 16));
  EXPECT_THAT(s.message(), AllOf(HasSubstr("\"w\""), HasSubstr("[2, 3]"), HasSubstr("needs 12"),
                                 HasSubstr("span 16")));
}

TEST(BadCheckpointTest, OffsetsOutOfRange) {
  const fs::path path =
      WriteRaw("out_of_range", R"({"w": {"dtype":"F32","shape":[4],"data_offsets":[8,24]}})", 16);
  EXPECT_THAT(OpenStatus(path).message(),
              AllOf(HasSubstr(path.string()), HasSubstr("\"w\""), HasSubstr("outside the data")));
  EXPECT_THAT(OpenStatus(WriteRaw("reversed",
                                  R"({"w": {"dtype":"F32","shape":[0],"data_offsets":[8,4]}})", 16))
                  .message(),
              HasSubstr("begin <= end"));
}

TEST(BadCheckpointTest, OverlappingOffsets) {
  const absl::Status s = OpenStatus(WriteRaw("overlap", R"({
      "a": {"dtype":"F32","shape":[2],"data_offsets":[0,8]},
      "b": {"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                                             12));
  EXPECT_THAT(s.message(), AllOf(HasSubstr("\"a\""), HasSubstr("\"b\""), HasSubstr("overlap")));
}

TEST(BadCheckpointTest, TruncatedData) {
  const fs::path dir = FreshDir("truncated_data");
  ASSERT_TRUE(
      WriteRandomCheckpoint(*LoadModelConfig(kFixtures + "/tiny-mplus/config.json"), {}, dir).ok());
  const fs::path file = dir / "model.safetensors";
  fs::resize_file(file, fs::file_size(file) / 2);
  const absl::Status s = WeightStore::OpenDirectory(dir).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), AllOf(HasSubstr(file.string()), HasSubstr("outside the data")));
}

class ShardedTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = FreshDir(::testing::UnitTest::GetInstance()->current_test_info()->name());
    const std::vector<uint8_t> four(4, 0);
    ASSERT_TRUE(WriteSafetensors(dir_ / "s1.safetensors", {{"a", DType::kF32, {1}, four}}).ok());
    ASSERT_TRUE(WriteSafetensors(dir_ / "s2.safetensors", {{"b", DType::kF32, {1}, four}}).ok());
  }
  void WriteIndex(const std::string& weight_map) {
    std::ofstream(dir_ / "model.safetensors.index.json")
        << R"({"metadata": {}, "weight_map": )" << weight_map << "}";
  }
  fs::path dir_;
};

TEST_F(ShardedTest, Valid) {
  WriteIndex(R"({"a": "s1.safetensors", "b": "s2.safetensors"})");
  EXPECT_TRUE(WeightStore::OpenDirectory(dir_).ok());
}

TEST_F(ShardedTest, MissingShard) {
  WriteIndex(R"({"a": "s1.safetensors", "b": "s3.safetensors"})");
  const absl::Status s = WeightStore::OpenDirectory(dir_).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(s.message(),
              AllOf(HasSubstr("s3.safetensors"), HasSubstr("\"b\""), HasSubstr("missing")));
}

TEST_F(ShardedTest, TensorNotInItsShard) {
  WriteIndex(R"({"a": "s1.safetensors", "b": "s1.safetensors"})");
  EXPECT_THAT(WeightStore::OpenDirectory(dir_).status().message(),
              AllOf(HasSubstr("\"b\""), HasSubstr("not in its shard"), HasSubstr("s1")));
}

TEST_F(ShardedTest, DuplicateAcrossShards) {
  ASSERT_TRUE(
      WriteSafetensors(dir_ / "s2.safetensors", {{"b", DType::kF32, {1}, std::vector<uint8_t>(4)},
                                                 {"a", DType::kF32, {1}, std::vector<uint8_t>(4)}})
          .ok());
  WriteIndex(R"({"a": "s1.safetensors", "b": "s2.safetensors"})");
  EXPECT_THAT(WeightStore::OpenDirectory(dir_).status().message(),
              AllOf(HasSubstr("\"a\""), HasSubstr("s1.safetensors"), HasSubstr("s2.safetensors")));
}

TEST_F(ShardedTest, BadIndex) {
  std::ofstream(dir_ / "model.safetensors.index.json") << "{not json";
  EXPECT_THAT(WeightStore::OpenDirectory(dir_).status().message(), HasSubstr("index.json"));
  WriteIndex(R"({"a": "../s1.safetensors"})");
  EXPECT_THAT(WeightStore::OpenDirectory(dir_).status().message(), HasSubstr("invalid shard"));
  WriteIndex("{}");
  EXPECT_THAT(WeightStore::OpenDirectory(dir_).status().message(), HasSubstr("weight_map"));
}

TEST(BadCheckpointTest, EmptyDirectory) {
  const absl::Status s = WeightStore::OpenDirectory(FreshDir("empty_dir")).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(s.message(), HasSubstr("no model.safetensors"));
}

// Writes the fixture config's tensors (zeros), after `edit` changes the list, and loads them.
absl::Status LoadEdited(const std::string& name,
                        const std::function<void(std::vector<TensorSpec>&)>& edit,
                        const std::function<void(ModelConfig&)>& edit_config = nullptr) {
  ModelConfig config = *LoadModelConfig(kFixtures + "/tiny-mplus/config.json");
  std::vector<TensorSpec> specs = CheckpointTensorSpecs(config);
  edit(specs);
  std::vector<TensorToWrite> tensors;
  for (const TensorSpec& s : specs) {
    tensors.push_back({s.name, s.dtype, s.shape, std::vector<uint8_t>(s.nbytes())});
  }
  const fs::path dir = FreshDir(name);
  if (absl::Status s = WriteSafetensors(dir / "model.safetensors", tensors); !s.ok()) return s;
  auto store = WeightStore::OpenDirectory(dir);
  if (!store.ok()) return store.status();
  if (edit_config) edit_config(config);
  return ModelWeights::Load(**store, config).status();
}

TensorSpec& Find(std::vector<TensorSpec>& specs, const std::string& name) {
  for (TensorSpec& s : specs) {
    if (s.name == name) return s;
  }
  ADD_FAILURE() << "no tensor " << name;
  return specs.front();
}

TEST(BadCheckpointTest, ZerosLoad) {
  EXPECT_TRUE(LoadEdited("zeros", [](auto&) {}).ok());
}

TEST(BadCheckpointTest, MissingTensorIsNamed) {
  const std::string name = "model.layers.1.mlp.up_proj.lora_B.decoder_adapter.weight";
  const absl::Status s = LoadEdited("missing", [&](std::vector<TensorSpec>& specs) {
    std::erase_if(specs, [&](const TensorSpec& t) { return t.name == name; });
  });
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(s.message(), AllOf(HasSubstr("missing tensor"), HasSubstr(name)));
}

TEST(BadCheckpointTest, WrongShapeNamesExpectedAndFound) {
  const std::string name = "model.layers.0.self_attn.k_proj.base_layer.weight";
  const absl::Status s = LoadEdited("wrong_shape", [&](std::vector<TensorSpec>& specs) {
    Find(specs, name).shape = {64, 64};
  });
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), AllOf(HasSubstr("model.safetensors"), HasSubstr(name),
                                 HasSubstr("shape [64, 64]"), HasSubstr("expected [32, 64]")));
}

TEST(BadCheckpointTest, WrongDtype) {
  const absl::Status as_int = LoadEdited("int_weight", [](std::vector<TensorSpec>& specs) {
    Find(specs, "model.norm.weight").dtype = DType::kI32;
  });
  EXPECT_THAT(as_int.message(),
              AllOf(HasSubstr("model.norm.weight"), HasSubstr("I32"), HasSubstr("float type")));
  const absl::Status mixed = LoadEdited("mixed_dtype", [](std::vector<TensorSpec>& specs) {
    Find(specs, "memory").dtype = DType::kBF16;
  });
  EXPECT_THAT(mixed.message(),
              AllOf(HasSubstr("\"memory\""), HasSubstr("BF16"), HasSubstr("torch_dtype float32")));
}

TEST(BadCheckpointTest, InconsistentLongTermMemory) {
  const absl::Status s = LoadEdited("ltm_rows", [](std::vector<TensorSpec>& specs) {
    Find(specs, "ltm_keys.1").shape = {39, 12};
  });
  EXPECT_THAT(s.message(), AllOf(HasSubstr("ltm_keys.1"), HasSubstr("expected [40, 12]")));
  const absl::Status ages = LoadEdited("ltm_ages", [](std::vector<TensorSpec>& specs) {
    Find(specs, "ltm_ages.2").shape = {40, 1};
  });
  EXPECT_THAT(ages.message(), AllOf(HasSubstr("ltm_ages.2"), HasSubstr("expected [40]")));
}

TEST(BadCheckpointTest, LoraConfigMismatchGetsAHint) {
  // Config says o_proj is LoRA-wrapped, the checkpoint has a plain o_proj.
  const absl::Status s = LoadEdited(
      "lora_hint", [](auto&) {}, [](ModelConfig& c) { c.lora.target_modules.push_back("o_proj"); });
  EXPECT_THAT(s.message(), AllOf(HasSubstr("model.layers.0.self_attn.o_proj.base_layer.weight"),
                                 HasSubstr("target_modules")));
}

TEST(BadCheckpointTest, BadConfigFile) {
  const fs::path dir = FreshDir("bad_config");
  std::ofstream(dir / "config.json") << R"({"architectures": ["MPlus"], "vocab_size": 10,
      "hidden_size": 64, "intermediate_size": 1, "num_hidden_layers": 1, "num_attention_heads": 4,
      "num_key_value_heads": 4, "num_tokens": 8, "num_blocks": 2, "num_ltm_blocks": 2,
      "selector_hidden_dim": 4, "num_selector_layers": 2, "initial_rf_when_moving_stm_to_ltm": 1})";
  const absl::Status s = LoadModelConfig((dir / "config.json").string()).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), AllOf(HasSubstr((dir / "config.json").string()),
                                 HasSubstr("\"num_ltm_blocks\""), HasSubstr("below num_blocks")));
}

}  // namespace
}  // namespace mplus::engine
