// The one mapping between ragserve::Status and grpc::Status (DESIGN.md "Contracts").
// Codes are numbered alike, so both directions are exact and keep the message.
#pragma once

#include <grpcpp/support/status.h>

#include "services/common/status.h"

namespace ragserve {

grpc::Status ToGrpcStatus(const Status& s);
Status FromGrpcStatus(const grpc::Status& s);

}  // namespace ragserve
