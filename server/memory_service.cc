#include "server/memory_service.h"

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <optional>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "engine/cuda_plugin.h"
#include "engine/drop_slots.h"
#include "engine/status_macros.h"
#include "memstore/byte_codec.h"
#include "memstore/long_term_retriever.h"
#include "memstore/snapshot.h"
#include "server/grpc_status.h"
#include "server/logging.h"

namespace mplus::server {
namespace {

constexpr uint32_t kSnapshotStreamVersion = 1;

google::protobuf::Timestamp MicrosToTimestamp(int64_t micros) {
  google::protobuf::Timestamp t;
  t.set_seconds(micros / 1000000);
  t.set_nanos(static_cast<int32_t>((micros % 1000000) * 1000));
  return t;
}

// Sum of the checkpoint's safetensors file sizes: the weights' footprint.
int64_t WeightBytes(const std::string& dir) {
  int64_t total = 0;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    if (entry.path().extension() == ".safetensors") total += entry.file_size(ec);
  }
  return total;
}

// Host MemTotal / MemAvailable in bytes (the CPU backend's "device" memory).
void HostMemory(int64_t* total, int64_t* available) {
  std::ifstream meminfo("/proc/meminfo");
  std::string key, unit;
  int64_t kib = 0;
  *total = *available = 0;
  while (meminfo >> key >> kib >> unit) {
    if (key == "MemTotal:") *total = kib * 1024;
    if (key == "MemAvailable:") *available = kib * 1024;
  }
}

}  // namespace

MemoryServiceImpl::MemoryServiceImpl(const ServiceOptions& options, ServerMetrics* metrics)
    : options_(options),
      metrics_(metrics),
      scheduler_(options.engine_workers, options.max_queued_requests) {}

MemoryServiceImpl::~MemoryServiceImpl() { Close(); }

absl::Status MemoryServiceImpl::Open() {
  std::string model_dir = options_.model_dir;
  if (model_dir.empty()) {
    model_dir = MPLUS_DEMO_MODEL_DIR;
    LogWarning(
        "no --model given: serving the bundled tiny demo checkpoint %s. Its weights are RANDOM "
        "(it only exercises the API); pass --model=DIR with a checkpoint in the official Hugging "
        "Face layout (e.g. a local copy of YuWangX/mplus-8b) to serve a real model.",
        model_dir);
  }
  std::error_code ec;
  std::filesystem::create_directories(options_.data_dir, ec);
  if (ec) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot create --data_dir ", options_.data_dir, ": ", ec.message()));
  }
  const absl::Time start = absl::Now();
  LogInfo("loading tokenizer from %s", model_dir);
  auto tokenizer = engine::Tokenizer::Load(model_dir + "/tokenizer.json");
  if (!tokenizer.ok()) return tokenizer.status();
  tokenizer_ = std::move(*tokenizer);

  LogInfo("loading model from %s", model_dir);
  engine::ModelOptions model_options;
  model_options.num_threads = options_.cpu_threads;
  if (options_.device == "cuda") {
    auto plugin = engine::CudaPlugin::Load(
        engine::CudaPluginPath(options_.cuda_plugin, MPLUS_CUDA_PLUGIN_BUILD_PATH));
    if (!plugin.ok()) return plugin.status();
    cuda_plugin_ = std::move(*plugin);
    auto backend = cuda_plugin_->CreateBackend(/*device_ordinal=*/0);
    if (!backend.ok()) return backend.status();
    model_options.backend = std::move(*backend);
    LogInfo("CUDA backend on GPU 0");
  }
  model_options.bf16_rope_inv_freq = options_.bf16_rope_inv_freq;
  model_options.replay_decode = options_.cuda_graphs;
  auto kv_cache_dtype = engine::ParseKvCacheDType(options_.kv_cache_dtype);
  if (!kv_cache_dtype.ok()) return kv_cache_dtype.status();
  model_options.kv_cache_dtype = *kv_cache_dtype;
  auto merge_decoder_lora = engine::ParseMergeDecoderLora(options_.merge_decoder_lora);
  if (!merge_decoder_lora.ok()) return merge_decoder_lora.status();
  model_options.merge_decoder_lora = *merge_decoder_lora;
  auto model = engine::Model::Load(model_dir, model_options);
  if (!model.ok()) return model.status();
  model_ = std::move(*model);
  weight_bytes_ = WeightBytes(model_dir);
  const engine::ModelConfig& config = model_->config();
  LogInfo(
      "model: %d layers, hidden %d, vocab %d, %s, KV cache %s, decoder LoRA %s; loaded in "
      "%.1f s",
      static_cast<int>(config.num_hidden_layers), static_cast<int>(config.hidden_size),
      static_cast<int>(config.vocab_size),
      config.has_long_term() ? "M+ (short- and long-term memory)"
      : config.has_memory()  ? "MemoryLLM (short-term memory)"
                             : "plain Llama (no memory)",
      engine::DTypeName(model_->kv_dtype()),
      model_->decoder_lora_merged() ? "merged into the weights" : "applied per product",
      SecondsSince(start));

  memstore::StoreOptions store_options;
  store_options.path = options_.data_dir + "/sessions";
  store_options.sync_writes = options_.sync_writes;
  store_options.block_cache_bytes = options_.block_cache_bytes;
  store_options.resident_budget_bytes = options_.resident_budget_bytes;
  store_options.prefix_cache = options_.prefix_cache;
  MPLUS_ASSIGN_OR_RETURN(store_options.ltm_mode, memstore::ParseLongTermMode(options_.ltm_mode));
  store_options.offload_device_min_queries = options_.offload_gpu_scoring_min_tokens;
  if (cuda_plugin_ != nullptr) {
    MPLUS_ASSIGN_OR_RETURN(engine::CudaPluginMemoryStats device,
                           cuda_plugin_->MemoryStats(model_->backend(), /*device_ordinal=*/0));
    store_options.device_budget_bytes =
        SessionGpuBudgetBytes(options_.gpu_memory_budget_mb, device.device_free_bytes);
    LogInfo("GPU memory: %.1f GiB free after loading the model; sessions may hold %.1f GiB",
            device.device_free_bytes / 1073741824.0,
            store_options.device_budget_bytes / 1073741824.0);
  }
  store_options.on_commit_latency = [this](double seconds) {
    metrics_->store_write_latency.Observe(seconds);
  };
  store_options.on_session_load = [this](double seconds) {
    metrics_->session_load_latency.Observe(seconds);
  };
  auto store = memstore::MemoryStore::Open(store_options, config, model_->weights());
  if (!store.ok()) return store.status();
  store_ = std::move(*store);
  LogInfo("session store %s open (%s WAL sync)", store_options.path,
          options_.sync_writes ? "with" : "WITHOUT");

  RefreshGauges();
  gauge_thread_ = std::thread([this] {
    while (!stop_gauges_.WaitForNotificationWithTimeout(absl::Seconds(2))) RefreshGauges();
  });
  serving_ = true;
  return absl::OkStatus();
}

double MemoryServiceImpl::DeviceWaitSeconds() const {
  return model_ != nullptr ? model_->backend().DeviceWaitSeconds() : 0.0;
}

void MemoryServiceImpl::BeginDrain() {
  serving_ = false;
  scheduler_.Drain();
}

void MemoryServiceImpl::Close() {
  serving_ = false;
  if (gauge_thread_.joinable()) {
    stop_gauges_.Notify();
    gauge_thread_.join();
  }
  if (store_ != nullptr) {
    if (absl::Status s = store_->Flush(); !s.ok()) LogError("flush on close: %s", s.ToString());
    store_.reset();
  }
}

void MemoryServiceImpl::RefreshGauges() {
  if (store_ == nullptr) return;
  const memstore::StoreStats stats = store_->Stats();
  metrics_->sessions_total.Set(static_cast<double>(stats.total_sessions));
  metrics_->sessions_resident.Set(static_cast<double>(stats.resident_sessions));
  metrics_->ltm_tokens.Set(static_cast<double>(stats.ltm_tokens));
  metrics_->store_size_bytes.Set(static_cast<double>(stats.disk_bytes));
  const double evicted_before = metrics_->ltm_evictions.Value();
  if (stats.ltm_evicted_tokens > evicted_before) {
    metrics_->ltm_evictions.Increment(stats.ltm_evicted_tokens - evicted_before);
  }
  metrics_->queue_depth.Set(scheduler_.queued());
  metrics_->requests_running.Set(scheduler_.running());
  int64_t total = 0, available = 0, weights = weight_bytes_;
  HostMemory(&total, &available);
  if (cuda_plugin_ != nullptr) {
    auto device = cuda_plugin_->MemoryStats(model_->backend(), /*device_ordinal=*/0);
    if (device.ok()) {
      weights = device->weights_bytes;
      total = device->device_total_bytes;
      available = device->device_free_bytes;
      // Sessions' device memory is part of the backend's allocations; the rest of those are
      // running generations' KV caches and activations.
      const int64_t sessions = static_cast<int64_t>(stats.resident_device_bytes);
      metrics_->memory_bytes("sessions").Set(static_cast<double>(sessions));
      metrics_->memory_bytes("workspace").Set(static_cast<double>(device->workspace_bytes));
      metrics_->memory_bytes("activations")
          .Set(static_cast<double>(std::max<int64_t>(0, device->other_bytes - sessions)));
    }
  }
  metrics_->memory_bytes("weights").Set(static_cast<double>(weights));
  metrics_->memory_bytes("short_term").Set(static_cast<double>(stats.resident_bytes));
  metrics_->memory_bytes("caches").Set(static_cast<double>(cache_bytes_.load()));
  metrics_->memory_bytes("free").Set(static_cast<double>(available));
  metrics_->memory_bytes("total").Set(static_cast<double>(total));
}

grpc::Status MemoryServiceImpl::Done(const char* rpc, const absl::Status& status) {
  grpc::Status result = ToGrpcStatus(status);
  metrics_->CountRequest(rpc, GrpcCodeName(result.error_code()));
  return result;
}

absl::Status MemoryServiceImpl::CheckServing() const {
  if (!serving_) {
    return absl::UnavailableError("server is not serving (starting up or shutting down)");
  }
  return absl::OkStatus();
}

absl::Status MemoryServiceImpl::CheckSessionRoom() {
  if (store_->Stats().total_sessions >= options_.max_sessions) {
    return absl::ResourceExhaustedError(absl::StrCat("the server holds ", options_.max_sessions,
                                                     " sessions, its limit (--max_sessions); "
                                                     "delete sessions or raise the limit"));
  }
  return absl::OkStatus();
}

absl::Status MemoryServiceImpl::CheckRequestSize(const google::protobuf::Message& request) const {
  const size_t bytes = request.ByteSizeLong();
  if (static_cast<int64_t>(bytes) > options_.max_request_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat("request is ", bytes, " bytes, over the ",
                                                     options_.max_request_bytes,
                                                     "-byte limit (--max_request_bytes)"));
  }
  return absl::OkStatus();
}

absl::Status MemoryServiceImpl::CheckTokenIds(const google::protobuf::RepeatedField<int32_t>& ids,
                                              const char* what) const {
  const int64_t vocab = model_->config().vocab_size;
  for (int i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= vocab) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, "[", i, "] = ", ids[i], " is outside the vocabulary [0, ", vocab, ")"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<RequestScheduler::Slot> MemoryServiceImpl::Admit(const std::string& session_id,
                                                                grpc::ServerContext* context) {
  auto slot = scheduler_.Acquire(session_id, [context] { return context->IsCancelled(); });
  metrics_->queue_depth.Set(scheduler_.queued());
  return slot;
}

absl::flat_hash_set<std::string> MemoryServiceImpl::ResidentSessions() const {
  const std::vector<std::string> ids = store_->ResidentSessions();
  return absl::flat_hash_set<std::string>(ids.begin(), ids.end());
}

v1::Session MemoryServiceImpl::ToProto(const memstore::SessionInfo& info,
                                       const absl::flat_hash_set<std::string>& resident) const {
  const engine::ModelConfig& config = model_->config();
  v1::Session session;
  session.set_session_id(info.id);
  for (const auto& [key, value] : info.labels) (*session.mutable_labels())[key] = value;
  session.set_injected_tokens(info.injected_tokens);
  session.set_inject_count(info.inject_count);
  session.set_stm_tokens(config.has_memory() ? config.stm_tokens() : 0);
  session.set_ltm_tokens(info.ltm_tokens / std::max<int64_t>(1, config.num_hidden_layers));
  *session.mutable_create_time() = MicrosToTimestamp(info.created_micros);
  *session.mutable_update_time() = MicrosToTimestamp(info.updated_micros);
  session.set_resident(resident.contains(info.id));
  return session;
}

// --- Sessions --------------------------------------------------------------------------------

grpc::Status MemoryServiceImpl::CreateSession(grpc::ServerContext*,
                                              const v1::CreateSessionRequest* request,
                                              v1::Session* response) {
  auto run = [&]() -> absl::Status {
    if (absl::Status s = CheckServing(); !s.ok()) return s;
    if (absl::Status s = CheckRequestSize(*request); !s.ok()) return s;
    if (absl::Status s = CheckSessionRoom(); !s.ok()) return s;
    std::string id = request->session_id();
    if (id.empty()) id = absl::StrFormat("s-%016x", absl::ToUnixNanos(absl::Now()) ^ random());
    const std::map<std::string, std::string> labels(request->labels().begin(),
                                                    request->labels().end());
    // Seed 0 asks for one derived from the id, so a re-created session replays identically.
    const uint64_t seed =
        request->seed() != 0 ? request->seed() : memstore::Crc32c(id.data(), id.size()) + 1;
    auto info = store_->CreateSession(id, labels, seed);
    if (!info.ok()) return info.status();
    *response = ToProto(*info, ResidentSessions());
    return absl::OkStatus();
  };
  return Done("CreateSession", run());
}

grpc::Status MemoryServiceImpl::GetSession(grpc::ServerContext*,
                                           const v1::GetSessionRequest* request,
                                           v1::Session* response) {
  auto run = [&]() -> absl::Status {
    if (absl::Status s = CheckServing(); !s.ok()) return s;
    auto info = store_->GetSession(request->session_id());
    if (!info.ok()) return info.status();
    *response = ToProto(*info, ResidentSessions());
    return absl::OkStatus();
  };
  return Done("GetSession", run());
}

grpc::Status MemoryServiceImpl::ListSessions(grpc::ServerContext*,
                                             const v1::ListSessionsRequest* request,
                                             v1::ListSessionsResponse* response) {
  auto run = [&]() -> absl::Status {
    if (absl::Status s = CheckServing(); !s.ok()) return s;
    const int page_size = request->page_size() == 0 ? 100 : request->page_size();
    if (page_size < 1 || page_size > 1000) {
      return absl::InvalidArgumentError(
          absl::StrCat("page_size must be in [1, 1000] (0 means 100), got ", page_size));
    }
    auto page = store_->ListSessions(page_size, request->page_token());
    if (!page.ok()) return page.status();
    const absl::flat_hash_set<std::string> resident = ResidentSessions();
    for (const memstore::SessionInfo& info : page->sessions) {
      *response->add_sessions() = ToProto(info, resident);
    }
    response->set_next_page_token(page->next_page_token);
    return absl::OkStatus();
  };
  return Done("ListSessions", run());
}

grpc::Status MemoryServiceImpl::DeleteSession(grpc::ServerContext* context,
                                              const v1::DeleteSessionRequest* request,
                                              v1::DeleteSessionResponse*) {
  auto run = [&]() -> absl::Status {
    if (absl::Status s = CheckServing(); !s.ok()) return s;
    // Behind any queued work of the session, so a delete never races an inject.
    auto slot = Admit(request->session_id(), context);
    if (!slot.ok()) return slot.status();
    return store_->DeleteSession(request->session_id());
  };
  return Done("DeleteSession", run());
}

// --- Inject ----------------------------------------------------------------------------------

grpc::Status MemoryServiceImpl::Inject(grpc::ServerContext* context,
                                       const v1::InjectRequest* request,
                                       v1::InjectResponse* response) {
  const absl::Time start = absl::Now();
  absl::Status status = InjectImpl(context, *request, response);
  if (status.ok()) metrics_->inject_latency.Observe(SecondsSince(start));
  return Done("Inject", status);
}

absl::Status MemoryServiceImpl::InjectImpl(grpc::ServerContext* context,
                                           const v1::InjectRequest& request,
                                           v1::InjectResponse* response) {
  if (absl::Status s = CheckServing(); !s.ok()) return s;
  if (absl::Status s = CheckRequestSize(request); !s.ok()) return s;
  if (!model_->config().has_memory()) {
    return absl::FailedPreconditionError(
        "this checkpoint is a plain Llama model without memory: Inject needs a MemoryLLM or M+ "
        "checkpoint");
  }
  if (request.request_id().size() > 128) {
    return absl::InvalidArgumentError("request_id is longer than 128 bytes");
  }
  std::vector<int32_t> ids;
  switch (request.content_case()) {
    case v1::InjectRequest::kText:
      ids = tokenizer_->Encode(request.text());
      break;
    case v1::InjectRequest::kTokenIds:
      if (absl::Status s = CheckTokenIds(request.token_ids().ids(), "token_ids.ids"); !s.ok()) {
        return s;
      }
      ids.assign(request.token_ids().ids().begin(), request.token_ids().ids().end());
      break;
    case v1::InjectRequest::CONTENT_NOT_SET:
      return absl::InvalidArgumentError("Inject needs content: set text or token_ids");
  }
  if (ids.empty()) return absl::InvalidArgumentError("Inject content has no tokens");
  const int64_t chunk_tokens =
      request.chunk_tokens() == 0 ? options_.inject_chunk_tokens : request.chunk_tokens();
  if (chunk_tokens < 1 || chunk_tokens > options_.inject_chunk_tokens) {
    return absl::InvalidArgumentError(
        absl::StrCat("chunk_tokens must be in [1, ", options_.inject_chunk_tokens,
                     "] (--inject_chunk_tokens), got ", chunk_tokens));
  }

  auto slot = Admit(request.session_id(), context);
  if (!slot.ok()) return slot.status();
  auto handle = store_->Acquire(request.session_id());
  if (!handle.ok()) return handle.status();

  const int64_t num_chunks = (static_cast<int64_t>(ids.size()) + chunk_tokens - 1) / chunk_tokens;
  const engine::ModelConfig& config = model_->config();
  // Each chunk's write overlaps the next chunk's Model::Inject (StartCommit); a chunk counts as
  // injected once its write is durable, and the reply waits for the last one.
  int64_t writing_tokens = 0;  // of the chunk whose write is in flight
  auto finish_write = [&]() -> absl::Status {
    if (absl::Status s = handle->FinishCommit(); !s.ok()) return s;
    metrics_->tokens_injected.Increment(static_cast<double>(writing_tokens));
    writing_tokens = 0;
    return absl::OkStatus();
  };
  for (int64_t c = 0; c < num_chunks; ++c) {
    // Every chunk commits with its own idempotency key, so a retry after a crash or a cancel
    // resumes after the last durable chunk instead of injecting twice.
    std::optional<std::string> chunk_key;
    if (!request.request_id().empty()) {
      chunk_key = absl::StrCat(request.request_id(), "#", c);
      auto done = handle->FindRequest(*chunk_key);
      if (!done.ok()) {
        if (absl::Status s = finish_write(); !s.ok()) return s;
        return done.status();
      }
      if (done->has_value()) continue;
    }
    if (context->IsCancelled()) {
      if (absl::Status s = finish_write(); !s.ok()) return s;
      return absl::CancelledError(absl::StrCat("Inject cancelled after ", c, " of ", num_chunks,
                                               " chunks (those are durable; retry with the same "
                                               "request_id to finish)"));
    }
    const int64_t begin = c * chunk_tokens;
    const int64_t end = std::min<int64_t>(begin + chunk_tokens, ids.size());
    const absl::Span<const int32_t> chunk(ids.data() + begin, end - begin);
    const memstore::SessionInfo info = handle->info();
    const auto drops = engine::ChooseDropSlots(info.seed, info.inject_count,
                                               config.num_hidden_layers, config.stm_tokens(),
                                               config.num_tokens, config.drop_memory_per_layer);
    auto result = model_->Inject(handle->memory(), chunk, drops);
    if (absl::Status s = finish_write(); !s.ok()) return s;  // the previous chunk's
    if (!result.ok()) return result.status();
    if (absl::Status s = handle->StartCommit(*result, end - begin, chunk_key); !s.ok()) return s;
    writing_tokens = end - begin;
  }
  if (absl::Status s = finish_write(); !s.ok()) return s;
  response->set_tokens_injected(static_cast<int64_t>(ids.size()));
  response->set_chunks(static_cast<int32_t>(num_chunks));
  *response->mutable_session() = ToProto(handle->info(), ResidentSessions());
  return absl::OkStatus();
}

// --- Export / import ----------------------------------------------------------------------

grpc::Status MemoryServiceImpl::ExportSession(grpc::ServerContext* context,
                                              const v1::ExportSessionRequest* request,
                                              grpc::ServerWriter<v1::SessionChunk>* writer) {
  auto run = [&]() -> absl::Status {
    if (absl::Status s = CheckServing(); !s.ok()) return s;
    auto slot = Admit(request->session_id(), context);
    if (!slot.ok()) return slot.status();
    auto info = store_->GetSession(request->session_id());
    if (!info.ok()) return info.status();
    // Hold one chunk back so the last one can be marked.
    std::optional<v1::SessionChunk> pending;
    uint64_t sequence = 0;
    auto flush = [&](bool last) -> absl::Status {
      if (!pending.has_value()) return absl::OkStatus();
      pending->set_last(last);
      if (!writer->Write(*pending)) return absl::CancelledError("client went away during export");
      pending.reset();
      return absl::OkStatus();
    };
    absl::Status s =
        store_->ExportSession(request->session_id(), [&](std::string_view data) -> absl::Status {
          if (context->IsCancelled()) return absl::CancelledError("export cancelled");
          if (absl::Status f = flush(false); !f.ok()) return f;
          v1::SessionChunk chunk;
          if (sequence == 0) {
            chunk.set_format_version(kSnapshotStreamVersion);
            *chunk.mutable_session() = ToProto(*info, ResidentSessions());
            chunk.set_model_digest(absl::StrFormat("%016x", store_->model_digest()));
          }
          chunk.set_sequence(sequence++);
          chunk.set_data(std::string(data));
          chunk.set_crc32c(memstore::Crc32c(data.data(), data.size()));
          pending = std::move(chunk);
          return absl::OkStatus();
        });
    if (!s.ok()) return s;
    return flush(true);
  };
  return Done("ExportSession", run());
}

grpc::Status MemoryServiceImpl::ImportSession(grpc::ServerContext*,
                                              grpc::ServerReader<v1::SessionChunk>* reader,
                                              v1::Session* response) {
  auto run = [&]() -> absl::Status {
    if (absl::Status s = CheckServing(); !s.ok()) return s;
    v1::SessionChunk chunk;
    if (!reader->Read(&chunk)) return absl::InvalidArgumentError("ImportSession got no chunks");
    if (chunk.format_version() != kSnapshotStreamVersion) {
      return absl::InvalidArgumentError(absl::StrCat("snapshot stream format_version ",
                                                     chunk.format_version(),
                                                     " is not supported (this "
                                                     "server reads version ",
                                                     kSnapshotStreamVersion, ")"));
    }
    const std::string digest = absl::StrFormat("%016x", store_->model_digest());
    if (chunk.model_digest() != digest) {
      return absl::FailedPreconditionError(
          absl::StrCat("snapshot is of another model (digest ", chunk.model_digest(),
                       "); this server's model has digest ", digest));
    }
    if (absl::Status s = CheckSessionRoom(); !s.ok()) return s;
    const std::string id = chunk.session().session_id();
    auto import = store_->BeginImport(id);
    if (!import.ok()) return import.status();
    uint64_t expected = 0;
    while (true) {
      if (chunk.sequence() != expected) {
        return absl::InvalidArgumentError(absl::StrCat(
            "snapshot chunk ", chunk.sequence(), " arrived where ", expected, " was expected"));
      }
      if (memstore::Crc32c(chunk.data().data(), chunk.data().size()) != chunk.crc32c()) {
        return absl::DataLossError(
            absl::StrCat("snapshot chunk ", chunk.sequence(), " fails its CRC32C check"));
      }
      if (absl::Status s = (*import)->AddChunk(chunk.data()); !s.ok()) return s;
      ++expected;
      if (chunk.last()) break;
      if (!reader->Read(&chunk)) {
        return absl::InvalidArgumentError("snapshot stream ended before its last chunk");
      }
    }
    auto info = (*import)->Finish();
    if (!info.ok()) return info.status();
    *response = ToProto(*info, ResidentSessions());
    return absl::OkStatus();
  };
  return Done("ImportSession", run());
}

}  // namespace mplus::server
