// Mutual TLS between services, with certificates made at test time by the openssl CLI (nothing
// committed): an index started with --tls-client-ca refuses clients without a certificate or with
// one from another CA, and serves a client whose certificate the CA signed; a router presents
// its --tls-client-cert on its calls to the index (and cannot reach it without one).
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <fstream>

#include "ragserve/v1/index.grpc.pb.h"
#include "ragserve/v1/rag.grpc.pb.h"
#include "services/common/client.h"
#include "tests/e2e/cluster.h"

namespace ragserve {
namespace {

class MtlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::MakeTempDir("mtls");
    ASSERT_TRUE(MakeCa("ca"));
    ASSERT_TRUE(MakeCa("rogue-ca"));
    ASSERT_TRUE(MakeLeaf("server", "ca", "subjectAltName=DNS:localhost,IP:127.0.0.1"));
    ASSERT_TRUE(MakeLeaf("client", "ca", "extendedKeyUsage=clientAuth"));
    ASSERT_TRUE(MakeLeaf("rogue-client", "rogue-ca", "extendedKeyUsage=clientAuth"));
  }

  bool Run(const std::string& cmd) {
    std::string out;
    const int rc = testing::RunCommand(cmd + " 2>&1", &out);
    if (rc != 0) ADD_FAILURE() << cmd << ":\n" << out;
    return rc == 0;
  }
  std::string P(const std::string& name) { return dir_ + "/" + name; }

  // A self-signed CA: <name>.key, <name>.pem.
  bool MakeCa(const std::string& name) {
    return Run(
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2"
        " -subj /CN=" +
        name + " -keyout " + P(name + ".key") + " -out " + P(name + ".pem"));
  }

  // A leaf certificate signed by `ca` with one extension line: <name>.key, <name>.pem.
  bool MakeLeaf(const std::string& name, const std::string& ca, const std::string& ext) {
    std::ofstream(P(name + ".ext")) << ext << "\nbasicConstraints=critical,CA:FALSE\n";
    return Run("openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
               " -subj /CN=" +
               name + " -keyout " + P(name + ".key") + " -out " + P(name + ".csr")) &&
           Run("openssl x509 -req -days 2 -in " + P(name + ".csr") + " -CA " + P(ca + ".pem") +
               " -CAkey " + P(ca + ".key") + " -CAcreateserial -extfile " + P(name + ".ext") +
               " -out " + P(name + ".pem"));
  }

  // ListCollections on the index over TLS, presenting `client` ("" = no certificate).
  grpc::StatusCode ListOnIndex(const std::string& addr, const std::string& client) {
    ChannelOptions o;
    o.tls_ca = P("ca.pem");
    if (!client.empty()) {
      o.tls_client_cert = P(client + ".pem");
      o.tls_client_key = P(client + ".key");
    }
    auto ch = MakeChannel(addr, o);
    EXPECT_TRUE(ch.ok()) << ch.status().ToString();
    if (!ch.ok()) return grpc::StatusCode::UNKNOWN;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::ListCollectionsResponse resp;
    return v1::IndexService::NewStub(*ch)->ListCollections(&ctx, {}, &resp).error_code();
  }

  std::string dir_;
};

TEST_F(MtlsTest, PeerWithoutAValidCertificateIsRefusedOneWithItIsServed) {
  testing::Cluster cluster(dir_);
  std::string err;
  ASSERT_TRUE(cluster.Start("index", "index",
                            {"--data-dir", P("index"), "--tls-cert", P("server.pem"), "--tls-key",
                             P("server.key"), "--tls-client-ca", P("ca.pem")},
                            &err))
      << err;
  const std::string addr = cluster.Get("index")->addr();
  EXPECT_EQ(ListOnIndex(addr, ""), grpc::StatusCode::UNAVAILABLE);              // no cert
  EXPECT_EQ(ListOnIndex(addr, "rogue-client"), grpc::StatusCode::UNAVAILABLE);  // other CA
  EXPECT_EQ(ListOnIndex(addr, "client"), grpc::StatusCode::OK);

  // The router's own calls to the index present --tls-client-cert.
  const std::vector<std::string> router_args = {
      "--index-addr", addr, "--decoders", "127.0.0.1:1", "--downstream-tls-ca", P("ca.pem")};
  std::vector<std::string> with_cert = router_args;
  with_cert.insert(with_cert.end(),
                   {"--tls-client-cert", P("client.pem"), "--tls-client-key", P("client.key")});
  ASSERT_TRUE(cluster.Start("router", "router", with_cert, &err)) << err;
  ASSERT_TRUE(cluster.Start("router", "router-nocert", router_args, &err)) << err;
  auto list_via = [&](const std::string& name) {
    auto ch = MakeChannel(cluster.Get(name)->addr());
    EXPECT_TRUE(ch.ok());
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::ListCollectionsResponse resp;
    return v1::RagService::NewStub(*ch)->ListCollections(&ctx, {}, &resp).error_code();
  };
  EXPECT_EQ(list_via("router"), grpc::StatusCode::OK);
  EXPECT_EQ(list_via("router-nocert"), grpc::StatusCode::UNAVAILABLE);
}

TEST_F(MtlsTest, ClientCertificateWithoutTlsOrKeyIsAClearError) {
  ChannelOptions o;
  o.tls_client_cert = P("client.pem");
  o.tls_client_key = P("client.key");
  auto ch = MakeChannel("127.0.0.1:1", o);
  ASSERT_FALSE(ch.ok());
  EXPECT_NE(ch.status().message().find("needs TLS"), std::string::npos);
  o.tls_ca = P("ca.pem");
  o.tls_client_key.clear();
  EXPECT_FALSE(MakeChannel("127.0.0.1:1", o).ok());
}

}  // namespace
}  // namespace ragserve
