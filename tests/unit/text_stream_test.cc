#include "engine/text_stream.h"

#include <memory>
#include <string>
#include <vector>

#include "engine/tokenizer.h"
#include "gtest/gtest.h"

namespace mplus::engine {
namespace {

// The tiny checkpoint's GPT-2 tokenizer has a token for every single byte.
const Tokenizer& Tiny() {
  static const Tokenizer* tok = [] {
    auto t = Tokenizer::Load(std::string(MPLUS_FIXTURES_DIR) + "/tiny-mplus/tokenizer.json");
    EXPECT_TRUE(t.ok()) << t.status();
    return t.ok() ? t->release() : nullptr;
  }();
  return *tok;
}

// Token ids spelling `bytes` one byte per token.
std::vector<int32_t> ByteTokens(std::string_view bytes) {
  std::vector<int32_t> ids;
  for (char c : bytes) ids.push_back(*Tiny().TokenId(std::string(1, c)));
  return ids;
}

// Pushes every token; returns the pieces, with Finish()'s output last.
std::vector<std::string> Stream(TextStream& stream, const std::vector<int32_t>& ids) {
  std::vector<std::string> pieces;
  for (int32_t id : ids) pieces.push_back(stream.Push(id));
  pieces.push_back(stream.Finish());
  return pieces;
}

std::string Join(const std::vector<std::string>& pieces) {
  std::string out;
  for (const std::string& p : pieces) out += p;
  return out;
}

TEST(TextStreamTest, HoldsPartialCharacters) {
  TextStream stream(Tiny(), {});
  // "é" (C3 A9) and "€" (E2 82 AC), one byte per token.
  const auto pieces = Stream(stream, ByteTokens("a\xC3\xA9\xE2\x82\xAC"));
  EXPECT_EQ(pieces, (std::vector<std::string>{"a", "", "\xC3\xA9", "", "", "\xE2\x82\xAC", ""}));
}

TEST(TextStreamTest, MultiByteTokens) {
  TextStream stream(Tiny(), {});
  const std::vector<int32_t> ids = Tiny().Encode("the cat sat");
  EXPECT_EQ(Join(Stream(stream, ids)), "the cat sat");
}

TEST(TextStreamTest, InvalidBytesBecomeReplacementCharacters) {
  TextStream stream(Tiny(), {});
  // FF is never valid; E2 82 followed by 'x' cannot complete; a trailing F0 9F is cut short.
  const auto pieces = Stream(stream, ByteTokens("\xFF"
                                                "a\xE2\x82x\xF0\x9F"));
  EXPECT_EQ(pieces[0], "\xEF\xBF\xBD");
  EXPECT_EQ(Join(pieces),
            "\xEF\xBF\xBD"
            "a\xEF\xBF\xBDx\xEF\xBF\xBD");
  EXPECT_EQ(pieces.back(), "\xEF\xBF\xBD");  // the incomplete tail, flushed by Finish
}

TEST(TextStreamTest, StopStringAcrossTokens) {
  TextStream stream(Tiny(), {"STOP"});
  const auto pieces = Stream(stream, ByteTokens("abST"));
  // "ST" is held back until it is known not to start "STOP".
  EXPECT_EQ(pieces, (std::vector<std::string>{"a", "b", "", "", "ST"}));

  TextStream stopping(Tiny(), {"STOP"});
  std::string out;
  for (int32_t id : ByteTokens("xSTSTOPafter")) {
    out += stopping.Push(id);
    if (stopping.stopped()) break;
  }
  EXPECT_TRUE(stopping.stopped());
  EXPECT_EQ(out, "xST");
  EXPECT_EQ(stopping.Push(*Tiny().TokenId("a")), "");
  EXPECT_EQ(stopping.Finish(), "");
}

TEST(TextStreamTest, EarliestOfSeveralStopStrings) {
  TextStream stream(Tiny(), {"cd", "bcdx", ""});
  std::string out;
  for (int32_t id : ByteTokens("abcdx")) out += stream.Push(id);
  EXPECT_TRUE(stream.stopped());
  EXPECT_EQ(out, "ab");
}

TEST(TextStreamTest, StopStringInsideOneToken) {
  TextStream stream(Tiny(), {"at"});
  std::string out;
  for (int32_t id : Tiny().Encode("the cat sat")) out += stream.Push(id);
  EXPECT_TRUE(stream.stopped());
  EXPECT_EQ(out, "the c");
}

TEST(TextStreamTest, NoStopMeansEverythingIsReleased) {
  TextStream stream(Tiny(), {"zz"});
  const auto pieces = Stream(stream, ByteTokens("azbz"));
  EXPECT_FALSE(stream.stopped());
  EXPECT_EQ(pieces, (std::vector<std::string>{"a", "", "zb", "", "z"}));
}

}  // namespace
}  // namespace mplus::engine
