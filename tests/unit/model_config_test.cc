#include "engine/model_config.h"

#include <functional>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace mplus::engine {
namespace {

using ::testing::HasSubstr;

const std::string kFixtures = MPLUS_FIXTURES_DIR;

// A minimal Llama 3.1 config.json.
nlohmann::json LlamaJson() {
  return nlohmann::json::parse(R"({
    "architectures": ["LlamaForCausalLM"], "vocab_size": 128256, "hidden_size": 4096,
    "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
    "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009],
    "max_position_embeddings": 131072, "torch_dtype": "bfloat16", "tie_word_embeddings": false})");
}

nlohmann::json FixtureJson() {
  return nlohmann::json::parse(R"({
    "architectures": ["MPlus"], "torch_dtype": "float32", "vocab_size": 384, "hidden_size": 64,
    "intermediate_size": 160, "num_hidden_layers": 3, "num_attention_heads": 4,
    "num_key_value_heads": 2, "num_tokens": 8, "num_blocks": 6, "num_ltm_blocks": 2,
    "lora_config": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]},
    "add_decoder_lora": true, "selector_hidden_dim": 12, "num_selector_layers": 2,
    "ltm_initial_size": 40, "update_ltm_frequency": 5, "decay_frequency": 1,
    "initial_rf_when_moving_stm_to_ltm": 2, "bos_token_id": 1, "eos_token_id": 2})");
}

absl::StatusOr<ModelConfig> Parse(const nlohmann::json& j) {
  return ParseModelConfig(j.dump(), "test/config.json");
}

TEST(ModelConfigTest, LoadsTinyMplusFixture) {
  for (const char* dir : {"tiny-mplus", "tiny-mplus-bf16"}) {
    auto c = LoadModelConfig(kFixtures + "/" + dir + "/config.json");
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_EQ(c->kind, ModelKind::kMPlus);
    EXPECT_EQ(c->dtype, std::string(dir) == "tiny-mplus" ? DType::kF32 : DType::kBF16);
    EXPECT_EQ(c->vocab_size, 384);
    EXPECT_EQ(c->hidden_size, 64);
    EXPECT_EQ(c->num_hidden_layers, 3);
    EXPECT_EQ(c->num_attention_heads, 4);
    EXPECT_EQ(c->num_key_value_heads, 2);
    EXPECT_EQ(c->head_dim, 16);  // hidden / heads
    EXPECT_EQ(c->rope_scaling.rope_type, "llama3");
    EXPECT_EQ(c->rope_scaling.original_max_position_embeddings, 64);
    EXPECT_DOUBLE_EQ(c->rope_theta, 500000.0);
    EXPECT_EQ(c->stm_tokens(), 32);
    EXPECT_EQ(c->ltm_retrieved_tokens(), 16);
    EXPECT_EQ(c->prefix_length(), 49);
    EXPECT_EQ(c->lora.r, 4);
    EXPECT_DOUBLE_EQ(c->lora.scale(), 2.0);
    EXPECT_TRUE(c->lora.Targets("gate_proj"));
    EXPECT_FALSE(c->lora.Targets("o_proj"));
    EXPECT_TRUE(c->add_decoder_lora);
    EXPECT_TRUE(c->add_bos_embedding);
    EXPECT_TRUE(c->drop_memory_per_layer);
    EXPECT_TRUE(c->add_encoder_retriever);
    EXPECT_EQ(c->selector_hidden_dim, 12);
    EXPECT_EQ(c->num_selector_layers, 2);
    EXPECT_EQ(c->ltm_initial_size, 40);
    EXPECT_EQ(c->update_ltm_frequency, 5);
    EXPECT_DOUBLE_EQ(c->decay_frequency, 1);
    EXPECT_DOUBLE_EQ(c->initial_rf_when_moving_stm_to_ltm, 2);
    EXPECT_EQ(c->bos_token_id, 1);
    EXPECT_EQ(c->eos_token_ids, std::vector<int64_t>{2});
  }
}

TEST(ModelConfigTest, ParsesPlainLlama) {
  auto c = Parse(LlamaJson());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->kind, ModelKind::kLlama);
  EXPECT_FALSE(c->has_memory());
  EXPECT_EQ(c->dtype, DType::kBF16);
  EXPECT_EQ(c->head_dim, 128);
  EXPECT_EQ(c->eos_token_ids, (std::vector<int64_t>{128001, 128008, 128009}));
  EXPECT_EQ(c->lora.r, 0);
}

TEST(ModelConfigTest, AcceptsVariants) {
  nlohmann::json j = LlamaJson();
  j.erase("torch_dtype");
  j["dtype"] = "float16";
  j["rope_scaling"] = nullptr;
  j["head_dim"] = 64;
  j["eos_token_id"] = 7;
  auto c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->dtype, DType::kF16);
  EXPECT_EQ(c->rope_scaling.rope_type, "default");
  EXPECT_EQ(c->head_dim, 64);
  EXPECT_EQ(c->eos_token_ids, std::vector<int64_t>{7});

  j["rope_scaling"] = {{"type", "llama3"},
                       {"factor", 8.0},
                       {"low_freq_factor", 1.0},
                       {"high_freq_factor", 4.0},
                       {"original_max_position_embeddings", 8192}};
  c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->rope_scaling.rope_type, "llama3");
}

TEST(ModelConfigTest, DetectsMemoryLlm) {
  nlohmann::json j = LlamaJson();
  j["architectures"] = {"MemoryLLM"};
  j["num_tokens"] = 256;
  j["num_blocks"] = 40;
  j["add_bos_embedding"] = true;
  auto c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->kind, ModelKind::kMemoryLLM);
  EXPECT_FALSE(c->has_long_term());
  EXPECT_EQ(c->stm_tokens(), 256 * 40);
  EXPECT_EQ(c->prefix_length(), 1 + 256 * 40);
  EXPECT_EQ(c->lora.r, 0);                 // no lora_config: no adapters
  EXPECT_FALSE(c->drop_memory_per_layer);  // the official default

  j.erase("architectures");  // fields alone are enough
  c = Parse(j);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->kind, ModelKind::kMemoryLLM);
}

TEST(ModelConfigTest, JsonRoundTrip) {
  auto fixture = LoadModelConfig(kFixtures + "/tiny-mplus/config.json");
  ASSERT_TRUE(fixture.ok());
  for (ModelKind kind : {ModelKind::kMPlus, ModelKind::kMemoryLLM, ModelKind::kLlama}) {
    ModelConfig c = *fixture;
    c.kind = kind;
    if (kind != ModelKind::kMPlus) {
      c.num_ltm_blocks = c.selector_hidden_dim = c.num_selector_layers = 0;
      c.ltm_initial_size = c.update_ltm_frequency = 0;
      c.decay_frequency = c.initial_rf_when_moving_stm_to_ltm = 0;
      c.add_encoder_retriever = false;
    }
    if (kind == ModelKind::kLlama) {
      c.num_tokens = c.num_blocks = 0;
      c.lora = {};
      c.add_decoder_lora = c.add_bos_embedding = false;
    }
    auto back = ParseModelConfig(ModelConfigToJson(c), "roundtrip");
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(ModelConfigToJson(*back), ModelConfigToJson(c));
    EXPECT_EQ(back->kind, kind);
  }
}

// Each mutation of a valid config must fail with an error naming the field and the file.
struct BadCase {
  const char* name;
  std::function<void(nlohmann::json&)> mutate;
  const char* field;
};

TEST(ModelConfigTest, RejectsBadFields) {
  const std::vector<BadCase> cases = {
      {"missing hidden", [](auto& j) { j.erase("hidden_size"); }, "hidden_size"},
      {"zero layers", [](auto& j) { j["num_hidden_layers"] = 0; }, "num_hidden_layers"},
      {"string vocab", [](auto& j) { j["vocab_size"] = "384"; }, "vocab_size"},
      {"fractional size", [](auto& j) { j["intermediate_size"] = 160.5; }, "intermediate_size"},
      {"kv heads", [](auto& j) { j["num_key_value_heads"] = 3; }, "num_key_value_heads"},
      {"dtype", [](auto& j) { j["torch_dtype"] = "int8"; }, "torch_dtype"},
      {"rope type",
       [](auto& j) {
         j["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
       },
       "rope_scaling.type"},
      {"rope factor",
       [](auto& j) {
         j["rope_scaling"] = {{"rope_type", "llama3"}};
       },
       "rope_scaling.factor"},
      {"eos", [](auto& j) { j["eos_token_id"] = "x"; }, "eos_token_id"},
      {"eos range", [](auto& j) { j["eos_token_id"] = 1000; }, "eos_token_id"},
      {"act", [](auto& j) { j["hidden_act"] = "gelu"; }, "hidden_act"},
      {"arch", [](auto& j) { j["architectures"] = {"MistralForCausalLM"}; }, "architectures"},
      {"ltm blocks", [](auto& j) { j["num_ltm_blocks"] = 6; }, "num_ltm_blocks"},
      {"selector layers", [](auto& j) { j["num_selector_layers"] = 3; }, "num_selector_layers"},
      {"selector dim", [](auto& j) { j.erase("selector_hidden_dim"); }, "selector_hidden_dim"},
      {"num tokens", [](auto& j) { j["num_tokens"] = -8; }, "num_tokens"},
      {"lora r", [](auto& j) { j["lora_config"]["r"] = 0; }, "lora_config"},
      {"lora target", [](auto& j) { j["lora_config"]["target_modules"] = {"qkv"}; },
       "lora_config.target_modules"},
      {"lora alpha", [](auto& j) { j["lora_config"].erase("lora_alpha"); },
       "lora_config.lora_alpha"},
      {"decoder lora", [](auto& j) { j.erase("lora_config"); }, "add_decoder_lora"},
      {"initial rf", [](auto& j) { j.erase("initial_rf_when_moving_stm_to_ltm"); },
       "initial_rf_when_moving_stm_to_ltm"},
      {"bias", [](auto& j) { j["attention_bias"] = true; }, "attention_bias"},
  };
  for (const BadCase& bad : cases) {
    nlohmann::json j = FixtureJson();
    bad.mutate(j);
    auto c = Parse(j);
    ASSERT_FALSE(c.ok()) << bad.name;
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument) << bad.name;
    EXPECT_THAT(c.status().message(), HasSubstr(std::string("\"") + bad.field + "\""))
        << bad.name << ": " << c.status();
    EXPECT_THAT(c.status().message(), HasSubstr("test/config.json")) << bad.name;
  }
}

TEST(ModelConfigTest, RejectsBrokenFiles) {
  EXPECT_EQ(LoadModelConfig("/nonexistent/config.json").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_THAT(ParseModelConfig("{", "x.json").status().message(), HasSubstr("not valid JSON"));
  EXPECT_THAT(ParseModelConfig("[1]", "x.json").status().message(), HasSubstr("not a JSON object"));
}

}  // namespace
}  // namespace mplus::engine
