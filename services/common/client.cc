#include "services/common/client.h"

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>

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
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, opts.min_reconnect_backoff_ms);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, opts.max_reconnect_backoff_ms);
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
