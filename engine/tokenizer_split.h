// Pre-tokenizers: split text into the pieces that BPE encodes independently. Hand-written
// equivalents of the two byte-level BPE regexes (leftmost-first alternation, as in Oniguruma,
// Rust regex and PCRE), so that \s is exactly Unicode White_Space.
#ifndef MPLUS_ENGINE_TOKENIZER_SPLIT_H_
#define MPLUS_ENGINE_TOKENIZER_SPLIT_H_

#include <string_view>

#include "absl/functional/function_ref.h"

namespace mplus::engine {

enum class SplitPattern {
  // GPT-2 (ByteLevel use_regex=true):
  // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
  kGpt2,
  // Llama 3 / cl100k: (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
  // ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
  kLlama3,
};

// The regex source of `pattern`, as tokenizer.json spells it.
std::string_view SplitPatternRegex(SplitPattern pattern);

// Calls `piece` for each consecutive non-empty piece of `text`, in order; the pieces
// concatenate to `text`. Bytes that are not valid UTF-8 count as punctuation-like characters.
void SplitText(SplitPattern pattern, std::string_view text,
               absl::FunctionRef<void(std::string_view)> piece);

}  // namespace mplus::engine

#endif  // MPLUS_ENGINE_TOKENIZER_SPLIT_H_
