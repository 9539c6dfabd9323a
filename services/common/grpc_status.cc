#include "services/common/grpc_status.h"

#include <string>

namespace ragserve {

namespace {

// At most kMaxGrpcMessageBytes, cut at a UTF-8 character boundary, with a note of the cut.
std::string Bounded(const std::string& message) {
  if (message.size() <= kMaxGrpcMessageBytes) return message;
  size_t n = kMaxGrpcMessageBytes - 64;
  while (n > 0 && (static_cast<unsigned char>(message[n]) & 0xC0) == 0x80) --n;
  return message.substr(0, n) + "... (" + std::to_string(message.size() - n) + " more bytes)";
}

}  // namespace

grpc::Status ToGrpcStatus(const Status& s) {
  if (s.ok()) return grpc::Status::OK;
  const int code = static_cast<int>(s.code());
  if (code < 0 || code >= kNumStatusCodes)
    return grpc::Status(grpc::StatusCode::UNKNOWN, Bounded(s.message()));
  return grpc::Status(static_cast<grpc::StatusCode>(code), Bounded(s.message()));
}

Status FromGrpcStatus(const grpc::Status& s) {
  if (s.ok()) return OkStatus();
  const int code = static_cast<int>(s.error_code());
  if (code < 0 || code >= kNumStatusCodes) return Status(StatusCode::kUnknown, s.error_message());
  return Status(static_cast<StatusCode>(code), s.error_message());
}

}  // namespace ragserve
