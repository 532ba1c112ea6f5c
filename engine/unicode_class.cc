#include "engine/unicode_class.h"

#include <algorithm>

namespace mplus::engine {

namespace {

// Fast path for ASCII, which dominates most text.
constexpr CharClass AsciiClass(unsigned c) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) return CharClass::kLetter;
  if (c >= '0' && c <= '9') return CharClass::kNumber;
  if (c == ' ' || (c >= 0x09 && c <= 0x0D)) return CharClass::kSpace;
  return CharClass::kOther;
}

// Allowed range of the second byte of a sequence starting with `lead` (Unicode Table 3-7).
void SecondByteRange(unsigned char lead, unsigned char* lo, unsigned char* hi) {
  *lo = 0x80;
  *hi = 0xBF;
  if (lead == 0xE0) *lo = 0xA0;
  if (lead == 0xED) *hi = 0x9F;
  if (lead == 0xF0) *lo = 0x90;
  if (lead == 0xF4) *hi = 0x8F;
}

}  // namespace

CharClass ClassifyCodePoint(char32_t cp) {
  if (cp < 0x80) return AsciiClass(cp);
  const internal::UnicodeRange* begin = internal::kUnicodeRanges;
  const internal::UnicodeRange* end = begin + internal::kNumUnicodeRanges;
  const internal::UnicodeRange* it = std::upper_bound(
      begin, end, cp, [](char32_t c, const internal::UnicodeRange& r) { return c < r.lo; });
  if (it == begin) return CharClass::kOther;
  --it;
  return cp <= it->hi ? it->cls : CharClass::kOther;
}

int Utf8SequenceLength(unsigned char lead) {
  if (lead < 0x80) return 1;
  if (lead >= 0xC2 && lead <= 0xDF) return 2;
  if (lead >= 0xE0 && lead <= 0xEF) return 3;
  if (lead >= 0xF0 && lead <= 0xF4) return 4;
  return 0;
}

int Utf8ValidPrefixLength(std::string_view text, size_t pos) {
  const auto lead = static_cast<unsigned char>(text[pos]);
  const int need = Utf8SequenceLength(lead);
  if (need <= 1) return need;
  unsigned char lo, hi;
  SecondByteRange(lead, &lo, &hi);
  int k = 1;
  while (k < need && pos + k < text.size()) {
    const auto b = static_cast<unsigned char>(text[pos + k]);
    if (b < lo || b > hi) break;
    lo = 0x80;
    hi = 0xBF;
    ++k;
  }
  return k;
}

Utf8Char DecodeUtf8(std::string_view text, size_t pos) {
  const auto lead = static_cast<unsigned char>(text[pos]);
  if (lead < 0x80) return {lead, 1};
  const int need = Utf8SequenceLength(lead);
  if (need == 0 || Utf8ValidPrefixLength(text, pos) != need) return {kInvalidCodePoint, 1};
  char32_t cp = lead & (0x7F >> need);
  for (int i = 1; i < need; ++i)
    cp = (cp << 6) | (static_cast<unsigned char>(text[pos + i]) & 0x3F);
  return {cp, need};
}

void AppendUtf8(char32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

}  // namespace mplus::engine
