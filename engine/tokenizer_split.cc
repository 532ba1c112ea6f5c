#include "engine/tokenizer_split.h"

#include <cstddef>

#include "engine/unicode_class.h"

namespace mplus::engine {

namespace {

constexpr char32_t kLongS = 0x017F;  // ſ: simple case folding maps it to 's'.

struct Char {
  char32_t cp;
  int len;
  CharClass cls;
};

class Scanner {
 public:
  explicit Scanner(std::string_view text) : text_(text) {}

  size_t size() const { return text_.size(); }

  // The character at `pos`; a zero-length kOther past the end.
  Char At(size_t pos) const {
    if (pos >= text_.size()) return {0, 0, CharClass::kOther};
    const Utf8Char c = DecodeUtf8(text_, pos);
    return {c.cp, c.len, ClassifyCodePoint(c.cp)};
  }

  // End of the run of characters of class `cls` starting at `pos`, at most `max` of them.
  size_t SkipClass(size_t pos, CharClass cls, int max = -1) const {
    for (int n = 0; pos < text_.size() && n != max; ++n) {
      const Char c = At(pos);
      if (c.cls != cls) break;
      pos += c.len;
    }
    return pos;
  }

  size_t SkipNewlines(size_t pos) const {
    while (pos < text_.size() && (text_[pos] == '\r' || text_[pos] == '\n')) ++pos;
    return pos;
  }

  // Length of a contraction ('s 't 're 've 'm 'll 'd) at `pos`, or 0. The alternatives are
  // tried in that order; `fold_case` matches them with Unicode simple case folding.
  size_t Contraction(size_t pos, bool fold_case) const {
    if (text_[pos] != '\'') return 0;
    static constexpr std::string_view kSuffixes[] = {"s", "t", "re", "ve", "m", "ll", "d"};
    for (std::string_view suffix : kSuffixes) {
      size_t p = pos + 1;
      bool ok = true;
      for (char want : suffix) {
        const Char c = At(p);
        if (c.len == 0 || !SameLetter(c.cp, want, fold_case)) {
          ok = false;
          break;
        }
        p += c.len;
      }
      if (ok) return p - pos;
    }
    return 0;
  }

 private:
  static bool SameLetter(char32_t cp, char want, bool fold_case) {
    if (cp == static_cast<char32_t>(want)) return true;
    if (!fold_case) return false;
    if (cp == static_cast<char32_t>(want - 'a' + 'A')) return true;
    return want == 's' && cp == kLongS;
  }

  std::string_view text_;
};

// Shared tail of both patterns for a whitespace run at `pos`: \s+(?!\S)|\s+. Before a
// non-space, the run's last character is left to start the next piece (unless it is the only
// one).
size_t WhitespaceRun(const Scanner& s, size_t pos) {
  size_t last = pos;
  size_t end = pos;
  while (end < s.size()) {
    const Char c = s.At(end);
    if (c.cls != CharClass::kSpace) break;
    last = end;
    end += c.len;
  }
  if (end == s.size() || last == pos) return end;
  return last;
}

size_t NextGpt2(const Scanner& s, size_t pos) {
  if (size_t n = s.Contraction(pos, /*fold_case=*/false)) return pos + n;
  Char c = s.At(pos);
  size_t start = pos;
  if (c.cp == ' ') {
    const Char next = s.At(pos + 1);
    if (next.len > 0 && next.cls != CharClass::kSpace) {
      start = pos + 1;
      c = next;
    }
  }
  if (c.cls != CharClass::kSpace) return s.SkipClass(start, c.cls);
  return WhitespaceRun(s, pos);
}

size_t NextLlama3(const Scanner& s, size_t pos) {
  if (size_t n = s.Contraction(pos, /*fold_case=*/true)) return pos + n;
  const Char c = s.At(pos);
  // [^\r\n\p{L}\p{N}]?\p{L}+
  if (c.cls == CharClass::kLetter) return s.SkipClass(pos, CharClass::kLetter);
  if (c.cls != CharClass::kNumber && c.cp != '\r' && c.cp != '\n' &&
      s.At(pos + c.len).cls == CharClass::kLetter) {
    return s.SkipClass(pos + c.len, CharClass::kLetter);
  }
  // \p{N}{1,3}
  if (c.cls == CharClass::kNumber) return s.SkipClass(pos, CharClass::kNumber, 3);
  // ' ?[^\s\p{L}\p{N}]+[\r\n]*'
  if (c.cls == CharClass::kOther) {
    return s.SkipNewlines(s.SkipClass(pos, CharClass::kOther));
  }
  if (c.cp == ' ') {
    const Char next = s.At(pos + 1);
    if (next.len > 0 && next.cls == CharClass::kOther) {
      return s.SkipNewlines(s.SkipClass(pos + 1, CharClass::kOther));
    }
  }
  // \s*[\r\n]+: up to the run's last newline, when the run has one.
  size_t end = pos;
  size_t after_newline = 0;
  while (end < s.size()) {
    const Char w = s.At(end);
    if (w.cls != CharClass::kSpace) break;
    end += w.len;
    if (w.cp == '\r' || w.cp == '\n') after_newline = end;
  }
  if (after_newline != 0) return after_newline;
  return WhitespaceRun(s, pos);
}

}  // namespace

std::string_view SplitPatternRegex(SplitPattern pattern) {
  switch (pattern) {
    case SplitPattern::kGpt2:
      return R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
    case SplitPattern::kLlama3:
      return R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
  }
  return {};
}

void SplitText(SplitPattern pattern, std::string_view text,
               absl::FunctionRef<void(std::string_view)> piece) {
  const Scanner s(text);
  size_t pos = 0;
  while (pos < text.size()) {
    const size_t end = pattern == SplitPattern::kGpt2 ? NextGpt2(s, pos) : NextLlama3(s, pos);
    piece(text.substr(pos, end - pos));
    pos = end;
  }
}

}  // namespace mplus::engine
