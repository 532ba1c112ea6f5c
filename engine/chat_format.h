// Llama 3 chat format, rendered natively (no Jinja) as the Llama 3 chat_template does:
//   <|begin_of_text|> then per message
//   <|start_header_id|>{role}<|end_header_id|>\n\n{content | trim}<|eot_id|>
//   and finally <|start_header_id|>assistant<|end_header_id|>\n\n
#ifndef MPLUS_ENGINE_CHAT_FORMAT_H_
#define MPLUS_ENGINE_CHAT_FORMAT_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/tokenizer.h"

namespace mplus::engine {

struct ChatMessage {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
};

// InvalidArgument for an empty conversation or a role other than system/user/assistant.
absl::Status ValidateChatMessages(absl::Span<const ChatMessage> messages);

// The template's output text, with `bos_token` before the first message.
absl::StatusOr<std::string> RenderLlama3ChatText(absl::Span<const ChatMessage> messages,
                                                 std::string_view bos_token);

// Token ids of the rendered conversation (BOS included; add no other). Equal to encoding
// RenderLlama3ChatText with special tokens parsed, except that special-token strings inside
// roles or contents stay plain text, so user text cannot inject control tokens.
// FailedPrecondition when the tokenizer lacks the Llama 3 chat tokens or a bos_token.
absl::StatusOr<std::vector<int32_t>> EncodeLlama3Chat(const Tokenizer& tokenizer,
                                                      absl::Span<const ChatMessage> messages);

// `text` without leading and trailing whitespace as Jinja's trim (Python's str.strip) sees it:
// Unicode White_Space plus U+001C..U+001F.
std::string_view TrimChatContent(std::string_view text);

}  // namespace mplus::engine

#endif  // MPLUS_ENGINE_CHAT_FORMAT_H_
