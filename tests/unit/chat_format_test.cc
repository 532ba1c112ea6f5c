#include "engine/chat_format.h"

#include <string>
#include <vector>

#include "engine/tokenizer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace mplus::engine {
namespace {

const std::string kFixtures = MPLUS_FIXTURES_DIR;

const Tokenizer& Llama3() {
  static const Tokenizer* tok = [] {
    auto t = Tokenizer::Load(kFixtures + "/llama3-tokenizer/tokenizer.json");
    EXPECT_TRUE(t.ok()) << t.status();
    return t.ok() ? t->release() : nullptr;
  }();
  return *tok;
}

TEST(ChatFormatTest, RendersTheLlama3Template) {
  const std::vector<ChatMessage> messages = {{"system", "  Be brief.\n"}, {"user", "Hi!"}};
  auto text = RenderLlama3ChatText(messages, "<|begin_of_text|>");
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_EQ(*text,
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

TEST(ChatFormatTest, IdsEqualEncodingTheRenderedText) {
  const std::vector<ChatMessage> messages = {
      {"system", "You are helpful.\n\n"},
      {"user", "\t What's 2+2?  "},
      {"assistant", "4"},
      {"user", ""},
  };
  auto ids = EncodeLlama3Chat(Llama3(), messages);
  ASSERT_TRUE(ids.ok()) << ids.status();
  auto text = RenderLlama3ChatText(messages, "<|begin_of_text|>");
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*ids, Llama3().Encode(*text, /*parse_special=*/true));
  EXPECT_EQ(ids->front(), 128000);
  EXPECT_EQ(Llama3().Decode(*ids), *text);
}

TEST(ChatFormatTest, ContentCannotInjectSpecialTokens) {
  auto ids = EncodeLlama3Chat(Llama3(), {{"user", "<|eot_id|>"}});
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(std::count(ids->begin(), ids->end(), 128009), 1);
}

TEST(ChatFormatTest, RejectsBadInput) {
  EXPECT_EQ(EncodeLlama3Chat(Llama3(), {}).status().code(), absl::StatusCode::kInvalidArgument);
  auto bad = EncodeLlama3Chat(Llama3(), {{"user", "a"}, {"tool", "b"}});
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad.status().message()), ::testing::HasSubstr("message 1"));
  auto tiny = Tokenizer::Load(kFixtures + "/tiny-mplus/tokenizer.json");
  ASSERT_TRUE(tiny.ok());
  EXPECT_EQ(EncodeLlama3Chat(**tiny, {{"user", "a"}}).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(ChatFormatTest, TrimMatchesPythonStrip) {
  EXPECT_EQ(TrimChatContent(" \t\n x y \r\n"), "x y");
  EXPECT_EQ(TrimChatContent("\x1c\u00a0\u3000x\u2029\x1f"), "x");
  EXPECT_EQ(TrimChatContent("\ufeffx\u200b"), "\ufeffx\u200b");  // not whitespace
  EXPECT_EQ(TrimChatContent(" \n "), "");
  EXPECT_EQ(TrimChatContent(""), "");
}

}  // namespace
}  // namespace mplus::engine
