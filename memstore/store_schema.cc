#include "memstore/store_schema.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "memstore/byte_codec.h"

namespace mplus::memstore {
namespace {

constexpr uint8_t kRecordVersion = 1;

absl::Status Corrupt(std::string_view what) {
  return absl::DataLossError(absl::StrCat("memstore: corrupt ", std::string(what), " record"));
}

std::string Prefixed(uint64_t number) {
  std::string k;
  ByteWriter w(&k);
  w.U8(kKeyVersion);
  w.U64(number);
  return k;
}

}  // namespace

const char* ColumnFamilyName(int cf) {
  static const char* const kNames[kNumColumnFamilies] = {"default", "sessions", "tokens",
                                                         "stm",     "ltm",      "requests"};
  return kNames[cf];
}

std::string MetaKey() { return "\x01meta"; }

std::string SessionKey(std::string_view id) {
  std::string k(1, static_cast<char>(kKeyVersion));
  k.append(id);
  return k;
}

std::string SessionPrefix(uint64_t number) { return Prefixed(number); }

std::string TokenKey(uint64_t number, uint64_t token_id) {
  std::string k = Prefixed(number);
  ByteWriter(&k).U64(token_id);
  return k;
}

std::string StmKey(uint64_t number, int layer) {
  std::string k = Prefixed(number);
  ByteWriter(&k).U32(static_cast<uint32_t>(layer));
  return k;
}

std::string LtmLayerPrefix(uint64_t number, int layer) { return StmKey(number, layer); }

std::string LtmKey(uint64_t number, int layer, LtmRowKind kind, uint64_t seq) {
  std::string k = StmKey(number, layer);
  ByteWriter w(&k);
  w.U8(kind);
  if (kind != kLtmLayerMeta) w.U64(seq);
  return k;
}

std::string RequestKey(uint64_t number, std::string_view request_id) {
  std::string k = Prefixed(number);
  k.append(request_id);
  return k;
}

bool DecodeSessionNumber(std::string_view key, uint64_t* number) {
  ByteReader r(key);
  if (r.U8() != kKeyVersion) return false;
  *number = r.U64();
  return r.ok();
}

std::string EncodeStoreMeta(const StoreMeta& m) {
  std::string v;
  ByteWriter w(&v);
  w.U32(m.format_version);
  w.U64(m.model_digest);
  w.U64(m.next_session_number);
  return v;
}

absl::StatusOr<StoreMeta> DecodeStoreMeta(std::string_view v) {
  ByteReader r(v);
  StoreMeta m;
  m.format_version = r.U32();
  m.model_digest = r.U64();
  m.next_session_number = r.U64();
  if (!r.done()) return Corrupt("store meta");
  return m;
}

std::string EncodeSessionRecord(const SessionRecord& s) {
  std::string v;
  ByteWriter w(&v);
  w.U8(kRecordVersion);
  w.Bytes(s.id);
  w.U64(s.number);
  w.U32(static_cast<uint32_t>(s.labels.size()));
  for (const auto& [k, val] : s.labels) {
    w.Bytes(k);
    w.Bytes(val);
  }
  w.U64(s.seed);
  w.I64(s.created_micros);
  w.I64(s.updated_micros);
  w.I64(s.injected_tokens);
  w.I64(s.inject_count);
  w.U64(s.next_token_id);
  w.I64(s.update_step);
  w.I64(s.ltm_tokens);
  w.U32(static_cast<uint32_t>(s.next_ltm_seq.size()));
  for (uint64_t q : s.next_ltm_seq) w.U64(q);
  return v;
}

absl::StatusOr<SessionRecord> DecodeSessionRecord(std::string_view v) {
  ByteReader r(v);
  SessionRecord s;
  if (r.U8() != kRecordVersion) return Corrupt("session (unknown version)");
  s.id = std::string(r.Bytes());
  s.number = r.U64();
  const uint32_t n = r.U32();
  for (uint32_t i = 0; i < n && r.ok(); ++i) {
    std::string k(r.Bytes());
    s.labels[k] = std::string(r.Bytes());
  }
  s.seed = r.U64();
  s.created_micros = r.I64();
  s.updated_micros = r.I64();
  s.injected_tokens = r.I64();
  s.inject_count = r.I64();
  s.next_token_id = r.U64();
  s.update_step = r.I64();
  s.ltm_tokens = r.I64();
  const uint32_t layers = r.U32();
  if (layers > r.remaining() / 8) return Corrupt("session");
  s.next_ltm_seq.resize(layers);
  for (auto& q : s.next_ltm_seq) q = r.U64();
  if (!r.done()) return Corrupt("session");
  return s;
}

std::string EncodeShortTermList(const ShortTermList& s) {
  std::string v;
  v.reserve(s.ids.size() * 12);
  ByteWriter w(&v);
  for (size_t i = 0; i < s.ids.size(); ++i) {
    w.U64(s.ids[i]);
    w.U32(static_cast<uint32_t>(s.ages[i]));
  }
  return v;
}

absl::StatusOr<ShortTermList> DecodeShortTermList(std::string_view v, int64_t expected_size) {
  if (static_cast<int64_t>(v.size()) != expected_size * 12) return Corrupt("short-term list");
  ByteReader r(v);
  ShortTermList s;
  s.ids.resize(expected_size);
  s.ages.resize(expected_size);
  for (int64_t i = 0; i < expected_size; ++i) {
    s.ids[i] = r.U64();
    s.ages[i] = static_cast<int32_t>(r.U32());
  }
  return s;
}

std::string EncodeLongTermRecord(const LongTermRecord& e) {
  std::string v;
  ByteWriter w(&v);
  w.U64(e.token_id);
  w.I64(e.age_base);
  w.F64(e.pending_recall_frequency);
  w.Raw(e.key.data(), e.key.size());
  return v;
}

absl::Status DecodeLongTermRecord(std::string_view v, int64_t key_dim, engine::DType key_dtype,
                                  LongTermRecord* out) {
  ByteReader r(v);
  LongTermRecord& e = *out;
  e.token_id = r.U64();
  e.age_base = r.I64();
  e.pending_recall_frequency = r.F64();
  const size_t key_bytes = static_cast<size_t>(key_dim) * engine::DTypeSize(key_dtype);
  const size_t f32_bytes = static_cast<size_t>(key_dim) * sizeof(float);
  const size_t stored = r.remaining();
  if (!r.ok() || (stored != key_bytes && stored != f32_bytes)) return Corrupt("long-term entry");
  std::string_view key = r.Raw(stored);
  if (stored == key_bytes) {
    e.key.assign(key.data(), key.size());
  } else {  // format 1: float32
    std::vector<float> f32(static_cast<size_t>(key_dim));
    std::memcpy(f32.data(), key.data(), f32_bytes);
    e.key.resize(key_bytes);
    engine::FloatsToDType(f32.data(), key_dim, key_dtype, e.key.data());
  }
  return absl::OkStatus();
}

bool SameLayerMeta(const LongTermLayerMeta& a, const LongTermLayerMeta& b) {
  if (a.merged_end != b.merged_end || a.rf_runs.size() != b.rf_runs.size()) return false;
  for (size_t i = 0; i < a.rf_runs.size(); ++i) {
    if (a.rf_runs[i].first != b.rf_runs[i].first ||
        std::memcmp(&a.rf_runs[i].second, &b.rf_runs[i].second, sizeof(double)) != 0) {
      return false;
    }
  }
  return true;
}

std::string EncodeLongTermLayerMeta(const LongTermLayerMeta& m) {
  std::string v;
  ByteWriter w(&v);
  w.U64(m.merged_end);
  w.U32(static_cast<uint32_t>(m.rf_runs.size()));
  for (const auto& [count, rf] : m.rf_runs) {
    w.U64(count);
    w.F64(rf);
  }
  return v;
}

absl::StatusOr<LongTermLayerMeta> DecodeLongTermLayerMeta(std::string_view v) {
  ByteReader r(v);
  LongTermLayerMeta m;
  m.merged_end = r.U64();
  const uint32_t n = r.U32();
  if (n > r.remaining() / 16) return Corrupt("long-term layer meta");
  m.rf_runs.resize(n);
  for (auto& [count, rf] : m.rf_runs) {
    count = r.U64();
    rf = r.F64();
  }
  if (!r.done()) return Corrupt("long-term layer meta");
  return m;
}

std::string EncodeRequestRecord(const RequestRecord& q) {
  std::string v;
  ByteWriter w(&v);
  w.I64(q.inject_count);
  w.I64(q.tokens);
  w.I64(q.committed_micros);
  return v;
}

absl::StatusOr<RequestRecord> DecodeRequestRecord(std::string_view v) {
  ByteReader r(v);
  RequestRecord q;
  q.inject_count = r.I64();
  q.tokens = r.I64();
  q.committed_micros = r.I64();
  if (!r.done()) return Corrupt("request");
  return q;
}

}  // namespace mplus::memstore
