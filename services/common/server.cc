#include "services/common/server.h"

#include <arpa/inet.h>
#include <google/protobuf/descriptor.h>
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/resource_quota.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server_builder.h>
#include <grpcpp/support/server_interceptor.h>
#include <malloc.h>
#include <netdb.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>
#include <CLI/CLI.hpp>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <thread>

#include "services/common/logging.h"

namespace ragserve {
namespace {

StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return InvalidArgument(StrCat("cannot read ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Binds host:port once ourselves to report a precise error (gRPC only says "failed").
Status CheckPortFree(const std::string& host, int port) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  addrinfo* res = nullptr;
  const std::string port_str = std::to_string(port);
  int rc = getaddrinfo(host.c_str(), port_str.c_str(), &hints, &res);
  if (rc != 0) {
    return InvalidArgument(StrCat("cannot resolve listen host '", host, "': ", gai_strerror(rc)));
  }
  Status status = OkStatus();
  for (addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
    int fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
    if (fd < 0) continue;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
      const int err = errno;
      status = Unavailable(StrCat("cannot listen on ", host, ":", port, ": ", std::strerror(err),
                                  err == EADDRINUSE ? " (port already in use)" : ""));
    }
    close(fd);
    break;
  }
  freeaddrinfo(res);
  return status;
}

// Threads gRPC may run synchronous handlers on (reflection); ResourceQuota::SetMaxThreads.
constexpr int kMaxSyncThreads = 16;

// Calls that have arrived and not yet been destroyed, across all servers in the process.
std::atomic<int64_t> g_calls_in_flight{0};

// Per-call interceptor: counts calls in flight and observes latency per method and status code.
class MetricsInterceptor : public grpc::experimental::Interceptor {
 public:
  explicit MetricsInterceptor(grpc::experimental::ServerRpcInfo* info)
      : method_(info->method()),
        start_(std::chrono::steady_clock::now()),
        ctx_(info->server_context()),
        // The auth check (TokenAuth::Check) looks the call's method up here.
        ticket_(RegisterCall(ctx_, info->method())) {
    g_calls_in_flight.fetch_add(1);
  }
  ~MetricsInterceptor() override {
    UnregisterCall(ctx_, ticket_);
    g_calls_in_flight.fetch_sub(1);
  }

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            grpc::experimental::InterceptionHookPoints::PRE_SEND_STATUS)) {
      const grpc::Status st = methods->GetSendStatus();
      const double secs =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
      const std::string code(StatusCodeName(static_cast<StatusCode>(st.error_code())));
      auto& reg = MetricsRegistry::Default();
      reg.GetCounter("ragserve_grpc_requests_total", "gRPC calls finished, by method and code",
                     {{"method", method_}, {"code", code}})
          .Inc();
      reg.GetHistogram("ragserve_grpc_request_duration_seconds",
                       "gRPC call duration from arrival to status, by method", LatencyBuckets(),
                       {{"method", method_}})
          .Observe(secs);
    }
    methods->Proceed();
  }

 private:
  std::string method_;
  std::chrono::steady_clock::time_point start_;
  const grpc::ServerContextBase* ctx_;
  uint64_t ticket_;
};

class MetricsInterceptorFactory : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    return new MetricsInterceptor(info);
  }
};

Status WriteReadyFile(const std::string& path, int grpc_port, int metrics_port) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    if (!out) return InvalidArgument(StrCat("cannot write --ready-file ", path));
    out << "{\"grpc_port\": " << grpc_port << ", \"metrics_port\": " << metrics_port
        << ", \"pid\": " << getpid() << "}\n";
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    return InvalidArgument(StrCat("cannot rename ", tmp, " to ", path, ": ", std::strerror(errno)));
  }
  return OkStatus();
}

// The three credentials of the config (auth.h).
AuthTokens TokensOf(const ServerConfig& cfg) {
  AuthTokens t;
  t.public_token = cfg.auth_token;
  t.internal_token = cfg.internal_token;
  t.admin_token = cfg.admin_token;
  return t;
}

// TLS server credentials; with tls_client_ca, clients must present a certificate it verifies.
StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(const ServerConfig& cfg) {
  if (cfg.tls_cert.empty()) return grpc::InsecureServerCredentials();
  RS_ASSIGN_OR_RETURN(std::string cert, ReadFile(cfg.tls_cert));
  RS_ASSIGN_OR_RETURN(std::string key, ReadFile(cfg.tls_key));
  grpc::SslServerCredentialsOptions opts;
  opts.pem_key_cert_pairs.push_back({key, cert});
  if (!cfg.tls_client_ca.empty()) {
    RS_ASSIGN_OR_RETURN(opts.pem_root_certs, ReadFile(cfg.tls_client_ca));
    opts.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  return grpc::SslServerCredentials(opts);
}

}  // namespace

ServiceServer::ServiceServer(ServerConfig cfg) : cfg_(std::move(cfg)), auth_(TokensOf(cfg_)) {
  executor_ = std::make_unique<BoundedExecutor>(cfg_.executor_threads, cfg_.executor_queue,
                                                int64_t{cfg_.executor_queue_mb} << 20);
  light_executor_ = std::make_unique<BoundedExecutor>(kLightThreads, kLightQueue);
}

ServiceServer::~ServiceServer() { Shutdown(); }

void ServiceServer::AddService(grpc::Service* service, const std::string& full_name) {
  services_.emplace_back(service, full_name);
}

std::string ServiceServer::address() const {
  const std::string host = cfg_.host == "0.0.0.0" || cfg_.host.empty() ? "127.0.0.1" : cfg_.host;
  return StrCat(host, ":", grpc_port_);
}

Status ServiceServer::Start() {
  if (cfg_.port != 0) RS_RETURN_IF_ERROR(CheckPortFree(cfg_.host, cfg_.port));

  RS_RETURN_IF_ERROR(CheckAuthPolicy());
  RS_ASSIGN_OR_RETURN(std::shared_ptr<grpc::ServerCredentials> creds, MakeServerCredentials(cfg_));

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  // Without this, Linux lets a second server bind the same port (SO_REUSEPORT) silently.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  // Accept client keepalive pings every 10 s (ChannelOptions::keepalive_time_ms) during calls;
  // gRPC's default (5 min) would answer them with GOAWAY "too_many_pings".
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 10000);
  const std::string listen = cfg_.host.find(':') != std::string::npos
                                 ? StrCat("[", cfg_.host, "]:", cfg_.port)
                                 : StrCat(cfg_.host, ":", cfg_.port);
  builder.AddListeningPort(listen, creds, &grpc_port_);
  builder.SetMaxReceiveMessageSize(cfg_.max_message_mb * 1024 * 1024);
  builder.SetMaxSendMessageSize(cfg_.max_message_mb * 1024 * 1024);
  // Bounds what gRPC holds before a handler sees a request: without it a flood of message-sized
  // requests is buffered by the transport without limit (docs/RELIABILITY.md "Floods"). The
  // thread limit applies to synchronous handlers only (reflection); ours are callbacks.
  grpc::ResourceQuota quota("ragserve-" + cfg_.service);
  if (cfg_.grpc_memory_mb > 0) {
    quota.Resize(static_cast<size_t>(cfg_.grpc_memory_mb) << 20);
    quota.SetMaxThreads(kMaxSyncThreads);
    builder.SetResourceQuota(quota);
  }
  for (auto& [svc, name] : services_) builder.RegisterService(svc);
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> factories;
  factories.push_back(std::make_unique<MetricsInterceptorFactory>());
  builder.experimental().SetInterceptorCreators(std::move(factories));

  server_ = builder.BuildAndStart();
  if (!server_ || grpc_port_ == 0) {
    server_.reset();
    return Unavailable(StrCat("cannot listen on ", listen, " (address in use or not available)"));
  }
  auto* health = server_->GetHealthCheckService();
  health->SetServingStatus(true);
  for (auto& [svc, name] : services_) health->SetServingStatus(name, true);

  if (cfg_.metrics_port >= 0) {
    metrics_http_ = std::make_unique<MetricsHttpServer>(&metrics());
    auto port = metrics_http_->Start(cfg_.host, cfg_.metrics_port);
    if (!port.ok()) {
      server_->Shutdown();
      server_.reset();
      return port.status();
    }
    metrics_port_ = *port;
  }
  metrics()
      .GetGauge("ragserve_up", "1 while the service is serving", {{"service", cfg_.service}})
      .Set(1);
  RS_LOG(info, "serving {} on {} (grpc port {}, metrics port {}, tls {}, auth {})", cfg_.service,
         listen, grpc_port_, metrics_port_,
         cfg_.tls_cert.empty()        ? "off"
         : cfg_.tls_client_ca.empty() ? "on"
                                      : "mutual",
         auth_.enabled() ? CredentialNames(auth_.configured()) : "off");
  if (!cfg_.ready_file.empty()) {
    RS_RETURN_IF_ERROR(WriteReadyFile(cfg_.ready_file, grpc_port_, metrics_port_));
  }
  return OkStatus();
}

std::shared_ptr<grpc::Channel> ServiceServer::InProcessChannel() {
  if (!server_) return nullptr;
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(cfg_.max_message_mb * 1024 * 1024);
  args.SetMaxSendMessageSize(cfg_.max_message_mb * 1024 * 1024);
  return server_->InProcessChannel(args);
}

Status ServiceServer::CheckAuthPolicy() const {
  for (const auto& [svc, name] : services_) {
    const std::vector<std::string> missing = MethodsWithoutPolicy(name);
    if (!missing.empty()) {
      return Internal(StrCat("no credential policy for ", missing.front(),
                             ": add a row to services/common/auth_policy.cc"));
    }
  }
  if (!auth_.enabled()) return OkStatus();
  // Fail closed: a credential without a token is refused; say which RPCs that shuts off.
  for (CredentialSet cred : {kPublicCred, kInternalCred, kAdminCred}) {
    if ((auth_.configured() & cred) != 0) continue;
    std::string refused;
    for (const auto& [svc, name] : services_) {
      const auto* sd = google::protobuf::DescriptorPool::generated_pool()->FindServiceByName(name);
      for (int i = 0; sd != nullptr && i < sd->method_count(); ++i) {
        const std::string path = "/" + name + "/" + sd->method(i)->name();
        const CredentialSet accepted = AcceptedCredentials(path).value_or(0);
        if ((accepted & cred) != 0 && (accepted & auth_.configured()) == 0) {
          refused += (refused.empty() ? "" : ", ") + sd->method(i)->name();
        }
      }
    }
    if (!refused.empty()) {
      RS_LOG(warn, "auth: no {} token configured; refusing every call to {}", CredentialNames(cred),
             refused);
    }
  }
  return OkStatus();
}

void ServiceServer::RequestStop() {
  {
    MutexLock lock(mu_);
    stop_requested_ = true;
  }
  stop_cv_.notify_all();
}

void ServiceServer::Wait() {
  {
    MutexLock lock(mu_);
    lock.Wait(stop_cv_, [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_requested_; });
  }
  Shutdown();
}

void ServiceServer::Shutdown() {
  {
    MutexLock lock(mu_);
    if (shut_down_) return;
    shut_down_ = true;
    stop_requested_ = true;
  }
  stop_cv_.notify_all();
  if (server_) {
    RS_LOG(info, "draining {} (up to {} s)", cfg_.service, cfg_.drain_seconds);
    server_->GetHealthCheckService()->Shutdown();  // NOT_SERVING for every service name
    // Let calls in flight finish (up to the drain deadline), then shut down with an immediate
    // deadline: gRPC's own deadline would also wait on idle client connections, which keep
    // well-behaved clients (routers with long-lived channels) from ever letting it return early.
    const auto deadline =
        std::chrono::steady_clock::now() +
        std::chrono::milliseconds(static_cast<int64_t>(cfg_.drain_seconds * 1000));
    while (g_calls_in_flight.load() > 0 && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    if (const int64_t left = g_calls_in_flight.load(); left > 0) {
      RS_LOG(warn, "drain deadline passed with {} calls in flight; cancelling them", left);
    }
    server_->Shutdown(std::chrono::system_clock::now());
    server_->Wait();
  }
  executor_->Shutdown();
  light_executor_->Shutdown();
  executor_->WaitIdle(cfg_.drain_seconds);
  light_executor_->WaitIdle(cfg_.drain_seconds);
  if (metrics_http_) metrics_http_->Stop();
  metrics()
      .GetGauge("ragserve_up", "1 while the service is serving", {{"service", cfg_.service}})
      .Set(0);
}

namespace {

// Self-pipe for SIGTERM/SIGINT: the handler only writes the signal number (async-signal-safe);
// a waiter thread turns it into a graceful stop. A handler (not a blocked mask + sigwait) is
// needed because libraries start threads before main() (OpenBLAS's pool does), and a
// process-directed signal may land on any thread that does not block it.
int g_signal_pipe[2] = {-1, -1};

void OnTerminationSignal(int sig) {
  const unsigned char b = static_cast<unsigned char>(sig);
  const int saved = errno;
  [[maybe_unused]] ssize_t n = write(g_signal_pipe[1], &b, 1);
  errno = saved;
}

Status InstallTerminationHandlers() {
  if (pipe(g_signal_pipe) != 0) return Internal(StrCat("pipe: ", std::strerror(errno)));
  struct sigaction sa = {};
  sa.sa_handler = OnTerminationSignal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  if (sigaction(SIGTERM, &sa, nullptr) != 0 || sigaction(SIGINT, &sa, nullptr) != 0) {
    return Internal(StrCat("sigaction: ", std::strerror(errno)));
  }
  signal(SIGPIPE, SIG_IGN);
  return OkStatus();
}

// glibc's malloc keeps up to 8 arenas per core, and memory freed in one arena serves only the
// threads that use it: under a flood of big requests (gRPC, executor and lane threads each
// parsing and freeing messages of up to --max-message-mb) every arena kept its own peak of free
// memory, and kvr's resident memory was ~40% free heap (docs/RELIABILITY.md "Floods"). One arena
// per core (at least 2) lets freed memory serve any thread. An operator's GLIBC_TUNABLES malloc
// setting wins.
void LimitMallocArenas() {
  const char* tunables = std::getenv("GLIBC_TUNABLES");
  if (tunables != nullptr && std::strstr(tunables, "glibc.malloc.") != nullptr) return;
  mallopt(M_ARENA_MAX, static_cast<int>(std::max(2u, std::thread::hardware_concurrency())));
}

}  // namespace

int RunServiceMain(const ServiceMain& m, int argc, char** argv) {
  LimitMallocArenas();
  if (Status s = InstallTerminationHandlers(); !s.ok()) {
    std::cerr << "ragserve-" << m.name << ": " << s.ToString() << "\n";
    return 2;
  }

  ServerConfig cfg;
  cfg.service = m.name;
  cfg.port = m.default_port;
  cfg.metrics_port = m.default_metrics_port;
  CLI::App app(m.description, "ragserve-" + m.name);
  AddServerFlags(app, &cfg);
  if (m.add_flags) m.add_flags(app);
  if (auto code = ParseFlags(app, argc, argv)) return *code;
  if (std::string err = FinishServerConfig(&cfg); !err.empty()) {
    std::cerr << "ragserve-" << m.name << ": " << err << "\n";
    return 1;
  }
  if (cfg.check_flags) {
    // Files named by flags are not opened here: they exist only where the service runs.
    std::cout << "ragserve-" << m.name << ": flags ok\n";
    return 0;
  }
  if (Status s = InitLogging(m.name, cfg.log_level); !s.ok()) {
    std::cerr << "ragserve-" << m.name << ": " << s.message() << "\n";
    return 1;
  }

  ServiceServer server(cfg);
  if (m.setup) {
    if (Status s = m.setup(server); !s.ok()) {
      RS_LOG(error, "setup failed: {}", s.ToString());
      std::cerr << "ragserve-" << m.name << ": " << s.ToString() << "\n";
      return 2;
    }
  }
  if (Status s = server.Start(); !s.ok()) {
    RS_LOG(error, "start failed: {}", s.ToString());
    std::cerr << "ragserve-" << m.name << ": " << s.ToString() << "\n";
    return 2;
  }
  if (m.started) {
    if (Status s = m.started(server); !s.ok()) {
      RS_LOG(error, "start failed: {}", s.ToString());
      std::cerr << "ragserve-" << m.name << ": " << s.ToString() << "\n";
      server.Shutdown();
      if (m.teardown) m.teardown();
      return 2;
    }
  }
  std::thread([&server] {
    unsigned char sig = 0;
    while (read(g_signal_pipe[0], &sig, 1) < 0 && errno == EINTR) {
    }
    RS_LOG(info, "received {}, shutting down", sig == SIGTERM ? "SIGTERM" : "SIGINT");
    server.RequestStop();
  }).detach();
  server.Wait();
  if (m.teardown) m.teardown();
  RS_LOG(info, "{} stopped", m.name);
  spdlog::default_logger()->flush();
  return 0;
}

}  // namespace ragserve
