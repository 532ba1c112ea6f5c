// Client-side splitting of large texts into Inject-sized pieces, with stable request ids so a
// re-run of the same upload resumes idempotently.
#ifndef MPLUS_CLIENT_TEXT_PIECES_H_
#define MPLUS_CLIENT_TEXT_PIECES_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace mplus::client {

// Splits `text` into consecutive pieces of at most `max_bytes` bytes (max_bytes >= 4) that
// concatenate back to `text`. A cut goes at the start of a whitespace run when one lies in the
// second half of the window: Llama-3-style pre-tokenizers attach a leading space to the next
// word, so the pieces tokenize like the whole. Otherwise it goes at a UTF-8 character boundary.
std::vector<std::string_view> SplitIntoPieces(std::string_view text, size_t max_bytes);

// A stable 64-bit FNV-1a hash (the same on every run and machine, unlike absl::Hash).
uint64_t Fnv1a64(std::string_view data);

// The request_id of piece `index` of `text` split at `max_bytes`: derived from the content, so
// re-sending the same file to the same session skips the pieces already applied.
std::string PieceRequestId(std::string_view text, size_t max_bytes, size_t index);

}  // namespace mplus::client

#endif  // MPLUS_CLIENT_TEXT_PIECES_H_
