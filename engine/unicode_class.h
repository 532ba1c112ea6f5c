// Unicode code point classes used by the tokenizer's pre-tokenizer regexes, and UTF-8 decoding.
#ifndef MPLUS_ENGINE_UNICODE_CLASS_H_
#define MPLUS_ENGINE_UNICODE_CLASS_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace mplus::engine {

// The classes the regexes distinguish: \p{L} (Lu Ll Lt Lm Lo), \p{N} (Nd Nl No), \s (Unicode
// White_Space exactly) and everything else (marks, punctuation, symbols, controls, invalid
// bytes). Tables come from Unicode 14 (engine/unicode_tables_gen.py).
enum class CharClass : uint8_t { kOther, kLetter, kNumber, kSpace };

CharClass ClassifyCodePoint(char32_t cp);

// Returned for a byte that does not start a valid UTF-8 sequence.
inline constexpr char32_t kInvalidCodePoint = 0xFFFFFFFF;

struct Utf8Char {
  char32_t cp;  // kInvalidCodePoint when the bytes at the position are not valid UTF-8
  int len;      // bytes consumed (1 for an invalid byte)
};

// Decodes the code point at text[pos] (pos < text.size()). Rejects overlong forms, surrogates
// and code points above U+10FFFF; an invalid byte decodes as {kInvalidCodePoint, 1}.
Utf8Char DecodeUtf8(std::string_view text, size_t pos);

// Length of the longest prefix of text[pos..] that is the start of a valid UTF-8 sequence
// (0 when text[pos] cannot start one), capped by the bytes available. Equal to the sequence
// length when the sequence is complete.
int Utf8ValidPrefixLength(std::string_view text, size_t pos);

// Bytes of a complete UTF-8 sequence starting with `lead` (1-4), or 0 for a byte that cannot
// start one.
int Utf8SequenceLength(unsigned char lead);

// Appends the UTF-8 encoding of a valid code point.
void AppendUtf8(char32_t cp, std::string* out);

namespace internal {
struct UnicodeRange {
  char32_t lo;
  char32_t hi;
  CharClass cls;
};
extern const UnicodeRange kUnicodeRanges[];
extern const int kNumUnicodeRanges;
}  // namespace internal

}  // namespace mplus::engine

#endif  // MPLUS_ENGINE_UNICODE_CLASS_H_
