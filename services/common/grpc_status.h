// The one mapping between ragserve::Status and grpc::Status (DESIGN.md "Contracts").
// Codes are numbered alike, so both directions are exact and keep the message, except that
// ToGrpcStatus cuts a message longer than kMaxGrpcMessageBytes: messages quote request values, and
// a status message travels as an HTTP/2 header, which clients refuse above 16 KiB (the caller
// then sees RESOURCE_EXHAUSTED "metadata size exceeds limit" instead of the real code).
#pragma once

#include <grpcpp/support/status.h>

#include "services/common/status.h"

namespace ragserve {

constexpr size_t kMaxGrpcMessageBytes = 1024;

grpc::Status ToGrpcStatus(const Status& s);
Status FromGrpcStatus(const grpc::Status& s);

}  // namespace ragserve
