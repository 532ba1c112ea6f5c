// absl::Status <-> grpc::Status (the canonical codes share their numbers).
#ifndef MPLUS_SERVER_GRPC_STATUS_H_
#define MPLUS_SERVER_GRPC_STATUS_H_

#include <string>

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace mplus::server {

inline grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

// The canonical name of a gRPC code ("OK", "NOT_FOUND", ...), for metric labels.
const char* GrpcCodeName(grpc::StatusCode code);

}  // namespace mplus::server

#endif  // MPLUS_SERVER_GRPC_STATUS_H_
