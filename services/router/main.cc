// ragserve-router: the public RagService (query, ingest, collection admin)
#include <CLI/CLI.hpp>
#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "services/common/server.h"
#include "services/router/http_api.h"
#include "services/router/router_service.h"

int main(int argc, char** argv) {
  ragserve::router::RouterOptions opts;
  std::string decoders;  // default: 127.0.0.1:50055 unless --decoders-dns is given
  std::vector<std::string> served_models;
  std::unique_ptr<ragserve::router::RouterService> service;
  ragserve::router::HttpApiOptions http;
  int http_max_body_mb = 8;
  std::unique_ptr<ragserve::router::HttpApi> http_api;
  ragserve::ServiceMain m;
  m.name = "router";
  m.description = "ragserve router: the public RagService (query, ingest, collection admin)";
  m.default_port = 50051;
  m.default_metrics_port = 9091;
  m.add_flags = [&opts, &decoders, &http, &served_models, &http_max_body_mb](CLI::App& app) {
    app.add_option("--http-port", http.port,
                   "OpenAI-compatible HTTP API port (0 = off); same host, TLS and token as gRPC")
        ->capture_default_str()
        ->check(CLI::Range(0, 65535));
    app.add_option("--served-model-name", served_models,
                   "Model names /v1/models lists and HTTP requests must name; the first labels the "
                   "serving metrics (default ragserve)")
        ->delimiter(',');
    app.add_option("--http-threads", http.threads,
                   "HTTP requests served at once (a stream holds one until it ends)")
        ->capture_default_str()
        ->check(CLI::Range(1, 4096));
    app.add_option("--http-max-body-mb", http_max_body_mb, "Largest HTTP request body; beyond: 413")
        ->capture_default_str()
        ->check(CLI::Range(1, 1024));
    app.add_option("--index-addr", opts.index_addr, "IndexService address host:port")
        ->capture_default_str();
    app.add_option("--ctxcache-addr", opts.ctxcache_addr,
                   "ContextCacheService host:port (Ingest pre_encode)");
    app.add_option("--downstream-token", opts.downstream_token,
                   "Bearer token the router sends to internal services (default: the internal "
                   "token, --internal-token)");
    app.add_option("--downstream-tls-ca", opts.downstream_tls_ca,
                   "PEM CA bundle: use TLS to internal services")
        ->check(CLI::ExistingFile);
    app.add_option("--decoders", decoders,
                   "Decode workers host:port, comma-separated (default 127.0.0.1:50055 when "
                   "--decoders-dns is not given)");
    app.add_option("--decoders-dns", opts.workers.dns,
                   "DNS name host:port resolved to all decode workers (headless Service)");
    app.add_option("--policy", opts.policy, "Routing: round_robin | least_load | cache_aware")
        ->capture_default_str()
        ->check(CLI::IsMember({"round_robin", "least_load", "cache_aware"}));
    app.add_option("--resolve-interval", opts.workers.resolve_interval_s,
                   "Seconds between DNS re-resolutions")
        ->capture_default_str()
        ->check(CLI::PositiveNumber);
    app.add_option("--poll-interval", opts.workers.poll_interval_s,
                   "Seconds between worker load/health polls")
        ->capture_default_str()
        ->check(CLI::PositiveNumber);
    app.add_option("--max-inflight-per-worker", opts.workers.max_inflight_per_worker,
                   "Queries on one worker at once")
        ->capture_default_str()
        ->check(CLI::Range(1, 1 << 20));
    app.add_option("--max-attempts", opts.max_attempts,
                   "Workers tried per query when one fails (failover)")
        ->capture_default_str()
        ->check(CLI::Range(1, 16));
    app.add_option("--default-top-k", opts.default_top_k, "Passages retrieved when unset")
        ->capture_default_str()
        ->check(CLI::Range(1, 64));
    app.add_option("--default-max-tokens", opts.default_max_tokens, "Answer tokens when unset")
        ->capture_default_str()
        ->check(CLI::Range(1, 1 << 20));
    app.add_option("--query-threads", opts.query_threads, "Queries orchestrated at once")
        ->capture_default_str()
        ->check(CLI::Range(1, 4096));
    app.add_option("--worker-timeout", opts.workers.call_timeout_s,
                   "Seconds a decode worker call may run when the client allows longer (or set "
                   "no deadline); then it fails over")
        ->capture_default_str()
        ->check(CLI::PositiveNumber);
    app.add_option("--worker-idle-timeout", opts.worker_idle_timeout_s,
                   "Seconds a decode worker's answer stream may send nothing after its first "
                   "message; then the worker counts as failed and the query moves to another "
                   "(0 = off)")
        ->capture_default_str()
        ->check(CLI::Range(0.0, 86400.0));
    app.add_option("--index-timeout", opts.index_timeout_s,
                   "Seconds an index call (search, admin, ingest's create) may take within the "
                   "client's deadline; then UNAVAILABLE (0 = the client's deadline only)")
        ->capture_default_str()
        ->check(CLI::Range(0.0, 86400.0));
    app.add_option("--ctxcache-timeout", opts.ctxcache_timeout_s,
                   "Seconds a context cache call (Ingest pre_encode) may take within the "
                   "client's deadline; then UNAVAILABLE (0 = the client's deadline only)")
        ->capture_default_str()
        ->check(CLI::Range(0.0, 86400.0));
    app.add_option("--worker-keepalive", opts.worker_keepalive_s,
                   "Seconds between keepalive pings to decode workers during calls (0 = off)")
        ->capture_default_str()
        ->check(CLI::Range(0.0, 3600.0));
    app.add_option("--max-ingest-docs", opts.max_ingest_docs,
                   "Documents per Ingest message; beyond: INVALID_ARGUMENT")
        ->capture_default_str()
        ->check(CLI::Range(1, 1 << 24));
    app.add_option("--ingest-chunk-tokens", opts.ingest_chunk_tokens,
                   "Ingest cuts longer documents into passages of this many words (0 = off)")
        ->capture_default_str()
        ->check(CLI::Range(0, 100000));
    app.add_option("--ingest-chunk-overlap", opts.ingest_chunk_overlap,
                   "Words shared by consecutive passages of a cut document")
        ->capture_default_str()
        ->check(CLI::Range(0, 99999));
    app.add_option("--query-queue", opts.query_queue,
                   "Queries waiting for a thread before RESOURCE_EXHAUSTED")
        ->capture_default_str()
        ->check(CLI::Range(0, 1 << 20));
  };
  m.setup = [&opts, &service, &decoders,
             &served_models](ragserve::ServiceServer& server) -> ragserve::Status {
    if (!served_models.empty()) opts.served_model_name = served_models.front();
    opts.workers.addresses.clear();
    if (decoders.empty() && opts.workers.dns.empty()) decoders = "127.0.0.1:50055";
    for (size_t start = 0; start <= decoders.size();) {
      const size_t comma = std::min(decoders.find(',', start), decoders.size());
      if (comma > start) opts.workers.addresses.push_back(decoders.substr(start, comma - start));
      start = comma + 1;
    }
    if (opts.downstream_token.empty()) opts.downstream_token = server.config().internal_token;
    RS_ASSIGN_OR_RETURN(service, ragserve::router::RouterService::Create(&server, opts));
    server.AddService(service.get(), "ragserve.v1.RagService");
    return ragserve::OkStatus();
  };
  m.started = [&http, &http_api, &served_models,
               &http_max_body_mb](ragserve::ServiceServer& server) -> ragserve::Status {
    if (http.port == 0) return ragserve::OkStatus();
    const ragserve::ServerConfig& cfg = server.config();
    http.host = cfg.host;
    http.tls_cert = cfg.tls_cert;
    http.tls_key = cfg.tls_key;
    http.auth_token = cfg.auth_token;
    if (!served_models.empty()) http.models = served_models;
    http.max_body_bytes = static_cast<size_t>(http_max_body_mb) << 20;
    RS_ASSIGN_OR_RETURN(http_api,
                        ragserve::router::HttpApi::Start(http, server.InProcessChannel()));
    return ragserve::OkStatus();
  };
  m.teardown = [&http_api] { http_api.reset(); };
  return ragserve::RunServiceMain(m, argc, argv);
}
