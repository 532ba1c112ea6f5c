// Byte-level BPE tokenizer read from a Hugging Face tokenizer.json (Llama 3 and GPT-2 forms).
#ifndef MPLUS_ENGINE_TOKENIZER_H_
#define MPLUS_ENGINE_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/tokenizer_split.h"

namespace mplus::engine {

// Immutable after Load; all methods are thread-safe.
//
// Supported tokenizer.json: model BPE over GPT-2 byte-level symbols (every byte in the vocab,
// no unk/dropout/subword affixes), no normalizer, pre_tokenizer either ByteLevel(use_regex=true)
// (GPT-2 regex) or Sequence[Split(Llama 3 regex, Isolated), ByteLevel(use_regex=false)], and
// added tokens without lstrip/rstrip/single_word. The post_processor is ignored: Encode never
// adds BOS/EOS.
class Tokenizer {
 public:
  // Reads tokenizer.json and, when present in the same directory, tokenizer_config.json (for
  // bos_token / eos_token).
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Load(const std::string& tokenizer_json_path);

  // Token ids of `text`, without BOS. With `parse_special`, exact occurrences of added-token
  // strings (longest first, case-sensitive) become their ids; otherwise they are plain text
  // (as tiktoken's encode_ordinary). Bytes that are not valid UTF-8 are encoded as bytes.
  std::vector<int32_t> Encode(std::string_view text, bool parse_special = false) const;

  // Appends the ids of `text`, encoded as plain text, to `ids`.
  void EncodeOrdinaryTo(std::string_view text, std::vector<int32_t>* ids) const;

  // The bytes of the tokens concatenated (added tokens as their literal text); not necessarily
  // valid UTF-8. Ids outside [0, vocab_size()) or not in the vocabulary contribute nothing.
  std::string Decode(absl::Span<const int32_t> ids) const;

  // The bytes of one token (empty for an unknown id); may be part of a UTF-8 character.
  std::string_view TokenBytes(int32_t id) const;

  // One more than the largest token id.
  int32_t vocab_size() const { return static_cast<int32_t>(id_to_bytes_.size()); }

  // Id of an added token's literal text ("<|eot_id|>") or else of a vocabulary entry's bytes.
  std::optional<int32_t> TokenId(std::string_view token) const;

  bool IsAddedToken(int32_t id) const;

  // Ids of tokenizer_config.json's bos_token / eos_token, when it names them.
  std::optional<int32_t> bos_id() const { return bos_id_; }
  std::optional<int32_t> eos_id() const { return eos_id_; }

 private:
  struct Merge {
    int32_t rank;
    int32_t id;
  };

  Tokenizer() = default;

  void EncodePiece(std::string_view piece, std::vector<int32_t>* ids) const;
  void Bpe(std::string_view piece, std::vector<int32_t>* ids) const;
  // Length of the longest added token at text[pos], or 0.
  size_t MatchAddedToken(std::string_view text, size_t pos, int32_t* id) const;

  SplitPattern split_pattern_ = SplitPattern::kGpt2;
  bool ignore_merges_ = false;
  std::vector<std::string> id_to_bytes_;
  std::vector<bool> is_added_;
  absl::flat_hash_map<std::string, int32_t> vocab_;  // raw bytes -> id
  absl::flat_hash_map<uint64_t, Merge> merges_;      // (left id << 32 | right id) -> merge
  int32_t byte_ids_[256] = {};
  absl::flat_hash_map<std::string, int32_t> added_;  // literal text -> id
  std::vector<size_t> added_lengths_;                // distinct lengths, longest first
  bool added_first_byte_[256] = {};
  std::optional<int32_t> bos_id_;
  std::optional<int32_t> eos_id_;
};

}  // namespace mplus::engine

#endif  // MPLUS_ENGINE_TOKENIZER_H_
