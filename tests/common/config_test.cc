#include "services/common/config.h"

#include <gtest/gtest.h>
#include <stdlib.h>

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

}  // namespace
}  // namespace ragserve
