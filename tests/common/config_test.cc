#include "services/common/config.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <CLI/CLI.hpp>

#include <fstream>

#include "tests/support/process.h"

namespace ragserve {
namespace {

std::optional<int> Parse(CLI::App& app, std::vector<std::string> args) {
  std::vector<const char*> argv = {"prog"};
  for (auto& a : args) argv.push_back(a.c_str());
  return ParseFlags(app, static_cast<int>(argv.size()), argv.data());
}

TEST(ConfigTest, FlagBeatsEnvBeatsDefault) {
  unsetenv("RAGSERVE_PORT");
  unsetenv("RAGSERVE_LOG_LEVEL");
  {
    ServerConfig cfg;
    CLI::App app;
    AddServerFlags(app, &cfg);
    ASSERT_FALSE(Parse(app, {}).has_value());
    EXPECT_EQ(cfg.port, 0);  // default
    EXPECT_EQ(cfg.log_level, "info");
  }
  setenv("RAGSERVE_PORT", "6001", 1);
  setenv("RAGSERVE_LOG_LEVEL", "debug", 1);
  {
    ServerConfig cfg;
    CLI::App app;
    AddServerFlags(app, &cfg);
    ASSERT_FALSE(Parse(app, {}).has_value());
    EXPECT_EQ(cfg.port, 6001);  // env beats default
    EXPECT_EQ(cfg.log_level, "debug");
  }
  {
    ServerConfig cfg;
    CLI::App app;
    AddServerFlags(app, &cfg);
    ASSERT_FALSE(Parse(app, {"--port", "7002"}).has_value());
    EXPECT_EQ(cfg.port, 7002);  // flag beats env
    EXPECT_EQ(cfg.log_level, "debug");
  }
  unsetenv("RAGSERVE_PORT");
  unsetenv("RAGSERVE_LOG_LEVEL");
}

TEST(ConfigTest, ServiceSpecificFlagsGetEnvNamesToo) {
  ServerConfig cfg;
  CLI::App app;
  AddServerFlags(app, &cfg);
  int workers = 1;
  app.add_option("--max-workers", workers);
  setenv("RAGSERVE_MAX_WORKERS", "9", 1);
  ASSERT_FALSE(Parse(app, {}).has_value());
  EXPECT_EQ(workers, 9);
  unsetenv("RAGSERVE_MAX_WORKERS");
  EXPECT_EQ(EnvNameForFlag("metrics-port"), "RAGSERVE_METRICS_PORT");
}

TEST(ConfigTest, BadValuesAreRejected) {
  ServerConfig cfg;
  CLI::App app;
  AddServerFlags(app, &cfg);
  auto code = Parse(app, {"--port", "70000"});
  ASSERT_TRUE(code.has_value());
  EXPECT_NE(*code, 0);
}

TEST(ConfigTest, TlsNeedsCertAndKeyAndTokenFileIsRead) {
  const std::string dir = testing::MakeTempDir("cfg");
  const std::string cert = dir + "/cert.pem";
  std::ofstream(cert) << "x";
  ServerConfig cfg;
  cfg.tls_cert = cert;
  EXPECT_NE(FinishServerConfig(&cfg).find("--tls-key"), std::string::npos);

  const std::string token_file = dir + "/token";
  std::ofstream(token_file) << "s3cret\n";
  ServerConfig cfg2;
  cfg2.auth_token_file = token_file;
  EXPECT_EQ(FinishServerConfig(&cfg2), "");
  EXPECT_EQ(cfg2.auth_token, "s3cret");

  ServerConfig cfg3;
  cfg3.auth_token_file = dir + "/missing";
  EXPECT_NE(FinishServerConfig(&cfg3).find("cannot read"), std::string::npos);
}

TEST(ConfigTest, ThreeCredentialsLoadFromFilesMustDifferAndMutualTlsNeedsTls) {
  const std::string dir = testing::MakeTempDir("cfg-creds");
  std::ofstream(dir + "/internal") << "int-secret\n";
  std::ofstream(dir + "/admin") << "adm-secret";
  ServerConfig cfg;
  cfg.auth_token = "pub-secret";
  cfg.internal_token_file = dir + "/internal";
  cfg.admin_token_file = dir + "/admin";
  EXPECT_EQ(FinishServerConfig(&cfg), "");
  EXPECT_EQ(cfg.internal_token, "int-secret");
  EXPECT_EQ(cfg.admin_token, "adm-secret");

  ServerConfig both;  // a token and its file
  both.admin_token = "x";
  both.admin_token_file = dir + "/admin";
  EXPECT_NE(FinishServerConfig(&both).find("--admin-token or --admin-token-file"),
            std::string::npos);

  ServerConfig same;  // one token for two credentials would merge them
  same.auth_token = "same";
  same.admin_token = "same";
  EXPECT_NE(FinishServerConfig(&same).find("must differ"), std::string::npos);

  ServerConfig mtls;  // client CAs without a server certificate
  mtls.tls_client_ca = dir + "/admin";
  EXPECT_NE(FinishServerConfig(&mtls).find("--tls-client-ca"), std::string::npos);
  ServerConfig half;
  half.tls_client_cert = dir + "/admin";
  EXPECT_NE(FinishServerConfig(&half).find("--tls-client-key"), std::string::npos);
}

// The binaries themselves: a bad flag value exits non-zero with a message naming the problem.
TEST(ConfigTest, BinaryExitsNonZeroNamingTheBadFlag) {
  const std::string bin = testing::BinPath("ragserve-index");
  std::string out;
  EXPECT_NE(testing::RunCommand(bin + " --port 99999", &out), 0);
  EXPECT_NE(out.find("--port"), std::string::npos) << out;

  EXPECT_NE(testing::RunCommand(bin + " --no-such-flag", &out), 0);
  EXPECT_NE(out.find("--no-such-flag"), std::string::npos) << out;

  EXPECT_NE(testing::RunCommand(bin + " --tls-cert /nonexistent/cert.pem", &out), 0);
  EXPECT_NE(out.find("/nonexistent/cert.pem"), std::string::npos) << out;

  EXPECT_NE(testing::RunCommand("RAGSERVE_PORT=notanumber " + bin, &out), 0);
  EXPECT_NE(out.find("notanumber"), std::string::npos) << out;

  EXPECT_NE(testing::RunCommand(bin + " --log-level loud", &out), 0);
  EXPECT_NE(out.find("loud"), std::string::npos) << out;

  EXPECT_EQ(testing::RunCommand(bin + " --help", &out), 0);
  EXPECT_NE(out.find("RAGSERVE_PORT"), std::string::npos) << out;
}

std::string WriteFile(const std::string& dir, const std::string& name, const std::string& text) {
  const std::string path = dir + "/" + name;
  std::ofstream(path) << text;
  return path;
}

// A flag beats RAGSERVE_*, which beats the config file, which beats the default: per option.
TEST(ConfigFileTest, FlagBeatsEnvBeatsFileBeatsDefault) {
  unsetenv("RAGSERVE_PORT");
  unsetenv("RAGSERVE_LOG_LEVEL");
  unsetenv("RAGSERVE_CONFIG");
  const std::string dir = testing::MakeTempDir("cfgfile");
  const std::string file = WriteFile(dir, "svc.toml",
                                     "# shared settings\n"
                                     "port = 6100\n"
                                     "log_level = \"debug\"\n"
                                     "max-message-mb = 32\n");
  auto parse = [&](std::vector<std::string> args, ServerConfig* cfg) {
    CLI::App app;
    AddServerFlags(app, cfg);
    return Parse(app, std::move(args));
  };
  {
    ServerConfig cfg;
    ASSERT_FALSE(parse({"--config", file}, &cfg).has_value());
    EXPECT_EQ(cfg.port, 6100);  // file beats default
    EXPECT_EQ(cfg.log_level, "debug");
    EXPECT_EQ(cfg.max_message_mb, 32);
    EXPECT_EQ(cfg.drain_seconds, 5.0);  // not in the file: default
  }
  setenv("RAGSERVE_PORT", "6200", 1);
  {
    ServerConfig cfg;
    ASSERT_FALSE(parse({"--config", file}, &cfg).has_value());
    EXPECT_EQ(cfg.port, 6200);  // env beats file
    EXPECT_EQ(cfg.log_level, "debug");
  }
  {
    ServerConfig cfg;
    ASSERT_FALSE(
        parse({"--config", file, "--port", "6300", "--log-level", "warn"}, &cfg).has_value());
    EXPECT_EQ(cfg.port, 6300);  // flag beats env and file
    EXPECT_EQ(cfg.log_level, "warn");
    EXPECT_EQ(cfg.max_message_mb, 32);
  }
  unsetenv("RAGSERVE_PORT");
  // RAGSERVE_CONFIG names the file when --config does not.
  setenv("RAGSERVE_CONFIG", file.c_str(), 1);
  {
    ServerConfig cfg;
    ASSERT_FALSE(parse({}, &cfg).has_value());
    EXPECT_EQ(cfg.port, 6100);
  }
  unsetenv("RAGSERVE_CONFIG");
}

TEST(ConfigFileTest, ServiceSpecificKeysListsAndFlagsOfTheFile) {
  const std::string dir = testing::MakeTempDir("cfgfile");
  for (const std::string list : {"a:1,b:2", "\"a:1,b:2\""}) {
    const std::string file =
        WriteFile(dir, "svc.ini", "max_workers = 7\ncheck-flags = true\nworkers = " + list + "\n");
    ServerConfig cfg;
    CLI::App app;
    AddServerFlags(app, &cfg);
    int max_workers = 1;
    std::string workers;
    app.add_option("--max-workers", max_workers)->check(CLI::Range(1, 100));
    app.add_option("--workers", workers);
    ASSERT_FALSE(Parse(app, {"--config", file}).has_value()) << list;
    EXPECT_EQ(max_workers, 7);
    EXPECT_EQ(workers, "a:1,b:2") << list;  // a single-valued flag takes the text as written
    EXPECT_TRUE(cfg.check_flags);
  }
}

TEST(ConfigFileTest, UnknownKeysSectionsBadValuesAndMissingFilesAreErrors) {
  const std::string dir = testing::MakeTempDir("cfgfile");
  for (const std::string text :
       {"prot = 6100\n", "[router]\nport = 1\n", "port = 70000\n", "log-level = loud\n"}) {
    ServerConfig cfg;
    CLI::App app;
    AddServerFlags(app, &cfg);
    auto code = Parse(app, {"--config", WriteFile(dir, "bad.toml", text)});
    ASSERT_TRUE(code.has_value()) << text;
    EXPECT_NE(*code, 0) << text;
  }
  ServerConfig cfg;
  CLI::App app;
  AddServerFlags(app, &cfg);
  auto code = Parse(app, {"--config", dir + "/missing.toml"});
  ASSERT_TRUE(code.has_value());
  EXPECT_NE(*code, 0);
}

// Every service binary reads --config: a good file passes --check-flags, an unknown key in it
// stops the binary with a message naming the key and the file. (The decoder, the slowest to
// start, is given only the second: the file is read, its own key accepted before the unknown.)
TEST(ConfigFileTest, EveryServiceBinaryReadsItsConfigFile) {
  const std::string dir = testing::MakeTempDir("cfgfile");
  const std::vector<std::pair<std::string, std::string>> own = {
      {"router", "policy = \"round_robin\""},
      {"index", "max-upsert-docs = 100"},
      {"kvr", "sink-tokens = 8"},
      {"ctxcache", "dtype = \"f16\""},
      {"decoder", "max_active = 4"}};
  for (const auto& [name, key] : own) {
    const std::string bin = testing::BinPath("ragserve-" + name);
    const std::string good =
        WriteFile(dir, name + ".toml", "port = 7001\nlog-level = \"warn\"\n" + key + "\n");
    std::string out;
    if (name != "decoder") {
      EXPECT_EQ(testing::RunCommand(bin + " --config " + good + " --check-flags", &out), 0)
          << name << ": " << out;
    }
    const std::string unknown = WriteFile(dir, name + "-unknown.toml", key + "\nno_such_key = 1\n");
    EXPECT_NE(testing::RunCommand(bin + " --config " + unknown + " --check-flags", &out), 0);
    EXPECT_NE(out.find("unknown key 'no_such_key'"), std::string::npos) << name << ": " << out;
    EXPECT_NE(out.find(unknown), std::string::npos) << name << ": " << out;
  }
}

// In a binary: a bad value in the file names it, the environment beats the file (the bad value
// is then never read), and a key of another service is unknown.
TEST(ConfigFileTest, BinaryChecksFileValuesAfterTheEnvironment) {
  const std::string dir = testing::MakeTempDir("cfgfile");
  const std::string bin = testing::BinPath("ragserve-index");
  const std::string bad = WriteFile(dir, "bad.toml", "log-level = loud\n");
  std::string out;
  EXPECT_NE(testing::RunCommand(bin + " --config " + bad + " --check-flags", &out), 0);
  EXPECT_NE(out.find("loud"), std::string::npos) << out;
  EXPECT_EQ(testing::RunCommand(
                "RAGSERVE_LOG_LEVEL=info " + bin + " --config " + bad + " --check-flags", &out),
            0)
      << out;
  const std::string router_key = WriteFile(dir, "policy.toml", "policy = round_robin\n");
  EXPECT_NE(testing::RunCommand(bin + " --config " + router_key + " --check-flags", &out), 0);
  EXPECT_NE(out.find("unknown key 'policy'"), std::string::npos) << out;
}

}  // namespace
}  // namespace ragserve
