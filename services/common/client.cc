#include "services/common/client.h"

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <sstream>

#include "grpc/health/v1/health.grpc.pb.h"
#include "services/common/grpc_status.h"

namespace ragserve {
namespace {

StatusOr<std::string> ReadPem(const std::string& path, const char* what) {
  std::ifstream in(path);
  if (!in) return InvalidArgument(StrCat("cannot read ", what, " file ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const std::string& address,
                                                     const ChannelOptions& opts) {
  if (address.empty()) return InvalidArgument("empty server address");
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(opts.max_message_mb * 1024 * 1024);
  args.SetMaxSendMessageSize(opts.max_message_mb * 1024 * 1024);
  // Cluster peers restart (rollouts, kill -9): reconnect within a couple of seconds instead of
  // gRPC's default backoff, which grows to two minutes.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, opts.min_reconnect_backoff_ms);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, opts.max_reconnect_backoff_ms);
  // Despite its name, gRPC (1.51 subchannel.cc) reads GRPC_ARG_MIN_RECONNECT_BACKOFF_MS only as
  // the minimum *connect timeout*: an attempt's deadline is max(now + this, next backoff time).
  // It used to be set to the 100 ms first backoff, so a handshake slower than ~100 ms (a loaded
  // machine, a peer still starting) failed ("connection attempt timed out before receiving
  // SETTINGS frame", "tcp handshaker shutdown"), the channel went to TRANSIENT_FAILURE and every
  // call on it failed with UNAVAILABLE until the next attempt.
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, opts.connect_timeout_ms);
  if (opts.keepalive_time_ms > 0) {
    args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, opts.keepalive_time_ms);
    args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, opts.keepalive_timeout_ms);
    args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);  // keep pinging a silent long call
  }
  std::shared_ptr<grpc::ChannelCredentials> creds;
  if (opts.tls_client_cert.empty() != opts.tls_client_key.empty()) {
    return InvalidArgument("a TLS client certificate needs its key and the other way round");
  }
  if (!opts.tls_client_cert.empty() && opts.tls_ca.empty()) {
    return InvalidArgument(StrCat("a TLS client certificate (", opts.tls_client_cert,
                                  ") needs TLS: give the CA bundle of ", address));
  }
  if (!opts.tls_ca.empty()) {
    grpc::SslCredentialsOptions ssl;
    RS_ASSIGN_OR_RETURN(ssl.pem_root_certs, ReadPem(opts.tls_ca, "TLS CA"));
    if (!opts.tls_client_cert.empty()) {
      RS_ASSIGN_OR_RETURN(ssl.pem_cert_chain, ReadPem(opts.tls_client_cert, "TLS client cert"));
      RS_ASSIGN_OR_RETURN(ssl.pem_private_key, ReadPem(opts.tls_client_key, "TLS client key"));
    }
    creds = grpc::SslCredentials(ssl);
    if (!opts.tls_server_name.empty()) {
      args.SetSslTargetNameOverride(opts.tls_server_name);
    }
  } else {
    creds = grpc::InsecureChannelCredentials();
  }
  return grpc::CreateCustomChannel(address, creds, args);
}

StatusOr<std::unique_ptr<PeerChannel>> PeerChannel::Create(const std::string& address,
                                                           const ChannelOptions& opts) {
  RS_ASSIGN_OR_RETURN(auto channel, MakeChannel(address, opts));
  channel->GetState(/*try_to_connect=*/true);  // the first call need not wait for the handshake
  return std::unique_ptr<PeerChannel>(
      new PeerChannel(address, std::move(channel), opts.first_connect_wait_ms));
}

PeerChannel::PeerChannel(std::string address, std::shared_ptr<grpc::Channel> channel,
                         int first_wait_ms)
    : address_(std::move(address)),
      channel_(std::move(channel)),
      first_connect_wait_ms_(first_wait_ms) {}

bool PeerChannel::AwaitFirstConnection(std::chrono::system_clock::time_point deadline,
                                       const std::function<bool()>& caller_gone) {
  if (connected_once_.load(std::memory_order_acquire)) return true;
  // Never connected: the peer may be starting (connections refused, the channel backing off
  // between attempts) or its first handshake is slow. WaitForConnected asks the channel to
  // connect and follows it through its attempts; in short slices, so a caller that gave up
  // (cancelled, server shutting down) does not hold its thread.
  using SysClock = std::chrono::system_clock;
  const auto now = SysClock::now();
  auto until = now + std::chrono::milliseconds(first_connect_wait_ms_);
  if (deadline != SysClock::time_point::max()) until = std::min(until, now + (deadline - now) / 2);
  bool ready = channel_->GetState(/*try_to_connect=*/true) == GRPC_CHANNEL_READY;
  while (!ready && SysClock::now() < until && !(caller_gone && caller_gone())) {
    ready = channel_->WaitForConnected(
        std::min(until, SysClock::now() + std::chrono::milliseconds(100)));
  }
  if (ready) connected_once_.store(true, std::memory_order_release);
  return ready;
}

Status CheckHealth(const std::shared_ptr<grpc::Channel>& channel, const std::string& service,
                   double timeout_s) {
  auto stub = grpc::health::v1::Health::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() +
                   std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000)));
  grpc::health::v1::HealthCheckRequest req;
  req.set_service(service);
  grpc::health::v1::HealthCheckResponse resp;
  grpc::Status st = stub->Check(&ctx, req, &resp);
  if (!st.ok()) return Annotate(FromGrpcStatus(st), "health check");
  if (resp.status() != grpc::health::v1::HealthCheckResponse::SERVING) {
    return Unavailable(
        StrCat("health check: status ",
               grpc::health::v1::HealthCheckResponse::ServingStatus_Name(resp.status())));
  }
  return OkStatus();
}

}  // namespace ragserve
