#include "engine/tokenizer.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <queue>
#include <sstream>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/unicode_class.h"
#include "nlohmann/json.hpp"

namespace mplus::engine {

namespace {

using Json = nlohmann::json;

// Debian's Abseil has its own string_view, which its hash maps and StrCat take.
absl::string_view AsAbsl(std::string_view s) { return {s.data(), s.size()}; }

// GPT-2's bytes_to_unicode: printable Latin-1 bytes map to themselves, the other bytes to
// U+0100 onwards in byte order. Vocabulary keys and merges are written in these symbols.
struct ByteLevelMap {
  char32_t byte_to_cp[256];
  int16_t cp_to_byte[512];  // -1: not a byte-level symbol

  ByteLevelMap() {
    std::fill(std::begin(cp_to_byte), std::end(cp_to_byte), int16_t{-1});
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      byte_to_cp[b] = printable ? b : next++;
      cp_to_byte[byte_to_cp[b]] = static_cast<int16_t>(b);
    }
  }
};

const ByteLevelMap& ByteLevel() {
  static const ByteLevelMap* map = new ByteLevelMap();
  return *map;
}

// Raw bytes of a byte-level symbol string, or nullopt if it has other characters.
std::optional<std::string> ByteLevelToBytes(std::string_view symbols) {
  std::string out;
  out.reserve(symbols.size());
  for (size_t pos = 0; pos < symbols.size();) {
    const Utf8Char c = DecodeUtf8(symbols, pos);
    if (c.cp >= 512 || ByteLevel().cp_to_byte[c.cp] < 0) return std::nullopt;
    out.push_back(static_cast<char>(ByteLevel().cp_to_byte[c.cp]));
    pos += c.len;
  }
  return out;
}

absl::StatusOr<Json> ReadJsonFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::stringstream buffer;
  buffer << in.rdbuf();
  Json json = Json::parse(buffer.str(), nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded()) return absl::InvalidArgumentError(absl::StrCat(path, ": invalid JSON"));
  return json;
}

bool IsNullOrFalse(const Json& j, const char* key) {
  return !j.contains(key) || j[key].is_null() || (j[key].is_boolean() && !j[key].get<bool>());
}

bool IsNullOrEmptyString(const Json& j, const char* key) {
  return !j.contains(key) || j[key].is_null() ||
         (j[key].is_string() && j[key].get_ref<const std::string&>().empty());
}

bool BoolField(const Json& j, const char* key) {
  return j.contains(key) && j[key].is_boolean() && j[key].get<bool>();
}

bool IsType(const Json& j, std::string_view type) {
  return j.is_object() && j.contains("type") && j["type"].is_string() &&
         j["type"].get_ref<const std::string&>() == type;
}

// ByteLevel without a prefix space; use_regex defaults to true, as in Hugging Face tokenizers.
bool IsPlainByteLevel(const Json& j, bool use_regex) {
  const bool regex = !j.contains("use_regex") || BoolField(j, "use_regex");
  return IsType(j, "ByteLevel") && !BoolField(j, "add_prefix_space") && regex == use_regex;
}

absl::StatusOr<SplitPattern> ParsePreTokenizer(const Json& pre) {
  if (IsPlainByteLevel(pre, /*use_regex=*/true)) return SplitPattern::kGpt2;
  if (IsType(pre, "Sequence") && pre.contains("pretokenizers") && pre["pretokenizers"].is_array() &&
      pre["pretokenizers"].size() == 2) {
    const Json& split = pre["pretokenizers"][0];
    if (IsType(split, "Split") && split.contains("pattern") && split["pattern"].is_object() &&
        split["pattern"].contains("Regex") && split["pattern"]["Regex"].is_string() &&
        split["pattern"]["Regex"].get_ref<const std::string&>() ==
            SplitPatternRegex(SplitPattern::kLlama3) &&
        split.value("behavior", "") == "Isolated" && !BoolField(split, "invert") &&
        IsPlainByteLevel(pre["pretokenizers"][1], /*use_regex=*/false)) {
      return SplitPattern::kLlama3;
    }
  }
  return absl::UnimplementedError(
      absl::StrCat("unsupported pre_tokenizer (want GPT-2 ByteLevel or Llama 3 Split + "
                   "ByteLevel): ",
                   pre.dump().substr(0, 300)));
}

// A token name in tokenizer_config.json: a string or {"content": string}.
std::optional<std::string> ConfigTokenName(const Json& config, const char* key) {
  if (!config.contains(key)) return std::nullopt;
  const Json& v = config[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) {
    return v["content"].get<std::string>();
  }
  return std::nullopt;
}

struct BpeSymbol {
  int32_t id;    // -1 once merged into its left neighbour
  int32_t prev;  // byte index of the previous live symbol, -1 at the start
  int32_t next;  // byte index of the next live symbol, -1 at the end
};

struct BpeCandidate {
  int32_t rank;
  int32_t pos;  // byte index of the left symbol
  int32_t left_id;
  int32_t right_id;
  int32_t new_id;
  // Lowest rank first, then leftmost.
  bool operator>(const BpeCandidate& o) const {
    return rank != o.rank ? rank > o.rank : pos > o.pos;
  }
};

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Load(const std::string& tokenizer_json_path) {
  absl::StatusOr<Json> json_or = ReadJsonFile(tokenizer_json_path);
  if (!json_or.ok()) return json_or.status();
  const Json& json = *json_or;
  const auto error = [&](std::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat(tokenizer_json_path, ": ", AsAbsl(what)));
  };
  const auto unsupported = [&](std::string_view what) {
    return absl::UnimplementedError(absl::StrCat(tokenizer_json_path, ": ", AsAbsl(what)));
  };
  if (!json.is_object() || !json.contains("model") || !json["model"].is_object()) {
    return error("no \"model\" object");
  }
  const Json& model = json["model"];
  if (!IsType(model, "BPE")) return unsupported("model type is not BPE");
  if (model.contains("dropout") && !model["dropout"].is_null() &&
      !(model["dropout"].is_number() && model["dropout"].get<double>() == 0.0)) {
    return unsupported("BPE dropout");
  }
  if (!IsNullOrEmptyString(model, "continuing_subword_prefix") ||
      !IsNullOrEmptyString(model, "end_of_word_suffix") || !IsNullOrFalse(model, "byte_fallback")) {
    return unsupported("continuing_subword_prefix, end_of_word_suffix or byte_fallback");
  }
  if (json.contains("normalizer") && !json["normalizer"].is_null()) {
    return unsupported("a normalizer");
  }
  if (!json.contains("pre_tokenizer")) return error("no pre_tokenizer");
  absl::StatusOr<SplitPattern> pattern = ParsePreTokenizer(json["pre_tokenizer"]);
  if (!pattern.ok()) return unsupported(std::string(pattern.status().message()));

  auto tok = std::unique_ptr<Tokenizer>(new Tokenizer());
  tok->split_pattern_ = *pattern;
  tok->ignore_merges_ = BoolField(model, "ignore_merges");

  // Added tokens first: their vocabulary entries need not be byte-level symbols.
  absl::flat_hash_map<int32_t, std::string> added_by_id;
  if (json.contains("added_tokens") && !json["added_tokens"].is_null()) {
    if (!json["added_tokens"].is_array()) return error("added_tokens is not an array");
    for (const Json& t : json["added_tokens"]) {
      if (!t.is_object() || !t.contains("id") || !t["id"].is_number_integer() ||
          !t.contains("content") || !t["content"].is_string() ||
          t["content"].get_ref<const std::string&>().empty() || t["id"].get<int64_t>() < 0 ||
          t["id"].get<int64_t>() > INT32_MAX) {
        return error(absl::StrCat("bad added token ", t.dump()));
      }
      if (BoolField(t, "lstrip") || BoolField(t, "rstrip") || BoolField(t, "single_word")) {
        return unsupported(absl::StrCat("added token with lstrip/rstrip/single_word: ", t.dump()));
      }
      const auto id = static_cast<int32_t>(t["id"].get<int64_t>());
      const std::string& content = t["content"].get_ref<const std::string&>();
      tok->added_.try_emplace(content, id);
      added_by_id[id] = content;
      tok->added_first_byte_[static_cast<unsigned char>(content[0])] = true;
      tok->added_lengths_.push_back(content.size());
    }
  }
  std::sort(tok->added_lengths_.begin(), tok->added_lengths_.end(), std::greater<>());
  tok->added_lengths_.erase(std::unique(tok->added_lengths_.begin(), tok->added_lengths_.end()),
                            tok->added_lengths_.end());

  if (!model.contains("vocab") || !model["vocab"].is_object()) return error("no model.vocab");
  int64_t max_id = -1;
  for (const auto& [id, content] : added_by_id) max_id = std::max<int64_t>(max_id, id);
  for (const auto& [key, value] : model["vocab"].items()) {
    if (!value.is_number_integer() || value.get<int64_t>() < 0 ||
        value.get<int64_t>() > INT32_MAX) {
      return error(absl::StrCat("bad id for vocab entry ", key));
    }
    max_id = std::max<int64_t>(max_id, value.get<int64_t>());
  }
  tok->id_to_bytes_.resize(max_id + 1);
  tok->is_added_.resize(max_id + 1);
  for (const auto& [key, value] : model["vocab"].items()) {
    const auto id = static_cast<int32_t>(value.get<int64_t>());
    std::optional<std::string> bytes = ByteLevelToBytes(key);
    if (!bytes.has_value()) {
      if (added_by_id.contains(id)) continue;
      return unsupported(absl::StrCat("vocab entry is not byte-level: ", key));
    }
    tok->id_to_bytes_[id] = *bytes;
    tok->vocab_.try_emplace(std::move(*bytes), id);
  }
  for (const auto& [id, content] : added_by_id) {
    tok->id_to_bytes_[id] = content;
    tok->is_added_[id] = true;
  }
  for (int b = 0; b < 256; ++b) {
    auto it = tok->vocab_.find(std::string(1, static_cast<char>(b)));
    if (it == tok->vocab_.end()) return unsupported(absl::StrCat("vocab lacks byte ", b));
    tok->byte_ids_[b] = it->second;
  }

  if (!model.contains("merges") || !model["merges"].is_array()) return error("no model.merges");
  int32_t rank = 0;
  for (const Json& m : model["merges"]) {
    std::string left, right;
    if (m.is_string()) {
      const std::string& s = m.get_ref<const std::string&>();
      const size_t space = s.find(' ');
      if (space == std::string::npos) return error(absl::StrCat("bad merge ", s));
      left = s.substr(0, space);
      right = s.substr(space + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      left = m[0].get<std::string>();
      right = m[1].get<std::string>();
    } else {
      return error(absl::StrCat("bad merge ", m.dump()));
    }
    std::optional<std::string> lb = ByteLevelToBytes(left);
    std::optional<std::string> rb = ByteLevelToBytes(right);
    const auto li = lb ? tok->vocab_.find(*lb) : tok->vocab_.end();
    const auto ri = rb ? tok->vocab_.find(*rb) : tok->vocab_.end();
    const auto mi = lb && rb ? tok->vocab_.find(*lb + *rb) : tok->vocab_.end();
    if (li == tok->vocab_.end() || ri == tok->vocab_.end() || mi == tok->vocab_.end()) {
      return error(absl::StrCat("merge of tokens not in the vocab: ", m.dump()));
    }
    const uint64_t key = (static_cast<uint64_t>(li->second) << 32) | ri->second;
    tok->merges_.try_emplace(key, Merge{rank++, mi->second});
  }

  const std::filesystem::path config_path =
      std::filesystem::path(tokenizer_json_path).parent_path() / "tokenizer_config.json";
  if (std::filesystem::exists(config_path)) {
    absl::StatusOr<Json> config = ReadJsonFile(config_path.string());
    if (!config.ok()) return config.status();
    for (auto [key, slot] : {std::pair{"bos_token", &tok->bos_id_}, {"eos_token", &tok->eos_id_}}) {
      std::optional<std::string> name = ConfigTokenName(*config, key);
      if (!name.has_value()) continue;
      *slot = tok->TokenId(*name);
      if (!slot->has_value()) {
        return absl::InvalidArgumentError(
            absl::StrCat(config_path.string(), ": ", key, " ", *name, " is not a token"));
      }
    }
  }
  return tok;
}

std::vector<int32_t> Tokenizer::Encode(std::string_view text, bool parse_special) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 1);
  if (!parse_special || added_.empty()) {
    EncodeOrdinaryTo(text, &ids);
    return ids;
  }
  size_t segment = 0;
  for (size_t pos = 0; pos < text.size();) {
    int32_t id;
    const size_t len = added_first_byte_[static_cast<unsigned char>(text[pos])]
                           ? MatchAddedToken(text, pos, &id)
                           : 0;
    if (len == 0) {
      ++pos;
      continue;
    }
    EncodeOrdinaryTo(text.substr(segment, pos - segment), &ids);
    ids.push_back(id);
    pos += len;
    segment = pos;
  }
  EncodeOrdinaryTo(text.substr(segment), &ids);
  return ids;
}

size_t Tokenizer::MatchAddedToken(std::string_view text, size_t pos, int32_t* id) const {
  for (size_t len : added_lengths_) {
    if (len > text.size() - pos) continue;
    auto it = added_.find(AsAbsl(text.substr(pos, len)));
    if (it != added_.end()) {
      *id = it->second;
      return len;
    }
  }
  return 0;
}

void Tokenizer::EncodeOrdinaryTo(std::string_view text, std::vector<int32_t>* ids) const {
  SplitText(split_pattern_, text, [&](std::string_view piece) { EncodePiece(piece, ids); });
}

void Tokenizer::EncodePiece(std::string_view piece, std::vector<int32_t>* ids) const {
  if (piece.size() == 1) {
    ids->push_back(byte_ids_[static_cast<unsigned char>(piece[0])]);
    return;
  }
  if (ignore_merges_) {
    auto it = vocab_.find(AsAbsl(piece));
    if (it != vocab_.end()) {
      ids->push_back(it->second);
      return;
    }
  }
  Bpe(piece, ids);
}

void Tokenizer::Bpe(std::string_view piece, std::vector<int32_t>* ids) const {
  const auto n = static_cast<int32_t>(piece.size());
  std::vector<BpeSymbol> syms(n);
  for (int32_t i = 0; i < n; ++i) {
    syms[i] = {byte_ids_[static_cast<unsigned char>(piece[i])], i - 1, i + 1 < n ? i + 1 : -1};
  }
  std::priority_queue<BpeCandidate, std::vector<BpeCandidate>, std::greater<>> queue;
  const auto push_pair = [&](int32_t left) {
    if (left < 0) return;
    const int32_t right = syms[left].next;
    if (right < 0) return;
    const uint64_t key = (static_cast<uint64_t>(syms[left].id) << 32) | syms[right].id;
    auto it = merges_.find(key);
    if (it != merges_.end()) {
      queue.push({it->second.rank, left, syms[left].id, syms[right].id, it->second.id});
    }
  };
  for (int32_t i = 0; i + 1 < n; ++i) push_pair(i);
  while (!queue.empty()) {
    const BpeCandidate c = queue.top();
    queue.pop();
    BpeSymbol& left = syms[c.pos];
    // Stale when either side has merged since the candidate was queued.
    if (left.id != c.left_id || left.next < 0 || syms[left.next].id != c.right_id) continue;
    BpeSymbol& right = syms[left.next];
    left.id = c.new_id;
    left.next = right.next;
    if (right.next >= 0) syms[right.next].prev = c.pos;
    right.id = -1;
    push_pair(left.prev);
    push_pair(c.pos);
  }
  for (int32_t i = 0; i >= 0; i = syms[i].next) ids->push_back(syms[i].id);
}

std::string Tokenizer::Decode(absl::Span<const int32_t> ids) const {
  std::string out;
  for (int32_t id : ids) out.append(TokenBytes(id));
  return out;
}

std::string_view Tokenizer::TokenBytes(int32_t id) const {
  if (id < 0 || id >= vocab_size()) return {};
  return id_to_bytes_[id];
}

std::optional<int32_t> Tokenizer::TokenId(std::string_view token) const {
  if (auto it = added_.find(AsAbsl(token)); it != added_.end()) return it->second;
  if (auto it = vocab_.find(AsAbsl(token)); it != vocab_.end()) return it->second;
  return std::nullopt;
}

bool Tokenizer::IsAddedToken(int32_t id) const {
  return id >= 0 && id < vocab_size() && is_added_[id];
}

}  // namespace mplus::engine
