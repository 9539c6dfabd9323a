// Client-side helpers: channels to ragserve services and health checks.
//
// Connections between services (docs/RELIABILITY.md, "Connections between services"):
//  * Every channel (MakeChannel) gives one connection attempt connect_timeout_ms (TCP + TLS + the
//    server's HTTP/2 SETTINGS) and retries a failed one after 100 ms, backing off to 2 s.
//  * A call on a channel that is not connected fails at once with UNAVAILABLE (gRPC's default,
//    no wait_for_ready): a dead peer is reported quickly and the router fails over between
//    decode workers without waiting for a deadline.
//  * Except while a peer has never been reached: a PeerChannel (a peer with no replica to fail
//    over to: the router's index and context cache) makes its first calls wait for the first
//    connection, since services start in any order (pods, test clusters).
#pragma once

#include <grpcpp/channel.h>

#include <atomic>
#include <chrono>
#include <functional>
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
  // Longest one connection attempt may take before it counts as failed: TCP connect, TLS and the
  // server's first HTTP/2 SETTINGS frame. gRPC's default. It must stay far above the handshake
  // time of a loaded machine (a refused or reset connection fails at once whatever this is).
  int connect_timeout_ms = 20000;
  // PeerChannel only: the longest a call waits for the first connection when its deadline
  // allows longer (or it has none).
  int first_connect_wait_ms = 10000;
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

// A channel to a peer that has no replica to fail over to (the router's index and context cache),
// and the one rule for calls on it: until the channel has been connected once, a call first waits
// for the connection (the peer may still be starting); once it has, calls never wait (a peer lost
// later fails them at once with UNAVAILABLE, as on any channel). Thread-safe.
class PeerChannel {
 public:
  // InvalidArgument as MakeChannel. Starts connecting at once.
  static StatusOr<std::unique_ptr<PeerChannel>> Create(const std::string& address,
                                                       const ChannelOptions& opts = {});

  const std::shared_ptr<grpc::Channel>& channel() const { return channel_; }
  const std::string& address() const { return address_; }

  // Call before each call that gives up at `deadline` (time_point::max() = none). Returns at once
  // if the channel is or has been connected; else waits until it connects, at most half the time
  // left before `deadline` (the call keeps the other half to fail with the peer's real error,
  // UNAVAILABLE and why, rather than DEADLINE_EXCEEDED), at most first_connect_wait_ms, and no
  // longer than until `caller_gone` (checked every 100 ms; may be empty) says true.
  // True when the channel is connected (the call may still fail: the caller reports that).
  bool AwaitFirstConnection(std::chrono::system_clock::time_point deadline,
                            const std::function<bool()>& caller_gone = {});

 private:
  PeerChannel(std::string address, std::shared_ptr<grpc::Channel> channel, int first_wait_ms);

  const std::string address_;
  const std::shared_ptr<grpc::Channel> channel_;
  const int first_connect_wait_ms_;
  std::atomic<bool> connected_once_{false};
};

// Asks grpc.health.v1.Health/Check for `service` ("" = the server). OK when SERVING;
// Unavailable (with the reason) when not serving or unreachable within timeout_s.
Status CheckHealth(const std::shared_ptr<grpc::Channel>& channel, const std::string& service,
                   double timeout_s);

}  // namespace ragserve
