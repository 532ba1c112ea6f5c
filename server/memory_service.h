// mplus.v1.MemoryService.
#ifndef MPLUS_SERVER_MEMORY_SERVICE_H_
#define MPLUS_SERVER_MEMORY_SERVICE_H_

#include <string>

#include "absl/status/status.h"
#include "mplus/v1/memory_service.grpc.pb.h"

namespace mplus::server {

class MemoryServiceImpl final : public mplus::v1::MemoryService::Service {
 public:
  // Opens the model and the session store; the server reports SERVING only after this.
  absl::Status Open(const std::string& model_dir, const std::string& data_dir);
  // Refuses new work from now on (SIGTERM).
  void BeginDrain();
  // Flushes and closes the store after the gRPC server has shut down.
  void Close();

  grpc::Status CreateSession(grpc::ServerContext*, const v1::CreateSessionRequest*,
                             v1::Session*) override;
  grpc::Status GetSession(grpc::ServerContext*, const v1::GetSessionRequest*,
                          v1::Session*) override;
  grpc::Status ListSessions(grpc::ServerContext*, const v1::ListSessionsRequest*,
                            v1::ListSessionsResponse*) override;
  grpc::Status DeleteSession(grpc::ServerContext*, const v1::DeleteSessionRequest*,
                             v1::DeleteSessionResponse*) override;
  grpc::Status Inject(grpc::ServerContext*, const v1::InjectRequest*,
                      v1::InjectResponse*) override;
  grpc::Status Generate(grpc::ServerContext*, const v1::GenerateRequest*,
                        grpc::ServerWriter<v1::GenerateResponse>*) override;
  grpc::Status ExportSession(grpc::ServerContext*, const v1::ExportSessionRequest*,
                             grpc::ServerWriter<v1::SessionChunk>*) override;
  grpc::Status ImportSession(grpc::ServerContext*, grpc::ServerReader<v1::SessionChunk>*,
                             v1::Session*) override;
};

}  // namespace mplus::server

#endif  // MPLUS_SERVER_MEMORY_SERVICE_H_
