// Client-side helpers: channels to ragserve services and health checks.
#pragma once

#include <grpcpp/channel.h>

#include <memory>
#include <string>

#include "services/common/status.h"

namespace ragserve {

struct ChannelOptions {
  std::string tls_ca;           // PEM CA bundle file; TLS is used when set.
  std::string tls_server_name;  // Override of the name checked in the server certificate.
  int max_message_mb = 64;
  int min_reconnect_backoff_ms = 100;   // first retry after a failed connection
  int max_reconnect_backoff_ms = 2000;  // backoff cap (gRPC's default is 120 s)
};

// A channel to "host:port" (insecure or TLS); message size limits as configured.
StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const std::string& address,
                                                     const ChannelOptions& opts = {});

// Asks grpc.health.v1.Health/Check for `service` ("" = the server). OK when SERVING;
// Unavailable (with the reason) when not serving or unreachable within timeout_s.
Status CheckHealth(const std::shared_ptr<grpc::Channel>& channel, const std::string& service,
                   double timeout_s);

}  // namespace ragserve
