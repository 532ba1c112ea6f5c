#include "engine/safetensors.h"

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace mplus::engine {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

fs::path FreshDir(const std::string& name) {
  const fs::path dir = fs::path(::testing::TempDir()) / ("safetensors_test_" + name);
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

template <typename T>
TensorToWrite Tensor(std::string name, DType dtype, std::vector<int64_t> shape,
                     const std::vector<T>& values) {
  TensorToWrite t{std::move(name), dtype, std::move(shape), {}};
  t.bytes.resize(values.size() * sizeof(T));
  if (!values.empty()) std::memcpy(t.bytes.data(), values.data(), t.bytes.size());
  return t;
}

TEST(SafetensorsTest, RoundTripsEveryDtype) {
  const fs::path path = FreshDir("roundtrip") / "model.safetensors";
  const std::vector<TensorToWrite> tensors = {
      Tensor<float>("f32", DType::kF32, {2, 3}, {1, 2, 3, 4, 5, -6.5f}),
      Tensor<uint16_t>("bf16", DType::kBF16, {2}, {FloatToBF16(1.5f), FloatToBF16(-2.0f)}),
      Tensor<uint16_t>("f16", DType::kF16, {1, 1, 2}, {FloatToF16(0.25f), FloatToF16(8.0f)}),
      Tensor<int64_t>("i64", DType::kI64, {3}, {-1, 0, 1ll << 40}),
      Tensor<int32_t>("i32", DType::kI32, {1}, {7}),
      Tensor<float>("empty", DType::kF32, {0, 4}, {}),
      Tensor<float>("scalar", DType::kF32, {}, {42.0f}),
  };
  ASSERT_TRUE(WriteSafetensors(path, tensors).ok());
  // Standard layout: the data section starts 8-byte aligned.
  std::ifstream in(path, std::ios::binary);
  uint64_t header_len = 0;
  in.read(reinterpret_cast<char*>(&header_len), 8);
  EXPECT_EQ(header_len % 8, 0u);

  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  const auto& t = (*file)->tensors();
  ASSERT_EQ(t.size(), tensors.size());
  EXPECT_EQ(t.at("f32").shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(t.at("f32").numel(), 6);
  EXPECT_EQ(t.at("f32").GetFloat(5), -6.5f);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t.at("f32").data) % 8, 0u);
  EXPECT_EQ(t.at("bf16").dtype, DType::kBF16);
  EXPECT_EQ(t.at("bf16").GetFloat(1), -2.0f);
  EXPECT_EQ(t.at("f16").GetFloat(0), 0.25f);
  EXPECT_EQ(t.at("i64").GetFloat(2), static_cast<float>(1ll << 40));
  EXPECT_EQ(t.at("i32").GetFloat(0), 7.0f);
  EXPECT_EQ(t.at("empty").numel(), 0);
  EXPECT_EQ(t.at("scalar").numel(), 1);
  EXPECT_EQ(t.at("scalar").GetFloat(0), 42.0f);
}

TEST(SafetensorsTest, ReadsUnpaddedHeaderIntoAlignedMemory) {
  // Some writers do not pad the header; the loader still hands out aligned data.
  const fs::path path = FreshDir("unpadded") / "model.safetensors";
  const std::string header =
      R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";  // 55 bytes
  ASSERT_NE(header.size() % 8, 0u);
  std::ofstream out(path, std::ios::binary);
  const uint64_t len = header.size();
  out.write(reinterpret_cast<const char*>(&len), 8);
  out << header;
  const float values[2] = {3.0f, -1.0f};
  out.write(reinterpret_cast<const char*>(values), sizeof values);
  out.close();
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  const TensorView& x = (*file)->tensors().at("x");
  EXPECT_EQ(reinterpret_cast<uintptr_t>(x.data) % 8, 0u);
  EXPECT_EQ(x.GetFloat(0), 3.0f);
  EXPECT_EQ(x.GetFloat(1), -1.0f);
}

TEST(SafetensorsTest, WeightStoreOpensSingleFile) {
  const fs::path dir = FreshDir("single");
  ASSERT_TRUE(WriteSafetensors(dir / "model.safetensors",
                               {Tensor<float>("a", DType::kF32, {2, 2}, {1, 2, 3, 4})})
                  .ok());
  auto store = WeightStore::OpenDirectory(dir);
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_TRUE((*store)->Contains("a"));
  EXPECT_EQ((*store)->Names(), std::vector<std::string>{"a"});
  EXPECT_EQ((*store)->FileOf("a"), (dir / "model.safetensors").string());
  auto a = (*store)->GetFloat("a", {2, 2});
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->GetFloat(3), 4.0f);

  auto missing = (*store)->Get("b");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("\"b\""));
  auto wrong = (*store)->GetFloat("a", {4});
  EXPECT_THAT(wrong.status().message(), HasSubstr("[2, 2]"));
  EXPECT_THAT(wrong.status().message(), HasSubstr("expected [4]"));
}

TEST(SafetensorsTest, WeightStoreOpensShards) {
  const fs::path dir = FreshDir("sharded");
  ASSERT_TRUE(WriteSafetensors(dir / "model-00001-of-00002.safetensors",
                               {Tensor<float>("a", DType::kF32, {1}, {1}),
                                Tensor<float>("b", DType::kF32, {1}, {2})})
                  .ok());
  ASSERT_TRUE(WriteSafetensors(dir / "model-00002-of-00002.safetensors",
                               {Tensor<uint16_t>("c", DType::kBF16, {1}, {FloatToBF16(3)})})
                  .ok());
  std::ofstream(dir / "model.safetensors.index.json")
      << R"({"metadata": {"total_size": 10}, "weight_map": {
            "a": "model-00001-of-00002.safetensors",
            "b": "model-00001-of-00002.safetensors",
            "c": "model-00002-of-00002.safetensors"}})";
  auto store = WeightStore::OpenDirectory(dir);
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_EQ((*store)->Names(), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ((*store)->Get("c")->GetFloat(0), 3.0f);
  EXPECT_EQ((*store)->FileOf("c"), (dir / "model-00002-of-00002.safetensors").string());
}

TEST(SafetensorsTest, StreamWriterChecksByteCounts) {
  const fs::path path = FreshDir("stream") / "model.safetensors";
  auto writer = SafetensorsWriter::Create(path, {{"a", DType::kF32, {2}}, {"b", DType::kI64, {1}}});
  ASSERT_TRUE(writer.ok());
  const float a[2] = {1, 2};
  ASSERT_TRUE((*writer)->Append(a, sizeof a).ok());
  const int64_t b = 9;
  EXPECT_FALSE((*writer)->Append(a, sizeof a + 8).ok());  // more than declared
  ASSERT_TRUE((*writer)->Append(&b, sizeof b).ok());
  ASSERT_TRUE((*writer)->Finish().ok());
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok());
  EXPECT_EQ((*file)->tensors().at("b").GetFloat(0), 9.0f);

  auto short_writer = SafetensorsWriter::Create(path, {{"a", DType::kF32, {2}}});
  ASSERT_TRUE(short_writer.ok());
  ASSERT_TRUE((*short_writer)->Append(a, 4).ok());
  EXPECT_THAT((*short_writer)->Finish().message(), HasSubstr("only 4 of 8"));

  EXPECT_FALSE(
      SafetensorsWriter::Create(path, {{"a", DType::kF32, {1}}, {"a", DType::kF32, {1}}}).ok());
  EXPECT_FALSE(WriteSafetensors(path, {TensorToWrite{"a", DType::kF32, {2}, {0, 0, 0}}}).ok());
}

}  // namespace
}  // namespace mplus::engine
