#include "engine/text_stream.h"

#include <algorithm>
#include <utility>

#include "engine/unicode_class.h"

namespace mplus::engine {

namespace {

constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

}  // namespace

TextStream::TextStream(const Tokenizer& tokenizer, std::vector<std::string> stop_strings)
    : tokenizer_(tokenizer), stops_(std::move(stop_strings)) {
  std::erase_if(stops_, [](const std::string& s) { return s.empty(); });
}

std::string TextStream::Push(int32_t id) {
  if (stopped_) return {};
  pending_.append(tokenizer_.TokenBytes(id));

  // Earliest complete stop string. Returned text never holds the start of one (see below),
  // so any occurrence lies inside the pending bytes.
  size_t stop_at = std::string::npos;
  for (const std::string& stop : stops_) stop_at = std::min(stop_at, pending_.find(stop));
  if (stop_at != std::string::npos) {
    stopped_ = true;
    std::string out = Release(stop_at, /*final=*/true);
    pending_.clear();
    return out;
  }

  // Hold back the longest pending suffix that could still grow into a stop string.
  size_t hold = 0;
  for (const std::string& stop : stops_) {
    for (size_t len = std::min(stop.size() - 1, pending_.size()); len > hold; --len) {
      if (pending_.compare(pending_.size() - len, len, stop, 0, len) == 0) {
        hold = len;
        break;
      }
    }
  }
  return Release(pending_.size() - hold, /*final=*/false);
}

std::string TextStream::Finish() {
  if (stopped_) return {};
  return Release(pending_.size(), /*final=*/true);
}

std::string TextStream::Release(size_t n, bool final) {
  const std::string_view bytes = std::string_view(pending_).substr(0, n);
  std::string out;
  out.reserve(n);
  size_t pos = 0;
  while (pos < n) {
    const int need = Utf8SequenceLength(static_cast<unsigned char>(bytes[pos]));
    const int valid = Utf8ValidPrefixLength(bytes, pos);
    if (need > 0 && valid == need) {
      out.append(bytes.substr(pos, need));
      pos += need;
    } else if (!final && pos + valid == pending_.size()) {
      break;  // a character cut short by the end of the bytes so far: wait for the rest
    } else {
      out.append(kReplacement);
      pos += std::max(valid, 1);
    }
  }
  pending_.erase(0, pos);
  return out;
}

}  // namespace mplus::engine
