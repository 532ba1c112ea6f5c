// Incremental detokenization for streaming: turns generated token ids into UTF-8 text pieces,
// never splitting a character and never emitting text that may turn out to be part of a stop
// string.
#ifndef MPLUS_ENGINE_TEXT_STREAM_H_
#define MPLUS_ENGINE_TEXT_STREAM_H_

#include <cstdint>
#include <string>
#include <vector>

#include "engine/tokenizer.h"

namespace mplus::engine {

// Not thread-safe; one per generation. The tokenizer must outlive it.
class TextStream {
 public:
  // Empty stop strings are ignored.
  TextStream(const Tokenizer& tokenizer, std::vector<std::string> stop_strings);

  // Appends a generated token and returns the text that became final (often empty). Once a
  // stop string is complete, returns the text before it, sets stopped(), and ignores every
  // later call. Invalid UTF-8 that can never complete comes out as U+FFFD per maximal invalid
  // subsequence, as Rust's String::from_utf8_lossy does.
  std::string Push(int32_t id);

  // The text still held back at the end of generation: a partial stop-string match is
  // released, and an incomplete UTF-8 tail becomes U+FFFD. Empty after stopped().
  std::string Finish();

  bool stopped() const { return stopped_; }

 private:
  // Moves the first `n` pending bytes to the result, decoding them lossily; with `final`
  // false, an incomplete character at the end stays pending.
  std::string Release(size_t n, bool final);

  const Tokenizer& tokenizer_;
  std::vector<std::string> stops_;
  std::string pending_;  // bytes not yet returned
  bool stopped_ = false;
};

}  // namespace mplus::engine

#endif  // MPLUS_ENGINE_TEXT_STREAM_H_
