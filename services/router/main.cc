// ragserve-router: the public RagService (query, ingest, collection admin)
#include <memory>

#include "services/common/server.h"
#include "services/router/router_service.h"

int main(int argc, char** argv) {
  ragserve::router::RouterOptions opts;
  std::unique_ptr<ragserve::router::RouterService> service;
  ragserve::ServiceMain m;
  m.name = "router";
  m.description = "ragserve router: the public RagService (query, ingest, collection admin)";
  m.default_port = 50051;
  m.default_metrics_port = 9091;
  m.add_flags = [&opts](CLI::App& app) {
    app.add_option("--index-addr", opts.index_addr, "IndexService address host:port")
        ->capture_default_str();
    app.add_option("--downstream-token", opts.downstream_token,
                   "Bearer token the router sends to internal services");
    app.add_option("--downstream-tls-ca", opts.downstream_tls_ca,
                   "PEM CA bundle: use TLS to internal services")
        ->check(CLI::ExistingFile);
  };
  m.setup = [&opts, &service](ragserve::ServiceServer& server) -> ragserve::Status {
    RS_ASSIGN_OR_RETURN(service, ragserve::router::RouterService::Create(&server, opts));
    server.AddService(service.get(), "ragserve.v1.RagService");
    return ragserve::OkStatus();
  };
  return ragserve::RunServiceMain(m, argc, argv);
}
