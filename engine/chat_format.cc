#include "engine/chat_format.h"

#include <optional>

#include "absl/strings/str_cat.h"
#include "engine/unicode_class.h"

namespace mplus::engine {

namespace {

constexpr std::string_view kStartHeader = "<|start_header_id|>";
constexpr std::string_view kEndHeader = "<|end_header_id|>";
constexpr std::string_view kEndOfTurn = "<|eot_id|>";

bool IsStripSpace(char32_t cp) {
  return (cp >= 0x1C && cp <= 0x1F) || ClassifyCodePoint(cp) == CharClass::kSpace;
}

absl::string_view AsAbsl(std::string_view s) { return {s.data(), s.size()}; }

}  // namespace

std::string_view TrimChatContent(std::string_view text) {
  size_t begin = 0;
  size_t end = 0;  // end of the last non-space character seen
  bool leading = true;
  for (size_t pos = 0; pos < text.size();) {
    const Utf8Char c = DecodeUtf8(text, pos);
    pos += c.len;
    if (IsStripSpace(c.cp)) {
      if (leading) begin = pos;
    } else {
      leading = false;
      end = pos;
    }
  }
  return leading ? std::string_view() : text.substr(begin, end - begin);
}

absl::Status ValidateChatMessages(absl::Span<const ChatMessage> messages) {
  if (messages.empty()) return absl::InvalidArgumentError("chat: no messages");
  for (size_t i = 0; i < messages.size(); ++i) {
    const std::string& role = messages[i].role;
    if (role != "system" && role != "user" && role != "assistant") {
      return absl::InvalidArgumentError(absl::StrCat("chat: message ", i, " has role \"", role,
                                                     "\"; want system, user or assistant"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> RenderLlama3ChatText(absl::Span<const ChatMessage> messages,
                                                 std::string_view bos_token) {
  if (absl::Status s = ValidateChatMessages(messages); !s.ok()) return s;
  std::string out(bos_token);
  for (const ChatMessage& m : messages) {
    absl::StrAppend(&out, AsAbsl(kStartHeader), m.role, AsAbsl(kEndHeader), "\n\n",
                    AsAbsl(TrimChatContent(m.content)), AsAbsl(kEndOfTurn));
  }
  absl::StrAppend(&out, AsAbsl(kStartHeader), "assistant", AsAbsl(kEndHeader), "\n\n");
  return out;
}

absl::StatusOr<std::vector<int32_t>> EncodeLlama3Chat(const Tokenizer& tokenizer,
                                                      absl::Span<const ChatMessage> messages) {
  if (absl::Status s = ValidateChatMessages(messages); !s.ok()) return s;
  const std::optional<int32_t> start = tokenizer.TokenId(kStartHeader);
  const std::optional<int32_t> end = tokenizer.TokenId(kEndHeader);
  const std::optional<int32_t> eot = tokenizer.TokenId(kEndOfTurn);
  if (!start || !end || !eot || !tokenizer.IsAddedToken(*start) || !tokenizer.IsAddedToken(*end) ||
      !tokenizer.IsAddedToken(*eot)) {
    return absl::FailedPreconditionError(
        "chat: the tokenizer lacks the Llama 3 chat tokens (<|start_header_id|>, "
        "<|end_header_id|>, <|eot_id|>)");
  }
  if (!tokenizer.bos_id()) {
    return absl::FailedPreconditionError("chat: the tokenizer has no bos_token");
  }
  std::vector<int32_t> ids = {*tokenizer.bos_id()};
  // Each text run between special tokens is encoded on its own, as the tokenizer does for the
  // rendered text: "\n\n" and the content form one run.
  const auto header = [&](std::string_view role) {
    ids.push_back(*start);
    tokenizer.EncodeOrdinaryTo(role, &ids);
    ids.push_back(*end);
  };
  for (const ChatMessage& m : messages) {
    header(m.role);
    tokenizer.EncodeOrdinaryTo(absl::StrCat("\n\n", AsAbsl(TrimChatContent(m.content))), &ids);
    ids.push_back(*eot);
  }
  header("assistant");
  tokenizer.EncodeOrdinaryTo("\n\n", &ids);
  return ids;
}

}  // namespace mplus::engine
