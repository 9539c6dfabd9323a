// The server scaffold every ragserve service is built on.
//
// ServiceServer wires: gRPC health (grpc.health.v1) and reflection, max message sizes, optional
// TLS (mutual with --tls-client-ca), bearer-token auth with three credentials (auth.h; handlers
// call PrecheckCall first, which checks the call's method against auth_policy.cc), a bounded
// executor for slow work and a small lane for cheap calls, a gRPC ResourceQuota
// (--grpc-memory-mb: what the transport may hold before handlers run), request metrics (count +
// latency per method and code) served with everything else on a separate /metrics HTTP port, and
// graceful shutdown: health turns NOT_SERVING, new calls are refused, in-flight calls get
// drain_seconds to finish.
//
// RunServiceMain is the whole main() of a service binary: flags (+ RAGSERVE_* env), logging,
// start, wait for SIGTERM/SIGINT, graceful stop, exit code.
#pragma once

#include <grpcpp/server.h>

#include <atomic>
#include <condition_variable>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "services/common/auth.h"
#include "services/common/config.h"
#include "services/common/executor.h"
#include "services/common/metrics.h"
#include "services/common/mutex.h"
#include "services/common/status.h"

namespace ragserve {

class ServiceServer {
 public:
  explicit ServiceServer(ServerConfig cfg);
  ~ServiceServer();  // Shutdown() if still running.

  // Registers a service (not owned; must outlive the server) under its full proto name, e.g.
  // "ragserve.v1.IndexService", which health checks also answer for. Call before Start(); every
  // method of it needs a row in the credential table (auth_policy.cc) or Start() fails.
  void AddService(grpc::Service* service, const std::string& full_name);

  // Binds and starts serving. A port already in use, an unreadable TLS file or a failure to
  // bind gives Unavailable/InvalidArgument naming the address; a registered RPC without a
  // credential policy gives Internal naming it. Warns about credentials without a token.
  Status Start();

  // Graceful stop (idempotent): NOT_SERVING, then gRPC shutdown with the drain deadline, then
  // the executors drain, then /metrics stops.
  void Shutdown();

  // Blocks until Shutdown() was called or (in a binary, see RunServiceMain) a SIGTERM/SIGINT
  // arrived, then performs Shutdown().
  void Wait();
  // Makes Wait() return (safe from any thread).
  void RequestStop();

  int grpc_port() const { return grpc_port_; }
  int metrics_port() const { return metrics_port_; }
  const ServerConfig& config() const { return cfg_; }
  const TokenAuth& auth() const { return auth_; }
  BoundedExecutor& executor() { return *executor_; }
  // The lane of cheap calls (load reports, stats, listings: bounded, in-memory, no I/O), apart
  // from executor() so they are answered while a flood keeps executor() busy: kLightThreads
  // threads, kLightQueue queued calls, no byte budget (their requests are small).
  BoundedExecutor& light_executor() { return *light_executor_; }
  static constexpr int kLightThreads = 2;
  static constexpr int kLightQueue = 256;
  MetricsRegistry& metrics() { return MetricsRegistry::Default(); }
  // "127.0.0.1:50051": where clients reach this server.
  std::string address() const;
  // A channel to this server's own services that stays in the process (no socket, no TLS); calls
  // on it are ordinary calls (auth, metrics, drain apply). Null before Start().
  std::shared_ptr<grpc::Channel> InProcessChannel();

 private:
  Status CheckAuthPolicy() const;

  ServerConfig cfg_;
  TokenAuth auth_;
  std::unique_ptr<BoundedExecutor> executor_;
  std::unique_ptr<BoundedExecutor> light_executor_;
  std::vector<std::pair<grpc::Service*, std::string>> services_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<MetricsHttpServer> metrics_http_;
  int grpc_port_ = 0;
  int metrics_port_ = 0;

  Mutex mu_;
  std::condition_variable stop_cv_;
  bool stop_requested_ ABSL_GUARDED_BY(mu_) = false;
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
};

// What a service binary plugs into RunServiceMain.
struct ServiceMain {
  std::string name;         // "index" -> binary ragserve-index, logger "index"
  std::string description;  // One line for --help.
  int default_port = 0;     // Default gRPC port of this service.
  int default_metrics_port = 0;
  // Adds service-specific flags to the app (optional).
  std::function<void(CLI::App&)> add_flags;
  // Called after flags are parsed and before Start(): create the service objects (kept alive
  // by the caller), register them with server.AddService(). An error exits with code 2.
  std::function<Status(ServiceServer&)> setup;
  // Called once the server is serving (e.g. to start a second front end on InProcessChannel()).
  // An error stops the server and exits with code 2. Optional.
  std::function<Status(ServiceServer&)> started;
  // Called after the server stopped (flush state, close databases). Optional.
  std::function<void()> teardown;
};

// The whole main() of a service: returns the process exit code (0 after a clean SIGTERM stop,
// 0 after --help, 1 on a bad flag, 2 when setup or start fails).
int RunServiceMain(const ServiceMain& m, int argc, char** argv);

}  // namespace ragserve
