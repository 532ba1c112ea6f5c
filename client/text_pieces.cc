#include "client/text_pieces.h"

#include <algorithm>

#include "absl/strings/str_format.h"

namespace mplus::client {
namespace {

bool IsSpace(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

bool IsUtf8Continuation(char c) { return (static_cast<unsigned char>(c) & 0xC0) == 0x80; }

// Where to end the piece that starts at `begin`, given the hard limit `end` < text.size().
size_t CutPoint(std::string_view text, size_t begin, size_t end) {
  const size_t floor = begin + (end - begin) / 2;
  // The start of the last whitespace run that begins after `floor` and before `end`.
  for (size_t i = end; i > floor; --i) {
    if (IsSpace(text[i]) && !IsSpace(text[i - 1])) return i;
  }
  size_t cut = end;
  while (cut > begin + 1 && IsUtf8Continuation(text[cut])) --cut;
  return cut;
}

}  // namespace

std::vector<std::string_view> SplitIntoPieces(std::string_view text, size_t max_bytes) {
  max_bytes = std::max<size_t>(max_bytes, 4);  // room for one whole UTF-8 character
  std::vector<std::string_view> pieces;
  size_t begin = 0;
  while (text.size() - begin > max_bytes) {
    const size_t cut = CutPoint(text, begin, begin + max_bytes);
    pieces.push_back(text.substr(begin, cut - begin));
    begin = cut;
  }
  if (begin < text.size()) pieces.push_back(text.substr(begin));
  return pieces;
}

uint64_t Fnv1a64(std::string_view data) {
  uint64_t hash = 0xcbf29ce484222325ULL;
  for (char c : data) {
    hash ^= static_cast<unsigned char>(c);
    hash *= 0x100000001b3ULL;
  }
  return hash;
}

std::string PieceRequestId(std::string_view text, size_t max_bytes, size_t index) {
  return absl::StrFormat("f-%016x-%d-%d-%d", Fnv1a64(text), text.size(), max_bytes, index);
}

}  // namespace mplus::client
