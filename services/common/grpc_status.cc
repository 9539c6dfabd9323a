#include "services/common/grpc_status.h"

namespace ragserve {

grpc::Status ToGrpcStatus(const Status& s) {
  if (s.ok()) return grpc::Status::OK;
  const int code = static_cast<int>(s.code());
  if (code < 0 || code >= kNumStatusCodes)
    return grpc::Status(grpc::StatusCode::UNKNOWN, s.message());
  return grpc::Status(static_cast<grpc::StatusCode>(code), s.message());
}

Status FromGrpcStatus(const grpc::Status& s) {
  if (s.ok()) return OkStatus();
  const int code = static_cast<int>(s.error_code());
  if (code < 0 || code >= kNumStatusCodes) return Status(StatusCode::kUnknown, s.error_message());
  return Status(static_cast<StatusCode>(code), s.error_message());
}

}  // namespace ragserve
