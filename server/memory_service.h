// mplus.v1.MemoryService: sessions, Inject, streaming Generate, export/import, on top of the
// engine (model, tokenizer, sampler) and the memstore (durable sessions).
#ifndef MPLUS_SERVER_MEMORY_SERVICE_H_
#define MPLUS_SERVER_MEMORY_SERVICE_H_

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "engine/cuda_plugin.h"
#include "engine/model.h"
#include "engine/tokenizer.h"
#include "memstore/memory_store.h"
#include "mplus/v1/memory_service.grpc.pb.h"
#include "server/request_scheduler.h"
#include "server/server_metrics.h"
#include "server/service_options.h"

namespace mplus::server {

class MemoryServiceImpl final : public mplus::v1::MemoryService::Service {
 public:
  // `metrics` must outlive the service.
  MemoryServiceImpl(const ServiceOptions& options, ServerMetrics* metrics);
  ~MemoryServiceImpl() override;

  // Opens the model and the session store; the server reports SERVING only after this.
  absl::Status Open();
  // Refuses new work from now on (SIGTERM); running requests finish.
  void BeginDrain();
  // Stops background work and closes the store (after the gRPC server has shut down).
  void Close();
  // The model's Backend::DeviceWaitSeconds (0 before Open): for the stall watchdog.
  double DeviceWaitSeconds() const;

  grpc::Status CreateSession(grpc::ServerContext*, const v1::CreateSessionRequest*,
                             v1::Session*) override;
  grpc::Status GetSession(grpc::ServerContext*, const v1::GetSessionRequest*,
                          v1::Session*) override;
  grpc::Status ListSessions(grpc::ServerContext*, const v1::ListSessionsRequest*,
                            v1::ListSessionsResponse*) override;
  grpc::Status DeleteSession(grpc::ServerContext*, const v1::DeleteSessionRequest*,
                             v1::DeleteSessionResponse*) override;
  grpc::Status Inject(grpc::ServerContext*, const v1::InjectRequest*, v1::InjectResponse*) override;
  grpc::Status Generate(grpc::ServerContext*, const v1::GenerateRequest*,
                        grpc::ServerWriter<v1::GenerateResponse>*) override;
  grpc::Status ExportSession(grpc::ServerContext*, const v1::ExportSessionRequest*,
                             grpc::ServerWriter<v1::SessionChunk>*) override;
  grpc::Status ImportSession(grpc::ServerContext*, grpc::ServerReader<v1::SessionChunk>*,
                             v1::Session*) override;

 private:
  // Counts the finished RPC in metrics and converts the status.
  grpc::Status Done(const char* rpc, const absl::Status& status);
  absl::Status CheckServing() const;
  absl::Status CheckSessionRoom();
  absl::Status CheckRequestSize(const google::protobuf::Message& request) const;
  absl::Status CheckTokenIds(const google::protobuf::RepeatedField<int32_t>& ids,
                             const char* what) const;
  absl::StatusOr<std::vector<int32_t>> PromptIds(const v1::GenerateRequest& request) const;
  absl::StatusOr<RequestScheduler::Slot> Admit(const std::string& session_id,
                                               grpc::ServerContext* context);
  absl::flat_hash_set<std::string> ResidentSessions() const;
  v1::Session ToProto(const memstore::SessionInfo& info,
                      const absl::flat_hash_set<std::string>& resident) const;
  absl::Status GenerateImpl(grpc::ServerContext* context, const v1::GenerateRequest& request,
                            grpc::ServerWriter<v1::GenerateResponse>* writer);
  absl::Status InjectImpl(grpc::ServerContext* context, const v1::InjectRequest& request,
                          v1::InjectResponse* response);
  void RefreshGauges();

  const ServiceOptions options_;
  ServerMetrics* const metrics_;
  std::unique_ptr<engine::CudaPlugin> cuda_plugin_;  // --device=cuda only
  std::unique_ptr<engine::Tokenizer> tokenizer_;
  std::unique_ptr<engine::Model> model_;
  std::unique_ptr<memstore::MemoryStore> store_;
  RequestScheduler scheduler_;
  std::atomic<bool> serving_{false};
  std::atomic<int64_t> cache_bytes_{0};  // KV caches of generations in flight
  int64_t weight_bytes_ = 0;
  absl::Notification stop_gauges_;
  std::thread gauge_thread_;
};

}  // namespace mplus::server

#endif  // MPLUS_SERVER_MEMORY_SERVICE_H_
