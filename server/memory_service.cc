#include "server/memory_service.h"

#include <filesystem>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "server/logging.h"

namespace mplus::server {
namespace {

grpc::Status NotYet(const char* rpc, const char* part) {
  return grpc::Status(grpc::StatusCode::UNIMPLEMENTED,
                      absl::StrCat(rpc, " is not implemented yet: it needs ", part));
}

}  // namespace

absl::Status MemoryServiceImpl::Open(const std::string& model_dir, const std::string& data_dir) {
  std::error_code ec;
  std::filesystem::create_directories(data_dir, ec);
  if (ec) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot create --data_dir ", data_dir, ": ", ec.message()));
  }
  std::string model = model_dir;
  if (model.empty()) {
    model = MPLUS_DEMO_MODEL_DIR;
    LogWarning(
        "no --model given: serving the bundled tiny demo checkpoint %s. Its weights are RANDOM "
        "(it only exercises the API); pass --model=DIR with a checkpoint in the official Hugging "
        "Face layout (e.g. a local copy of YuWangX/mplus-8b) to serve a real model.",
        model);
  }
  if (!std::filesystem::exists(std::filesystem::path(model) / "config.json")) {
    return absl::NotFoundError(absl::StrCat("--model ", model, " has no config.json"));
  }
  LogInfo("data directory %s; model %s", data_dir, model);
  return absl::OkStatus();
}

void MemoryServiceImpl::BeginDrain() {}
void MemoryServiceImpl::Close() {}

grpc::Status MemoryServiceImpl::CreateSession(grpc::ServerContext*,
                                              const v1::CreateSessionRequest*, v1::Session*) {
  return NotYet("CreateSession", "the RocksDB session store (memstore)");
}
grpc::Status MemoryServiceImpl::GetSession(grpc::ServerContext*, const v1::GetSessionRequest*,
                                           v1::Session*) {
  return NotYet("GetSession", "the RocksDB session store (memstore)");
}
grpc::Status MemoryServiceImpl::ListSessions(grpc::ServerContext*,
                                             const v1::ListSessionsRequest*,
                                             v1::ListSessionsResponse*) {
  return NotYet("ListSessions", "the RocksDB session store (memstore)");
}
grpc::Status MemoryServiceImpl::DeleteSession(grpc::ServerContext*,
                                              const v1::DeleteSessionRequest*,
                                              v1::DeleteSessionResponse*) {
  return NotYet("DeleteSession", "the RocksDB session store (memstore)");
}
grpc::Status MemoryServiceImpl::Inject(grpc::ServerContext*, const v1::InjectRequest*,
                                       v1::InjectResponse*) {
  return NotYet("Inject", "the M+ engine and the session store");
}
grpc::Status MemoryServiceImpl::Generate(grpc::ServerContext*, const v1::GenerateRequest*,
                                         grpc::ServerWriter<v1::GenerateResponse>*) {
  return NotYet("Generate", "the M+ engine and the session store");
}
grpc::Status MemoryServiceImpl::ExportSession(grpc::ServerContext*,
                                              const v1::ExportSessionRequest*,
                                              grpc::ServerWriter<v1::SessionChunk>*) {
  return NotYet("ExportSession", "session snapshots (memstore)");
}
grpc::Status MemoryServiceImpl::ImportSession(grpc::ServerContext*,
                                              grpc::ServerReader<v1::SessionChunk>*,
                                              v1::Session*) {
  return NotYet("ImportSession", "session snapshots (memstore)");
}

}  // namespace mplus::server
