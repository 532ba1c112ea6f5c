// MemoryServiceImpl::Generate: prompt → prefill with long-term retrieval → sampled, streamed
// decode with stop strings and UTF-8-safe text deltas.
#include <atomic>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "engine/chat_format.h"
#include "engine/sampler.h"
#include "engine/text_stream.h"
#include "server/logging.h"
#include "server/memory_service.h"

namespace mplus::server {
namespace {

// Times every layer's long-term retrieval of one Generate; everything else is the session's.
class TimedSessionMemory final : public engine::SessionMemory {
 public:
  TimedSessionMemory(engine::SessionMemory& inner, ServerMetrics& metrics, int64_t k_ltm)
      : inner_(inner), metrics_(metrics), k_ltm_(k_ltm) {}

  engine::ShortTermRows ShortTerm(int layer) const override { return inner_.ShortTerm(layer); }
  engine::PrefixCache* prefix_cache() override { return inner_.prefix_cache(); }
  // A layer's retrieval is its selection and then its reads (one or several runs of rows).
  absl::StatusOr<std::vector<uint64_t>> SelectLongTerm(int layer,
                                                       engine::RetrievalQueries& queries) override {
    Finish();  // the previous layer's retrieval ended before this one
    layer_open_ = true;
    const absl::Time start = absl::Now();
    absl::StatusOr<std::vector<uint64_t>> ids = inner_.SelectLongTerm(layer, queries);
    layer_seconds_ = SecondsSince(start);
    retrieved_tokens_ += k_ltm_;
    return ids;
  }
  absl::Status ReadLongTerm(absl::Span<const uint64_t> ids, void* out) override {
    const absl::Time start = absl::Now();
    absl::Status status = inner_.ReadLongTerm(ids, out);
    layer_seconds_ += SecondsSince(start);
    return status;
  }

  // Counts the last selecting layer's retrieval, once (a layer's is counted when the next one
  // selects): call after the prefill.
  void Finish() {
    if (!layer_open_) return;
    layer_open_ = false;
    metrics_.retrieval_per_layer.Observe(layer_seconds_);
    total_seconds_ += layer_seconds_;
  }
  double total_seconds() const { return total_seconds_; }
  int64_t retrieved_tokens() const { return retrieved_tokens_; }

 private:
  engine::SessionMemory& inner_;
  ServerMetrics& metrics_;
  const int64_t k_ltm_;
  bool layer_open_ = false;   // a layer's retrieval is being timed
  double layer_seconds_ = 0;  // its selection and reads so far
  double total_seconds_ = 0;
  int64_t retrieved_tokens_ = 0;
};

absl::StatusOr<engine::SamplingOptions> SamplingFromProto(const v1::SamplingParams& p,
                                                          int64_t default_max_new_tokens,
                                                          int64_t max_new_tokens_limit) {
  engine::SamplingOptions o;
  o.max_new_tokens =
      static_cast<int>(p.max_new_tokens() == 0 ? default_max_new_tokens : p.max_new_tokens());
  if (o.max_new_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("sampling.max_new_tokens must be positive, got ", p.max_new_tokens()));
  }
  if (o.max_new_tokens > max_new_tokens_limit) {
    return absl::InvalidArgumentError(absl::StrCat("sampling.max_new_tokens ", o.max_new_tokens,
                                                   " is over the limit ", max_new_tokens_limit,
                                                   " (--max_new_tokens)"));
  }
  o.temperature = p.temperature();
  o.top_p = p.top_p() == 0 ? 1.0f : p.top_p();
  o.top_k = p.top_k();
  o.min_p = p.min_p();
  o.repetition_penalty = p.repetition_penalty() == 0 ? 1.0f : p.repetition_penalty();
  o.seed = p.seed();
  if (absl::Status s = engine::ValidateSamplingOptions(o); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("sampling: ", s.message()));
  }
  return o;
}

// A GPU that could not record a decode step still generates, op by op (slower): said once.
void WarnIfNotReplaying(const engine::DecodeState& state) {
  const absl::Status& why = state.recording_status();
  if (why.ok() || absl::IsUnimplemented(why)) return;  // recording off, or the CPU
  static std::atomic<bool> warned{false};
  if (!warned.exchange(true)) {
    LogWarning("decode steps are not replayed from a CUDA graph (%s); generating op by op",
               why.ToString());
  }
}

}  // namespace

absl::StatusOr<std::vector<int32_t>> MemoryServiceImpl::PromptIds(
    const v1::GenerateRequest& request) const {
  const engine::ModelConfig& config = model_->config();
  std::vector<int32_t> ids;
  switch (request.prompt_case()) {
    case v1::GenerateRequest::kText:
      // Memory models read their bos_embedding in the prefix: the official recipe tokenizes
      // prompts without BOS. Plain Llama needs it.
      if (!config.has_memory() && config.bos_token_id >= 0) {
        ids.push_back(static_cast<int32_t>(config.bos_token_id));
      }
      tokenizer_->EncodeOrdinaryTo(request.text(), &ids);
      break;
    case v1::GenerateRequest::kTokenIds:
      if (absl::Status s = CheckTokenIds(request.token_ids().ids(), "token_ids.ids"); !s.ok()) {
        return s;
      }
      ids.assign(request.token_ids().ids().begin(), request.token_ids().ids().end());
      break;
    case v1::GenerateRequest::kMessages: {
      std::vector<engine::ChatMessage> messages;
      for (const v1::ChatMessage& m : request.messages().messages()) {
        messages.push_back({m.role(), m.content()});
      }
      auto chat = engine::EncodeLlama3Chat(*tokenizer_, messages);
      if (!chat.ok()) return chat.status();
      ids = std::move(*chat);
      break;
    }
    case v1::GenerateRequest::PROMPT_NOT_SET:
      return absl::InvalidArgumentError("Generate needs a prompt: set text, token_ids or messages");
  }
  if (ids.empty()) return absl::InvalidArgumentError("the prompt has no tokens");
  if (static_cast<int64_t>(ids.size()) > options_.max_prompt_tokens) {
    return absl::InvalidArgumentError(
        absl::StrCat("the prompt has ", ids.size(), " tokens, over the limit ",
                     options_.max_prompt_tokens, " (--max_prompt_tokens)"));
  }
  return ids;
}

grpc::Status MemoryServiceImpl::Generate(grpc::ServerContext* context,
                                         const v1::GenerateRequest* request,
                                         grpc::ServerWriter<v1::GenerateResponse>* writer) {
  const absl::Time start = absl::Now();
  absl::Status status = GenerateImpl(context, *request, writer);
  if (status.ok()) metrics_->generate_latency.Observe(SecondsSince(start));
  return Done("Generate", status);
}

absl::Status MemoryServiceImpl::GenerateImpl(grpc::ServerContext* context,
                                             const v1::GenerateRequest& request,
                                             grpc::ServerWriter<v1::GenerateResponse>* writer) {
  const absl::Time start = absl::Now();
  if (absl::Status s = CheckServing(); !s.ok()) return s;
  if (absl::Status s = CheckRequestSize(request); !s.ok()) return s;
  auto prompt = PromptIds(request);
  if (!prompt.ok()) return prompt.status();
  auto sampling = SamplingFromProto(request.sampling(), options_.default_max_new_tokens,
                                    options_.max_new_tokens);
  if (!sampling.ok()) return sampling.status();
  std::vector<std::string> stops(request.sampling().stop().begin(),
                                 request.sampling().stop().end());

  auto slot = Admit(request.session_id(), context);
  if (!slot.ok()) return slot.status();
  auto handle = store_->Acquire(request.session_id());
  if (!handle.ok()) return handle.status();

  const engine::ModelConfig& config = model_->config();
  TimedSessionMemory memory(handle->memory(), *metrics_, config.ltm_retrieved_tokens());
  engine::PrefillOutput prefill;
  auto state = model_->Prefill(memory, *prompt, sampling->max_new_tokens,
                               /*want_retrieved=*/false, &prefill);
  memory.Finish();
  if (!state.ok()) return state.status();
  if (config.has_long_term()) metrics_->retrieval_per_generate.Observe(memory.total_seconds());
  // KV cache bytes while this generation runs (K and V per layer).
  const int64_t kv_bytes = 2 * static_cast<int64_t>(engine::DTypeSize(model_->kv_dtype())) *
                           config.num_hidden_layers * config.num_key_value_heads * config.head_dim *
                           (*state)->capacity();
  cache_bytes_ += kv_bytes;
  struct CacheRelease {
    std::atomic<int64_t>& counter;
    int64_t bytes;
    ~CacheRelease() { counter -= bytes; }
  } release{cache_bytes_, kv_bytes};

  engine::Sampler sampler(*sampling);
  engine::TextStream text(*tokenizer_, std::move(stops));
  std::vector<int32_t> history = *prompt;
  std::vector<float> logits = std::move(prefill.logits);
  // Greedy without a penalty: decode steps pick the token on the device (one index comes back
  // instead of the logits); the first token is the prefill's, sampled here.
  const bool device_picks = engine::Sampler::PicksArgmax(*sampling);
  std::optional<int32_t> picked;
  v1::FinishReason finish = v1::FINISH_REASON_LENGTH;
  int completion_tokens = 0;
  double time_to_first_token = 0;
  absl::Time last_token = absl::Now();
  for (int i = 0; i < sampling->max_new_tokens; ++i) {
    if (context->IsCancelled()) {
      finish = v1::FINISH_REASON_CANCELLED;
      break;
    }
    const int32_t token = picked ? *picked : sampler.Sample(logits, history);
    const absl::Time now = absl::Now();
    if (i == 0) {
      time_to_first_token = absl::ToDoubleSeconds(now - start);
      metrics_->time_to_first_token.Observe(time_to_first_token);
    } else {
      metrics_->inter_token_latency.Observe(absl::ToDoubleSeconds(now - last_token));
    }
    last_token = now;
    const bool eos = std::find(config.eos_token_ids.begin(), config.eos_token_ids.end(), token) !=
                     config.eos_token_ids.end();
    if (eos) {
      finish = v1::FINISH_REASON_STOP;
      break;
    }
    history.push_back(token);
    ++completion_tokens;
    metrics_->tokens_generated.Increment();
    v1::GenerateResponse piece;
    piece.set_text(text.Push(token));
    piece.add_token_ids(token);
    if (!writer->Write(piece)) {
      finish = v1::FINISH_REASON_CANCELLED;
      break;
    }
    if (text.stopped()) {
      finish = v1::FINISH_REASON_STOP;
      break;
    }
    if (i + 1 == sampling->max_new_tokens) break;
    if (device_picks) {
      absl::StatusOr<int32_t> next = model_->DecodeGreedy(**state, token);
      if (!next.ok()) return next.status();
      picked = *next;
    } else {
      absl::StatusOr<std::vector<float>> next = model_->Decode(**state, token);
      if (!next.ok()) return next.status();
      logits = std::move(*next);
    }
    if (i == 0) WarnIfNotReplaying(**state);
  }

  v1::GenerateResponse last;
  last.set_text(text.Finish());
  last.set_finish_reason(finish);
  v1::Usage* usage = last.mutable_usage();
  usage->set_prompt_tokens(static_cast<int32_t>(prompt->size()));
  usage->set_completion_tokens(completion_tokens);
  usage->set_retrieved_ltm_tokens(memory.retrieved_tokens());
  usage->set_time_to_first_token_seconds(time_to_first_token);
  usage->set_retrieval_seconds(memory.total_seconds());
  if (finish == v1::FINISH_REASON_CANCELLED) {
    writer->Write(last);  // best effort: the client may be gone
    return absl::CancelledError(
        absl::StrCat("Generate cancelled after ", completion_tokens, " tokens"));
  }
  writer->Write(last);
  return absl::OkStatus();
}

}  // namespace mplus::server
