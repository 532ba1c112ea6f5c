#include "engine/layer_forward.h"

#include <numeric>

#include "engine/status_macros.h"

namespace mplus::engine {
namespace {

absl::StatusOr<Tensor> UploadOptional(Backend& backend, const TensorView& view) {
  if (view.data == nullptr) return Tensor();
  return backend.UploadWeight(view);
}

// Linears that read the same input (q, k, v; gate, up): their base weights are uploaded together,
// and each adapter's A matrices together where every linear has one (Backend::UploadWeights), so
// that LoraMatMulGroup may treat each as one matrix. B matrices are uploaded one by one.
absl::StatusOr<std::vector<DeviceLinear>> UploadLinears(
    Backend& backend, std::initializer_list<const LinearWeights*> weights) {
  std::vector<DeviceLinear> out(weights.size());
  std::vector<TensorView> views;
  for (const LinearWeights* w : weights) views.push_back(w->weight);
  MPLUS_ASSIGN_OR_RETURN(std::vector<Tensor> bases, backend.UploadWeights(views));
  for (size_t i = 0; i < out.size(); ++i) out[i].weight = std::move(bases[i]);
  for (int a = 0; a < kNumAdapters; ++a) {
    views.clear();
    for (const LinearWeights* w : weights) {
      if (w->lora_a[a].data != nullptr) views.push_back(w->lora_a[a]);
    }
    if (views.size() == out.size()) {
      MPLUS_ASSIGN_OR_RETURN(std::vector<Tensor> as, backend.UploadWeights(views));
      for (size_t i = 0; i < out.size(); ++i) out[i].lora_a[a] = std::move(as[i]);
    }
    size_t i = 0;
    for (const LinearWeights* w : weights) {
      if (views.size() != out.size()) {
        MPLUS_ASSIGN_OR_RETURN(out[i].lora_a[a], UploadOptional(backend, w->lora_a[a]));
      }
      MPLUS_ASSIGN_OR_RETURN(out[i].lora_b[a], UploadOptional(backend, w->lora_b[a]));
      ++i;
    }
  }
  return out;
}

absl::StatusOr<DeviceLinear> UploadLinear(Backend& backend, const LinearWeights& w) {
  MPLUS_ASSIGN_OR_RETURN(std::vector<DeviceLinear> one, UploadLinears(backend, {&w}));
  return std::move(one[0]);
}

absl::StatusOr<DeviceProjector> UploadProjector(Backend& backend, const ProjectorWeights& w) {
  DeviceProjector out;
  for (const TensorView& v : w.linears) {
    MPLUS_ASSIGN_OR_RETURN(Tensor t, backend.UploadWeight(v));
    out.linears.push_back(std::move(t));
  }
  return out;
}

}  // namespace

absl::StatusOr<DeviceLayer> UploadLayer(Backend& backend, const LayerWeights& w) {
  DeviceLayer out;
  MPLUS_ASSIGN_OR_RETURN(out.input_layernorm, backend.UploadWeight(w.input_layernorm));
  MPLUS_ASSIGN_OR_RETURN(out.post_attention_layernorm,
                         backend.UploadWeight(w.post_attention_layernorm));
  MPLUS_ASSIGN_OR_RETURN(std::vector<DeviceLinear> qkv,
                         UploadLinears(backend, {&w.q_proj, &w.k_proj, &w.v_proj}));
  out.q_proj = std::move(qkv[0]);
  out.k_proj = std::move(qkv[1]);
  out.v_proj = std::move(qkv[2]);
  MPLUS_ASSIGN_OR_RETURN(out.o_proj, UploadLinear(backend, w.o_proj));
  MPLUS_ASSIGN_OR_RETURN(std::vector<DeviceLinear> gate_up,
                         UploadLinears(backend, {&w.gate_proj, &w.up_proj}));
  out.gate_proj = std::move(gate_up[0]);
  out.up_proj = std::move(gate_up[1]);
  MPLUS_ASSIGN_OR_RETURN(out.down_proj, UploadLinear(backend, w.down_proj));
  MPLUS_ASSIGN_OR_RETURN(out.query_proj, UploadProjector(backend, w.query_proj));
  MPLUS_ASSIGN_OR_RETURN(out.key_proj, UploadProjector(backend, w.key_proj));
  return out;
}

absl::Status Linear(Backend& backend, const Tensor& x, const DeviceLinear& linear, Adapter adapter,
                    float lora_scale, const Tensor& out, bool accumulate) {
  const int a = static_cast<int>(adapter);
  if (linear.lora_a[a].empty() && !accumulate) return backend.MatMul(x, linear.weight, out);
  return backend.LoraMatMul(x, linear.weight, linear.lora_a[a], linear.lora_b[a], lora_scale, out,
                            accumulate);
}

absl::Status LinearGroup(Backend& backend, const Tensor& x,
                         std::initializer_list<const DeviceLinear*> linears, Adapter adapter,
                         float lora_scale, std::initializer_list<Tensor> outs) {
  const int a = static_cast<int>(adapter);
  std::vector<LoraLinear> group;
  for (const DeviceLinear* l : linears) group.push_back({l->weight, l->lora_a[a], l->lora_b[a]});
  return backend.LoraMatMulGroup(x, group, lora_scale, outs);
}

absl::StatusOr<Tensor> Project(Backend& backend, const Tensor& normed,
                               const DeviceProjector& projector) {
  Tensor h = normed;
  for (size_t i = 0; i < projector.linears.size(); ++i) {
    const Tensor& w = projector.linears[i];
    MPLUS_ASSIGN_OR_RETURN(Tensor next, backend.Allocate(DType::kF32, {h.rows(), w.rows()}));
    MPLUS_RETURN_IF_ERROR(backend.MatMul(h, w, next));
    if (i + 1 < projector.linears.size()) MPLUS_RETURN_IF_ERROR(backend.Silu(next));
    h = std::move(next);
  }
  return h;
}

absl::Status KeysValues(Backend& backend, const LayerDims& dims, const DeviceLayer& layer,
                        Adapter adapter, const Tensor& normed, const Tensor& k_out,
                        const Tensor& v_out) {
  MPLUS_RETURN_IF_ERROR(Linear(backend, normed, layer.k_proj, adapter, dims.lora_scale, k_out));
  return Linear(backend, normed, layer.v_proj, adapter, dims.lora_scale, v_out);
}

absl::Status StoreKeysValues(Backend& backend, const LayerDims& dims, const Tensor& k,
                             const Tensor& v, absl::Span<const int64_t> positions,
                             const Tensor& inv_freq, const Tensor& k_cache, const Tensor& v_cache,
                             int64_t first_row) {
  const int64_t end = first_row + k.rows();
  return backend.StoreKeysValues(k, v, dims.head_dim, positions, inv_freq,
                                 k_cache.Rows(first_row, end), v_cache.Rows(first_row, end));
}

namespace {

// LayerForward, or with `position` LayerForwardAt (one segment of one row, whose cache_row the
// ops read from `position` instead).
absl::StatusOr<Tensor> LayerForwardImpl(Backend& backend, const LayerDims& dims,
                                        const DeviceLayer& layer, Adapter adapter,
                                        const Tensor& seq, int64_t num_queries,
                                        const Tensor& k_cache, const Tensor& v_cache,
                                        absl::Span<const SeqSegment> segments,
                                        const Tensor& inv_freq, const Tensor* position) {
  const int64_t s = seq.rows(), nq = num_queries, d = dims.hidden;
  const int64_t q_cols = dims.heads * dims.head_dim;
  bool consistent = !segments.empty() && nq > 0 && nq <= segments.back().rows;
  int64_t covered = 0, end = 0;
  for (const SeqSegment& seg : segments) {
    consistent = consistent && seg.rows > 0 && seg.seq_begin == covered && seg.cache_row >= end &&
                 seg.cache_row + seg.rows <= k_cache.rows();
    covered += seg.rows;
    end = seg.cache_row + seg.rows;
  }
  if (!consistent || covered != s) {
    return absl::InternalError("LayerForward: inconsistent sequence / cache sizes");
  }
  // One norm over all rows; keys and values from every row, queries from the last nq.
  MPLUS_ASSIGN_OR_RETURN(Tensor normed, backend.Allocate(DType::kF32, {s, d}));
  MPLUS_RETURN_IF_ERROR(backend.RmsNorm(seq, layer.input_layernorm, dims.rms_eps, normed));
  MPLUS_ASSIGN_OR_RETURN(Tensor q, backend.Allocate(DType::kF32, {nq, q_cols}));
  // Every row a query (decode): q, k and v in one grouped op; else q of the last nq rows alone.
  const bool fused_qkv = segments.size() == 1 && nq == s;
  if (!fused_qkv) {
    MPLUS_RETURN_IF_ERROR(
        Linear(backend, normed.Rows(s - nq, s), layer.q_proj, adapter, dims.lora_scale, q));
  }
  std::vector<int64_t> positions;
  for (const SeqSegment& seg : segments) {
    const Tensor x = normed.Rows(seg.seq_begin, seg.seq_begin + seg.rows);
    MPLUS_ASSIGN_OR_RETURN(Tensor k, backend.Allocate(DType::kF32, {seg.rows, dims.kv_cols()}));
    MPLUS_ASSIGN_OR_RETURN(Tensor v, backend.Allocate(DType::kF32, {seg.rows, dims.kv_cols()}));
    if (fused_qkv) {
      MPLUS_RETURN_IF_ERROR(LinearGroup(backend, x, {&layer.q_proj, &layer.k_proj, &layer.v_proj},
                                        adapter, dims.lora_scale, {q, k, v}));
    } else {
      MPLUS_RETURN_IF_ERROR(KeysValues(backend, dims, layer, adapter, x, k, v));
    }
    if (position != nullptr) {  // q, k and v of the one row: rotated, and stored at `position`
      MPLUS_RETURN_IF_ERROR(backend.RopeStoreKeysValuesAt(q, k, v, dims.head_dim, *position,
                                                          inv_freq, k_cache, v_cache));
      continue;
    }
    positions.resize(static_cast<size_t>(seg.rows));
    std::iota(positions.begin(), positions.end(), seg.cache_row);
    MPLUS_RETURN_IF_ERROR(
        StoreKeysValues(backend, dims, k, v, positions, inv_freq, k_cache, v_cache, seg.cache_row));
  }
  // Transients go as soon as they are dead: for a long prompt each is float32 [rows, hidden] or
  // so, and together they set the GPU's peak.
  normed = Tensor();
  MPLUS_ASSIGN_OR_RETURN(Tensor attn, backend.Allocate(DType::kF32, {nq, q_cols}));
  if (position != nullptr) {
    MPLUS_RETURN_IF_ERROR(backend.AttentionAt(q, k_cache, v_cache, *position, dims.heads,
                                              dims.kv_heads, dims.head_dim, attn));
  } else {
    // `positions` now holds the last segment's, which contains the queries.
    MPLUS_RETURN_IF_ERROR(backend.Rope(
        q, dims.head_dim,
        absl::MakeConstSpan(positions).subspan(static_cast<size_t>(segments.back().rows - nq)),
        inv_freq));
    MPLUS_RETURN_IF_ERROR(backend.Attention(q, k_cache.Rows(0, end), v_cache.Rows(0, end),
                                            dims.heads, dims.kv_heads, dims.head_dim, attn));
  }
  q = Tensor();
  const Tensor h = seq.Rows(s - nq, s);  // the residual stream: the query rows, updated in place
  MPLUS_RETURN_IF_ERROR(Linear(backend, attn, layer.o_proj, adapter, dims.lora_scale, h, true));
  attn = Tensor();

  // Post-norm SwiGLU MLP, rows in near-equal chunks of at most dims.mlp_chunk_rows: its two
  // float32 [rows, intermediate] transients are a long prompt's largest. Every row's result is
  // its own (chunks keep more than a GEMV's rows, so the CPU's MatMul rounds each row alike).
  const int64_t chunks = (nq + dims.mlp_chunk_rows - 1) / dims.mlp_chunk_rows;
  for (int64_t c = 0; c < chunks; ++c) {
    const Tensor hc = h.Rows(nq * c / chunks, nq * (c + 1) / chunks);
    const int64_t rows = hc.rows();
    MPLUS_ASSIGN_OR_RETURN(Tensor n2, backend.Allocate(DType::kF32, {rows, d}));
    MPLUS_RETURN_IF_ERROR(backend.RmsNorm(hc, layer.post_attention_layernorm, dims.rms_eps, n2));
    MPLUS_ASSIGN_OR_RETURN(Tensor gate, backend.Allocate(DType::kF32, {rows, dims.intermediate}));
    MPLUS_ASSIGN_OR_RETURN(Tensor up, backend.Allocate(DType::kF32, {rows, dims.intermediate}));
    MPLUS_RETURN_IF_ERROR(LinearGroup(backend, n2, {&layer.gate_proj, &layer.up_proj}, adapter,
                                      dims.lora_scale, {gate, up}));
    MPLUS_RETURN_IF_ERROR(backend.SiluMul(gate, up, gate));
    MPLUS_RETURN_IF_ERROR(
        Linear(backend, gate, layer.down_proj, adapter, dims.lora_scale, hc, true));
  }
  return h;
}

}  // namespace

absl::StatusOr<Tensor> LayerForward(Backend& backend, const LayerDims& dims,
                                    const DeviceLayer& layer, Adapter adapter, const Tensor& seq,
                                    int64_t num_queries, const Tensor& k_cache,
                                    const Tensor& v_cache, absl::Span<const SeqSegment> segments,
                                    const Tensor& inv_freq) {
  return LayerForwardImpl(backend, dims, layer, adapter, seq, num_queries, k_cache, v_cache,
                          segments, inv_freq, nullptr);
}

absl::StatusOr<Tensor> LayerForwardAt(Backend& backend, const LayerDims& dims,
                                      const DeviceLayer& layer, Adapter adapter, const Tensor& seq,
                                      const Tensor& k_cache, const Tensor& v_cache,
                                      const Tensor& position, const Tensor& inv_freq) {
  if (seq.rows() != 1) {
    return absl::InternalError("LayerForwardAt: a decode step has one row");
  }
  const SeqSegment token{0, 1, 0};  // its cache row comes from `position`
  return LayerForwardImpl(backend, dims, layer, adapter, seq, 1, k_cache, v_cache,
                          absl::MakeConstSpan(&token, 1), inv_freq, &position);
}

absl::StatusOr<Tensor> LayerForward(Backend& backend, const LayerDims& dims,
                                    const DeviceLayer& layer, Adapter adapter, const Tensor& seq,
                                    int64_t num_queries, const Tensor& k_cache,
                                    const Tensor& v_cache, int64_t cache_len,
                                    const Tensor& inv_freq) {
  const SeqSegment all{0, seq.rows(), cache_len};
  return LayerForward(backend, dims, layer, adapter, seq, num_queries, k_cache, v_cache,
                      absl::MakeConstSpan(&all, 1), inv_freq);
}

}  // namespace mplus::engine
