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
  // Mutual TLS: PEM certificate chain and key files presented to the server (both or neither;
  // they need TLS, i.e. tls_ca).
  std::string tls_client_cert;
  std::string tls_client_key;
  int max_message_mb = 64;
  int min_reconnect_backoff_ms = 100;   // first retry after a failed connection
  int max_reconnect_backoff_ms = 2000;  // backoff cap (gRPC's default is 120 s)
  // HTTP/2 keepalive while calls are in flight: a ping every keepalive_time_ms (0 = off), and
  // the connection (with its calls: UNAVAILABLE) is dropped when one goes unanswered for
  // keepalive_timeout_ms. Catches peers that vanished without closing the connection. Servers
  // started by ServiceServer accept pings down to every 10 s.
  int keepalive_time_ms = 0;
  int keepalive_timeout_ms = 20000;
};

// A channel to "host:port" (insecure, TLS or mutual TLS); message size limits as configured.
// InvalidArgument for an unreadable PEM file or a client certificate without TLS.
StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const std::string& address,
                                                     const ChannelOptions& opts = {});

// Asks grpc.health.v1.Health/Check for `service` ("" = the server). OK when SERVING;
// Unavailable (with the reason) when not serving or unreachable within timeout_s.
Status CheckHealth(const std::shared_ptr<grpc::Channel>& channel, const std::string& service,
                   double timeout_s);

}  // namespace ragserve
