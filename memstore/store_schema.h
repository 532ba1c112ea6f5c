// The RocksDB layout (format version 2). Every key starts with a key-format byte, then a
// big-endian session number, so one session's rows are contiguous in each column family and a
// session is deleted with one range delete per family.
//   default   "\x01meta"                          -> StoreMeta
//   sessions  [v][session id]                      -> SessionRecord
//   tokens    [v][session u64][token id u64]       -> vector in storage dtype
//   stm       [v][session][layer u32]              -> short-term list (id u64, age u32)*
//   ltm       [v][session][layer][0]               -> LongTermLayerMeta
//             [v][session][layer][1][seq u64]      -> LongTermRecord (session entries)
//             [v][session][layer][2][seq]          -> "" (an evicted checkpoint entry)
//   requests  [v][session][request id]             -> RequestRecord (idempotency)
// Checkpoint long-term entries of layer l are implicit at seq 0..n0-1; session entries follow.
#ifndef MPLUS_MEMSTORE_STORE_SCHEMA_H_
#define MPLUS_MEMSTORE_STORE_SCHEMA_H_

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/dtype.h"

namespace mplus::memstore {

// 2: long-term records hold their key as the layer keeps it (LongTermParams::key_dtype: bf16 for
// bf16 checkpoints). 1 held float32 keys; its stores are read (such keys are rounded on load)
// and marked version 2 on open, so that older builds refuse them.
inline constexpr uint32_t kFormatVersion = 2;
inline constexpr uint32_t kOldestReadableFormatVersion = 1;
inline constexpr uint8_t kKeyVersion = 1;

enum ColumnFamily : int { kDefaultCf = 0, kSessionsCf, kTokensCf, kStmCf, kLtmCf, kRequestsCf };
inline constexpr int kNumColumnFamilies = 6;
const char* ColumnFamilyName(int cf);

enum LtmRowKind : uint8_t { kLtmLayerMeta = 0, kLtmEntry = 1, kLtmBaseEvicted = 2 };

std::string MetaKey();
std::string SessionKey(std::string_view id);
// [v][session] prefix, and the key one past it (range-delete end).
std::string SessionPrefix(uint64_t number);
std::string TokenKey(uint64_t number, uint64_t token_id);
std::string StmKey(uint64_t number, int layer);
std::string LtmLayerPrefix(uint64_t number, int layer);
std::string LtmKey(uint64_t number, int layer, LtmRowKind kind, uint64_t seq);
std::string RequestKey(uint64_t number, std::string_view request_id);
// Session number of a data key (tokens/stm/ltm/requests); false when malformed.
bool DecodeSessionNumber(std::string_view key, uint64_t* number);

struct StoreMeta {
  uint32_t format_version = kFormatVersion;
  uint64_t model_digest = 0;
  uint64_t next_session_number = 1;
};
std::string EncodeStoreMeta(const StoreMeta& m);
absl::StatusOr<StoreMeta> DecodeStoreMeta(std::string_view v);

// Metadata and counters of one session; rewritten by every inject.
struct SessionRecord {
  std::string id;
  uint64_t number = 0;  // internal key prefix
  std::map<std::string, std::string> labels;
  uint64_t seed = 0;
  int64_t created_micros = 0, updated_micros = 0;
  int64_t injected_tokens = 0, inject_count = 0;
  uint64_t next_token_id = 1;
  int64_t update_step = 0;             // LongTermMemory::update_step
  int64_t ltm_tokens = 0;              // merged + pending, all layers
  std::vector<uint64_t> next_ltm_seq;  // per layer
};
std::string EncodeSessionRecord(const SessionRecord& r);
absl::StatusOr<SessionRecord> DecodeSessionRecord(std::string_view v);

// One short-term list.
struct ShortTermList {
  std::vector<uint64_t> ids;
  std::vector<int32_t> ages;
};
std::string EncodeShortTermList(const ShortTermList& s);
absl::StatusOr<ShortTermList> DecodeShortTermList(std::string_view v, int64_t expected_size);

// A session long-term entry. Ages grow by K per inject for every entry, so the record keeps the
// age minus K * inject_count (the age is rebuilt from the session's inject_count); a pending
// entry's recall frequency is stored here, merged ones take it from the layer meta.
struct LongTermRecord {
  uint64_t token_id = 0;
  int64_t age_base = 0;
  double pending_recall_frequency = 0;
  std::string key;  // key_dim elements of the key dtype, host order (the store is not portable)
};
std::string EncodeLongTermRecord(const LongTermRecord& r);
// `key_dtype`: the layer's (F32 or BF16). A format-1 record's float32 key is rounded to it.
// `out` is overwritten (its key's buffer reused).
absl::Status DecodeLongTermRecord(std::string_view v, int64_t key_dim, engine::DType key_dtype,
                                  LongTermRecord* out);

// Per layer: entries with seq < merged_end are merged; merged recall frequencies in storage
// order, run-length encoded (entries merged together keep equal frequencies).
struct LongTermLayerMeta {
  uint64_t merged_end = 0;
  std::vector<std::pair<uint64_t, double>> rf_runs;  // (count, value)
};
// Bitwise equality (frequencies compared by their bits).
bool SameLayerMeta(const LongTermLayerMeta& a, const LongTermLayerMeta& b);
std::string EncodeLongTermLayerMeta(const LongTermLayerMeta& m);
absl::StatusOr<LongTermLayerMeta> DecodeLongTermLayerMeta(std::string_view v);

struct RequestRecord {
  int64_t inject_count = 0;  // the session's inject count after the request
  int64_t tokens = 0;
  int64_t committed_micros = 0;
};
std::string EncodeRequestRecord(const RequestRecord& r);
absl::StatusOr<RequestRecord> DecodeRequestRecord(std::string_view v);

}  // namespace mplus::memstore

#endif  // MPLUS_MEMSTORE_STORE_SCHEMA_H_
