#include "engine/tokenizer.h"

#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/tokenizer_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace mplus::engine {
namespace {

using ::testing::ElementsAre;

const std::string kFixtures = MPLUS_FIXTURES_DIR;

const Tokenizer& Llama3() {
  static const Tokenizer* tok = [] {
    auto t = Tokenizer::Load(kFixtures + "/llama3-tokenizer/tokenizer.json");
    EXPECT_TRUE(t.ok()) << t.status();
    return t.ok() ? t->release() : nullptr;
  }();
  return *tok;
}

std::vector<std::string> Pieces(SplitPattern pattern, std::string_view text) {
  std::vector<std::string> out;
  SplitText(pattern, text, [&](std::string_view p) { out.emplace_back(p); });
  return out;
}

TEST(TokenizerTest, Llama3MatchesExpectedJsonl) {
  std::ifstream in(kFixtures + "/llama3-tokenizer/expected.jsonl");
  ASSERT_TRUE(in) << "missing expected.jsonl";
  const Tokenizer& tok = Llama3();
  std::string line;
  int lineno = 0;
  int failures = 0;
  while (std::getline(in, line)) {
    ++lineno;
    const auto rec = nlohmann::json::parse(line);
    const std::string text = rec["text"];
    const auto ids = rec["ids"].get<std::vector<int32_t>>();
    const auto ordinary = rec["ids_ordinary"].get<std::vector<int32_t>>();
    const std::string decoded = rec["decoded"];
    const std::string where =
        absl::StrCat("line ", lineno, " (", rec["category"].get<std::string>(),
                     "): ", nlohmann::json(text).dump().substr(0, 120));
    const std::vector<int32_t> got_ordinary = tok.Encode(text, /*parse_special=*/false);
    const std::vector<int32_t> got_ids = tok.Encode(text, /*parse_special=*/true);
    const bool ok = got_ordinary == ordinary && got_ids == ids && tok.Decode(ids) == decoded;
    EXPECT_EQ(got_ordinary, ordinary) << where;
    EXPECT_EQ(got_ids, ids) << where;
    EXPECT_EQ(tok.Decode(ids), decoded) << where;
    failures += ok ? 0 : 1;
  }
  EXPECT_EQ(lineno, 295);
  EXPECT_EQ(failures, 0);
}

TEST(TokenizerTest, Llama3VocabAndSpecials) {
  const Tokenizer& tok = Llama3();
  EXPECT_EQ(tok.vocab_size(), 128256);
  EXPECT_EQ(tok.bos_id(), 128000);
  EXPECT_EQ(tok.eos_id(), 128001);
  EXPECT_EQ(tok.TokenId("<|eot_id|>"), 128009);
  EXPECT_EQ(tok.TokenId("<|eom_id|>"), std::nullopt);
  EXPECT_TRUE(tok.IsAddedToken(128009));
  EXPECT_FALSE(tok.IsAddedToken(100));
  EXPECT_EQ(tok.TokenBytes(128009), "<|eot_id|>");
  EXPECT_EQ(tok.TokenBytes(-1), "");
  EXPECT_EQ(tok.TokenBytes(128256), "");
  EXPECT_EQ(tok.TokenBytes(*tok.TokenId(" the")), " the");
  EXPECT_THAT(tok.Encode("a<|eot_id|>b", true), ElementsAre(64, 128009, 65));
  EXPECT_TRUE(tok.Encode("").empty());
}

TEST(TokenizerTest, Llama3Split) {
  const auto p = [](std::string_view t) { return Pieces(SplitPattern::kLlama3, t); };
  EXPECT_THAT(p("a   b"), ElementsAre("a", "  ", " b"));
  EXPECT_THAT(p("a   "), ElementsAre("a", "   "));
  EXPECT_THAT(p("I'LL DON'TS"), ElementsAre("I", "'LL", " DON", "'T", "S"));
  EXPECT_THAT(p("x'\u017fiyordu"), ElementsAre("x", "'\u017f", "iyordu"));
  EXPECT_THAT(p(".\n\nHi"), ElementsAre(".\n\n", "Hi"));
  EXPECT_THAT(p("12345"), ElementsAre("123", "45"));
  EXPECT_THAT(p("  \n  x"), ElementsAre("  \n", " ", " x"));
  EXPECT_THAT(p("  \ufefffoo"), ElementsAre(" ", " \ufeff", "foo"));  // U+FEFF is Cf
  EXPECT_THAT(p("  \u0085foo"), ElementsAre("  ", "\u0085foo"));
}

TEST(TokenizerTest, Gpt2Split) {
  const auto p = [](std::string_view t) { return Pieces(SplitPattern::kGpt2, t); };
  EXPECT_THAT(p("Hello world's 12345 !!"), ElementsAre("Hello", " world", "'s", " 12345", " !!"));
  EXPECT_THAT(p("I'LL"), ElementsAre("I", "'", "LL"));
  EXPECT_THAT(p("a   b\n"), ElementsAre("a", "  ", " b", "\n"));
  EXPECT_THAT(p("\tx"), ElementsAre("\t", "x"));
  EXPECT_THAT(p(".\n\nHi"), ElementsAre(".", "\n", "\n", "Hi"));
  // Cases checked against Hugging Face tokenizers 0.23: case-sensitive contractions, U+180E is
  // not whitespace, only U+0020 joins the next word.
  EXPECT_THAT(p("don'T '\u017f"), ElementsAre("don", "'", "T", " '", "\u017f"));
  EXPECT_THAT(p("\u180e x\u00a0\u00a0y"), ElementsAre("\u180e", " x", "\u00a0", "\u00a0", "y"));
  EXPECT_THAT(p("\u0661\u0662\u0663 \u00bd\u216b"),
              ElementsAre("\u0661\u0662\u0663", " \u00bd\u216b"));
}

TEST(TokenizerTest, InvalidUtf8IsEncodedAsBytes) {
  const Tokenizer& tok = Llama3();
  const std::string text = "ab\xff\xc3(z\xe2\x82";
  EXPECT_EQ(tok.Decode(tok.Encode(text)), text);
}

TEST(TokenizerTest, TinyGpt2Tokenizer) {
  auto tok = Tokenizer::Load(kFixtures + "/tiny-mplus/tokenizer.json");
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->vocab_size(), 384);
  EXPECT_EQ((*tok)->bos_id(), 1);
  EXPECT_EQ((*tok)->eos_id(), 2);
  const std::string text = "the cat sat on the mat. <|pad|> \xc3\xa9t\xc3\xa9!";
  const std::vector<int32_t> ids = (*tok)->Encode(text);
  EXPECT_EQ((*tok)->Decode(ids), text);
  EXPECT_LT(ids.size(), text.size());  // some merges applied
  EXPECT_THAT((*tok)->Encode("<|pad|>x", true), ElementsAre(0, *(*tok)->TokenId("x")));
}

TEST(TokenizerTest, LoadErrors) {
  EXPECT_EQ(Tokenizer::Load("/nonexistent/tokenizer.json").status().code(),
            absl::StatusCode::kNotFound);
  const std::string path = ::testing::TempDir() + "/bad_tokenizer.json";
  std::ofstream(path) << R"({"model": {"type": "Unigram"}})";
  EXPECT_EQ(Tokenizer::Load(path).status().code(), absl::StatusCode::kUnimplemented);
  std::ofstream(path) << "{not json";
  EXPECT_EQ(Tokenizer::Load(path).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace mplus::engine
