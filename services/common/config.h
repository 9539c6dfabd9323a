// Service configuration: command-line flags (CLI11), RAGSERVE_* environment variables and an
// optional config file (--config FILE, or RAGSERVE_CONFIG=FILE).
//
// Precedence, per option: a flag on the command line beats the environment variable
// RAGSERVE_<LONG_NAME> (upper case, '-' -> '_'), which beats the config file, which beats the
// default. (CLI11 alone would let the file beat the environment; the environment wins here so a
// Kubernetes Secret or per-pod value overrides a shared file.) Every option gets its environment
// name automatically in ParseFlags, so services only declare flags.
//
// The config file is TOML or INI as CLI11 reads it: one `long-flag-name = value` per line
// (`metrics_port` is read as `metrics-port`), `#` comments, strings quoted or not, lists in
// [a, b]; no sections. A key that names no flag of the program is an error naming the key, and
// values go through the same checks as on the command line.
#pragma once

#include <optional>
#include <string>

// CLI11 is declared only: its header costs ~4 s of compile per unit, and most units that need
// ServerConfig never touch the parser. Units that do include <CLI/CLI.hpp> themselves.
namespace CLI {
class App;
}  // namespace CLI

namespace ragserve {

// Flags every service shares (the server scaffold in server.h consumes them).
struct ServerConfig {
  std::string service;             // "router", "index", ... (logs, metrics, health).
  std::string host = "127.0.0.1";  // gRPC listen address; "0.0.0.0" inside a pod.
  int port = 0;                    // gRPC port; 0 = pick a free one (see ready_file).
  int metrics_port = 0;            // Prometheus /metrics port; 0 = pick one, -1 = off.
  std::string tls_cert;            // PEM certificate chain; TLS is on when cert and key are set.
  std::string tls_key;             // PEM private key.
  std::string tls_client_ca;       // mTLS: PEM CA bundle; clients must present a certificate
                                   // it verifies (needs TLS on: tls_cert and tls_key).
  std::string tls_client_cert;     // mTLS, outgoing calls to other services: this certificate
  std::string tls_client_key;      // chain and key are presented (both or neither).
  // Bearer tokens of the three credentials (auth.h); auth is on when any is set, and a
  // credential without a token is refused. Each can be read from a file (a Kubernetes Secret).
  std::string auth_token;  // public: clients of the router.
  std::string auth_token_file;
  std::string internal_token;       // internal: service-to-service calls (also sent on this
  std::string internal_token_file;  // service's own outgoing calls).
  std::string admin_token;          // admin: administration RPCs.
  std::string admin_token_file;
  std::string log_level = "info";  // trace, debug, info, warn, error, off.
  int max_message_mb = 64;         // Max gRPC message size, both directions.
  int executor_threads = 0;        // Workers for slow work; 0 = number of cores.
  int executor_queue = 1024;       // Bounded queue of the executor; full -> RESOURCE_EXHAUSTED.
  // MiB of request messages that queued and running executor work may hold (a request larger
  // than this still runs when nothing else is held); beyond -> RESOURCE_EXHAUSTED. 0 = no limit.
  int executor_queue_mb = 256;
  // MiB the gRPC transport may hold for this server's connections (a grpc::ResourceQuota):
  // bytes received and not yet handed to a handler, read and write buffers. Near it gRPC
  // shrinks flow-control windows (senders wait), past it cancels streams (RESOURCE_EXHAUSTED
  // "Buffers full"). 0 = gRPC's default (no bound).
  int grpc_memory_mb = 256;
  double drain_seconds = 5.0;  // Graceful shutdown: in-flight RPCs get this long to finish.
  std::string ready_file;      // When set, {"grpc_port":..,"metrics_port":..,"pid":..} is
                               // written here (atomically) once the server is serving.
  bool check_flags = false;    // Parse and check the flags, then exit (deploy manifests' test).
};

// Registers the ServerConfig flags on `app` (defaults taken from `*cfg`).
void AddServerFlags(CLI::App& app, ServerConfig* cfg);

// Adds --config FILE (unless the app has a config option already), gives every option without an
// environment name the name RAGSERVE_<LONG_NAME>, then parses flags, environment and file with
// the precedence above. Returns std::nullopt when the program should go on, or the exit code to
// exit with right away: 0 after --help, non-zero after an error (the message, naming the bad
// flag, key or value, has been printed to stderr).
std::optional<int> ParseFlags(CLI::App& app, int argc, const char* const* argv);

// Post-parse checks of a ServerConfig that CLI11 validators cannot express (cert and key come
// together, token files are readable, the three tokens differ). Loads each token from its file.
// Returns an error message, or "" when the config is usable.
std::string FinishServerConfig(ServerConfig* cfg);

// "RAGSERVE_" + upper(name) with '-' -> '_': the environment name of a long flag.
std::string EnvNameForFlag(const std::string& long_name);

}  // namespace ragserve
