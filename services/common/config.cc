#include "services/common/config.h"

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <tuple>

namespace ragserve {

std::string EnvNameForFlag(const std::string& long_name) {
  std::string env = "RAGSERVE_";
  for (char c : long_name) {
    env += c == '-' ? '_' : static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  }
  return env;
}

void AddServerFlags(CLI::App& app, ServerConfig* cfg) {
  app.add_option("--host", cfg->host, "gRPC listen address")->capture_default_str();
  app.add_option("--port", cfg->port, "gRPC listen port (0 = any free port)")
      ->check(CLI::Range(0, 65535))
      ->capture_default_str();
  app.add_option("--metrics-port", cfg->metrics_port,
                 "Prometheus /metrics HTTP port (0 = any free port, -1 = off)")
      ->check(CLI::Range(-1, 65535))
      ->capture_default_str();
  app.add_option("--tls-cert", cfg->tls_cert, "PEM certificate chain (enables TLS with --tls-key)")
      ->check(CLI::ExistingFile);
  app.add_option("--tls-key", cfg->tls_key, "PEM private key (enables TLS with --tls-cert)")
      ->check(CLI::ExistingFile);
  app.add_option("--tls-client-ca", cfg->tls_client_ca,
                 "PEM CA bundle: require client certificates it verifies (mutual TLS)")
      ->check(CLI::ExistingFile);
  app.add_option("--tls-client-cert", cfg->tls_client_cert,
                 "PEM certificate chain presented on calls to other services (mutual TLS)")
      ->check(CLI::ExistingFile);
  app.add_option("--tls-client-key", cfg->tls_client_key, "PEM private key of --tls-client-cert")
      ->check(CLI::ExistingFile);
  app.add_option("--auth-token", cfg->auth_token,
                 "Public credential: bearer token of the router's clients (prefer the -file)");
  app.add_option("--auth-token-file", cfg->auth_token_file, "File holding the public token")
      ->check(CLI::ExistingFile);
  app.add_option("--internal-token", cfg->internal_token,
                 "Internal credential: bearer token of service-to-service calls, also sent on "
                 "this service's calls to others (prefer the -file)");
  app.add_option("--internal-token-file", cfg->internal_token_file,
                 "File holding the internal token")
      ->check(CLI::ExistingFile);
  app.add_option("--admin-token", cfg->admin_token,
                 "Admin credential: bearer token of administration RPCs (prefer the -file)");
  app.add_option("--admin-token-file", cfg->admin_token_file, "File holding the admin token")
      ->check(CLI::ExistingFile);
  app.add_option("--log-level", cfg->log_level, "trace, debug, info, warn, error or off")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "off"}))
      ->capture_default_str();
  app.add_option("--max-message-mb", cfg->max_message_mb, "Max gRPC message size in MiB")
      ->check(CLI::Range(1, 2047))
      ->capture_default_str();
  app.add_option("--executor-threads", cfg->executor_threads,
                 "Threads for slow work (0 = number of cores)")
      ->check(CLI::Range(0, 1024))
      ->capture_default_str();
  app.add_option("--executor-queue", cfg->executor_queue, "Bound of the slow-work queue")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  app.add_option("--executor-queue-mb", cfg->executor_queue_mb,
                 "MiB of request messages queued and running slow work may hold; beyond: "
                 "RESOURCE_EXHAUSTED (0 = no limit)")
      ->check(CLI::Range(0, 1 << 20))
      ->capture_default_str();
  app.add_option("--grpc-memory-mb", cfg->grpc_memory_mb,
                 "MiB gRPC may hold for this server's connections (received, not yet handled "
                 "messages, transport buffers); near it senders wait, past it streams end "
                 "RESOURCE_EXHAUSTED (0 = no bound)")
      ->check(CLI::Range(0, 1 << 20))
      ->capture_default_str();
  app.add_option("--drain-seconds", cfg->drain_seconds,
                 "Seconds in-flight RPCs get to finish on SIGTERM")
      ->check(CLI::Range(0.0, 3600.0))
      ->capture_default_str();
  app.add_option("--ready-file", cfg->ready_file,
                 "Write the bound ports as JSON to this file once serving");
  app.add_flag("--check-flags", cfg->check_flags,
               "Only parse and check the flags (and environment), print the result, exit");
}

namespace {

// CLI11's TOML/INI reader with this project's rules (config.h): keys name long flags ('_' read
// as '-'), an unknown key or a section is an error naming it, and a key whose option is set in
// the environment is dropped so the environment beats the file.
class ServiceConfigFile : public CLI::ConfigTOML {
 public:
  explicit ServiceConfigFile(const CLI::App* app) : app_(app) {}

  std::vector<CLI::ConfigItem> from_config(std::istream& input) const override {
    std::vector<CLI::ConfigItem> kept;
    for (CLI::ConfigItem& item : CLI::ConfigTOML::from_config(input)) {
      if (!item.parents.empty()) {
        throw CLI::ConfigError(FileMessage("sections are not supported (found '" +
                                           item.parents.front() +
                                           "'); write each flag as a top-level key"));
      }
      std::string name = item.name;
      std::replace(name.begin(), name.end(), '_', '-');
      const CLI::Option* opt = app_->get_option_no_throw("--" + name);
      if (opt == nullptr) {
        throw CLI::ConfigError(FileMessage("unknown key '" + item.name +
                                           "' (no such flag: see --help for the flags)"));
      }
      const std::string& env = opt->get_envname();
      const char* env_value = env.empty() ? nullptr : std::getenv(env.c_str());
      if (env_value != nullptr && *env_value != '\0') continue;  // the environment wins
      if (item.inputs.size() > 1 && opt->get_items_expected_max() == 1) {
        // CLI11 reads an unquoted `a,b` as a list; a single-valued flag takes it as written.
        std::string joined = item.inputs.front();
        for (size_t i = 1; i < item.inputs.size(); ++i) joined += "," + item.inputs[i];
        item.inputs = {joined};
      }
      item.name = name;
      kept.push_back(std::move(item));
    }
    return kept;
  }

 private:
  // "config file <path>: <what>".
  std::string FileMessage(const std::string& what) const {
    std::string path;
    if (const CLI::Option* cfg = app_->get_config_ptr(); cfg != nullptr) {
      path = cfg->results().empty() ? cfg->get_default_str() : cfg->results().front();
    }
    return "config file " + path + ": " + what;
  }

  const CLI::App* app_;
};

// --config FILE; RAGSERVE_CONFIG names the file when the flag does not.
void AddConfigOption(CLI::App& app) {
  if (app.get_config_ptr() != nullptr) return;
  CLI::Option* opt = app.set_config(
      "--config", "",
      "TOML/INI file of flag values (`long-flag-name = value` per line); a flag beats "
      "RAGSERVE_* beats the file beats the default");
  opt->check(CLI::ExistingFile);
  opt->envname(EnvNameForFlag("config"));
  if (const char* env = std::getenv(opt->get_envname().c_str()); env != nullptr && *env != '\0') {
    opt->default_str(env);  // CLI11 reads the file before it reads the environment
  }
  app.config_formatter(std::make_shared<ServiceConfigFile>(&app));
}

}  // namespace

std::optional<int> ParseFlags(CLI::App& app, int argc, const char* const* argv) {
  AddConfigOption(app);
  for (CLI::Option* opt : app.get_options()) {
    if (!opt->get_envname().empty() || opt->get_lnames().empty()) continue;
    if (opt->get_lnames().front() == "help") continue;
    opt->envname(EnvNameForFlag(opt->get_lnames().front()));
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);  // prints help to stdout or the error to stderr
    return code;
  }
  return std::nullopt;
}

namespace {

// Loads *token from `file` (trailing whitespace trimmed) when a file is named. Error text or "".
std::string LoadTokenFile(const std::string& flag, const std::string& file, std::string* token) {
  if (file.empty()) return "";
  if (!token->empty()) return "give either --" + flag + " or --" + flag + "-file, not both";
  std::ifstream in(file);
  if (!in) return "--" + flag + "-file: cannot read " + file;
  std::stringstream ss;
  ss << in.rdbuf();
  std::string t = ss.str();
  while (!t.empty() && std::isspace(static_cast<unsigned char>(t.back()))) t.pop_back();
  if (t.empty()) return "--" + flag + "-file: " + file + " is empty";
  *token = t;
  return "";
}

}  // namespace

std::string FinishServerConfig(ServerConfig* cfg) {
  if (cfg->tls_cert.empty() != cfg->tls_key.empty()) {
    return "--tls-cert and --tls-key must be given together (TLS needs both)";
  }
  if (!cfg->tls_client_ca.empty() && cfg->tls_cert.empty()) {
    return "--tls-client-ca (mutual TLS) needs TLS on: give --tls-cert and --tls-key too";
  }
  if (cfg->tls_client_cert.empty() != cfg->tls_client_key.empty()) {
    return "--tls-client-cert and --tls-client-key must be given together";
  }
  for (auto [flag, file, token] :
       {std::tuple{"auth-token", &cfg->auth_token_file, &cfg->auth_token},
        std::tuple{"internal-token", &cfg->internal_token_file, &cfg->internal_token},
        std::tuple{"admin-token", &cfg->admin_token_file, &cfg->admin_token}}) {
    if (std::string err = LoadTokenFile(flag, *file, token); !err.empty()) return err;
  }
  const std::string* tokens[] = {&cfg->auth_token, &cfg->internal_token, &cfg->admin_token};
  for (int i = 0; i < 3; ++i) {
    for (int j = i + 1; j < 3; ++j) {
      if (!tokens[i]->empty() && *tokens[i] == *tokens[j]) {
        return "the public, internal and admin tokens must differ (a shared token would grant "
               "one credential the rights of the other)";
      }
    }
  }
  return "";
}

}  // namespace ragserve
