#include <string>
#include <string_view>
#include <vector>

#include "client/text_pieces.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace mplus::client {
namespace {

using ::testing::ElementsAre;

std::string Join(const std::vector<std::string_view>& pieces) {
  std::string out;
  for (std::string_view p : pieces) out += p;
  return out;
}

TEST(SplitIntoPiecesTest, SmallTextIsOnePiece) {
  EXPECT_THAT(SplitIntoPieces("hello world", 100), ElementsAre("hello world"));
  EXPECT_TRUE(SplitIntoPieces("", 100).empty());
}

TEST(SplitIntoPiecesTest, CutsBeforeWhitespaceSoTheNextWordKeepsItsSpace) {
  EXPECT_THAT(SplitIntoPieces("aaaa bbbb cccc dddd", 9),
              ElementsAre("aaaa bbbb", " cccc", " dddd"));
}

TEST(SplitIntoPiecesTest, CutsAtTheStartOfAWhitespaceRun) {
  EXPECT_THAT(SplitIntoPieces("aaaaaa\n\n\nbbbbbb", 9), ElementsAre("aaaaaa", "\n\n\nbbbbbb"));
}

TEST(SplitIntoPiecesTest, NeverSplitsAUtf8Character) {
  // No whitespace: cuts fall on character boundaries of these 3-byte characters.
  const std::string text = "\xE2\x82\xAC\xE2\x82\xAC\xE2\x82\xAC\xE2\x82\xAC";  // 4 x U+20AC
  std::vector<std::string_view> pieces = SplitIntoPieces(text, 7);
  EXPECT_THAT(pieces, ElementsAre("\xE2\x82\xAC\xE2\x82\xAC", "\xE2\x82\xAC\xE2\x82\xAC"));
}

TEST(SplitIntoPiecesTest, PiecesRespectTheLimitAndConcatenateBack) {
  std::string text;
  for (int i = 0; i < 2000; ++i) text += (i % 7 == 0) ? " \xC3\xA9t\xC3\xA9 " : "word ";
  for (size_t limit : {4u, 5u, 17u, 64u, 1000u}) {
    std::vector<std::string_view> pieces = SplitIntoPieces(text, limit);
    EXPECT_EQ(Join(pieces), text);
    for (std::string_view p : pieces) {
      EXPECT_LE(p.size(), limit);
      EXPECT_FALSE(p.empty());
    }
  }
}

TEST(PieceRequestIdTest, StableAndDistinct) {
  EXPECT_EQ(Fnv1a64(""), 0xcbf29ce484222325ULL);
  EXPECT_EQ(Fnv1a64("a"), 0xaf63dc4c8601ec8cULL);
  const std::string id = PieceRequestId("abc", 10, 3);
  EXPECT_EQ(id, PieceRequestId("abc", 10, 3));
  EXPECT_NE(id, PieceRequestId("abc", 10, 4));
  EXPECT_NE(id, PieceRequestId("abd", 10, 3));
  EXPECT_NE(id, PieceRequestId("abc", 11, 3));
  EXPECT_LE(id.size(), 128u);
}

}  // namespace
}  // namespace mplus::client
