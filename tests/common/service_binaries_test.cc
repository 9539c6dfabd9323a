// Every service binary, started for real on ephemeral loopback ports: health, /metrics, auth,
// SIGTERM, and a port clash.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <functional>
#include <string>
#include <vector>

#include "ragserve/v1/ctxcache.grpc.pb.h"
#include "ragserve/v1/decoder.grpc.pb.h"
#include "ragserve/v1/index.grpc.pb.h"
#include "ragserve/v1/kvr.grpc.pb.h"
#include "ragserve/v1/rag.grpc.pb.h"
#include "services/common/client.h"
#include "tests/support/process.h"

namespace ragserve {
namespace {

using Channel = std::shared_ptr<grpc::Channel>;

// One cheap RPC of the binary's own service, used to probe auth.
struct Binary {
  std::string name;     // ragserve-<name>
  std::string service;  // full proto service name, answered by health
  std::function<grpc::Status(const Channel&, grpc::ClientContext*)> call;
};

void PrintTo(const Binary& b, std::ostream* os) { *os << "ragserve-" << b.name; }

template <typename Service, typename Req, typename Resp, typename Method>
std::function<grpc::Status(const Channel&, grpc::ClientContext*)> Rpc(Method method) {
  return [method](const Channel& ch, grpc::ClientContext* ctx) {
    auto stub = Service::NewStub(ch);
    Req req;
    Resp resp;
    return ((*stub).*method)(ctx, req, &resp);
  };
}

std::vector<Binary> AllBinaries() {
  using namespace ragserve::v1;  // NOLINT: test-local brevity
  return {
      {"router", "ragserve.v1.RagService",
       Rpc<RagService, ListCollectionsRequest, ListCollectionsResponse>(
           &RagService::Stub::ListCollections)},
      {"index", "ragserve.v1.IndexService",
       Rpc<IndexService, ListCollectionsRequest, ListCollectionsResponse>(
           &IndexService::Stub::ListCollections)},
      {"kvr", "ragserve.v1.KvRetrievalService",
       Rpc<KvRetrievalService, KvrStatsRequest, KvrStatsResponse>(
           &KvRetrievalService::Stub::Stats)},
      {"ctxcache", "ragserve.v1.ContextCacheService",
       Rpc<ContextCacheService, CtxStatsRequest, CtxStatsResponse>(
           &ContextCacheService::Stub::Stats)},
      {"decoder", "ragserve.v1.DecoderService",
       Rpc<DecoderService, LoadRequest, LoadReport>(&DecoderService::Stub::GetLoad)},
  };
}

class ServiceBinaryTest : public ::testing::TestWithParam<Binary> {
 protected:
  void SetUp() override {
    dir_ = testing::MakeTempDir("svc-" + GetParam().name);
    bin_ = testing::BinPath("ragserve-" + GetParam().name);
  }

  // Starts the binary in its own working directory; fills the bound ports.
  void Start(testing::Process* p, const std::vector<std::string>& extra, int* grpc_port,
             int* metrics_port) {
    const std::string ready = dir_ + "/ready.json";
    std::vector<std::string> args = {"--port", "0", "--metrics-port", "0", "--ready-file", ready};
    args.insert(args.end(), extra.begin(), extra.end());
    ASSERT_TRUE(p->Start(bin_, args, dir_ + "/log.txt", {}, dir_));
    ASSERT_TRUE(testing::WaitForReadyFile(ready, 60, grpc_port, metrics_port))
        << testing::ReadFileOrEmpty(dir_ + "/log.txt");
  }

  void StopAndExpectCleanExit(testing::Process* p) {
    const auto t0 = std::chrono::steady_clock::now();
    p->Signal(SIGTERM);
    int code = -1;
    ASSERT_TRUE(p->Wait(5.0, &code)) << "no exit within 5 s of SIGTERM\n"
                                     << testing::ReadFileOrEmpty(dir_ + "/log.txt");
    EXPECT_EQ(code, 0) << testing::ReadFileOrEmpty(dir_ + "/log.txt");
    EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 5.0);
  }

  std::string dir_;
  std::string bin_;
};

TEST_P(ServiceBinaryTest, ServesHealthAndMetricsAndStopsOnSigterm) {
  testing::Process p;
  int port = 0, mport = 0;
  ASSERT_NO_FATAL_FAILURE(Start(&p, {}, &port, &mport));
  auto ch = MakeChannel("127.0.0.1:" + std::to_string(port));
  ASSERT_TRUE(ch.ok()) << ch.status().ToString();
  Status server = CheckHealth(*ch, "", 10);
  EXPECT_TRUE(server.ok()) << server.ToString();
  Status svc = CheckHealth(*ch, GetParam().service, 10);
  EXPECT_TRUE(svc.ok()) << svc.ToString();
  Status unknown = CheckHealth(*ch, "no.such.Service", 10);
  EXPECT_FALSE(unknown.ok());

  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  grpc::Status st = GetParam().call(*ch, &ctx);
  EXPECT_NE(st.error_code(), grpc::StatusCode::UNAUTHENTICATED) << st.error_message();
  EXPECT_NE(st.error_code(), grpc::StatusCode::UNIMPLEMENTED) << st.error_message();

  std::string body;
  ASSERT_EQ(testing::HttpGet(mport, "/metrics", &body), 200);
  EXPECT_NE(body.find("ragserve_up"), std::string::npos) << body;
  // The call above went through the metrics interceptor.
  EXPECT_NE(body.find("ragserve_grpc_requests_total"), std::string::npos) << body;
  StopAndExpectCleanExit(&p);
}

TEST_P(ServiceBinaryTest, AuthTokenIsRequiredWhenConfigured) {
  testing::Process p;
  int port = 0, mport = 0;
  ASSERT_NO_FATAL_FAILURE(Start(&p,
                                {"--auth-token", "s3cret-token", "--internal-token",
                                 "internal-t0ken", "--admin-token", "admin-t0ken"},
                                &port, &mport));
  auto ch = MakeChannel("127.0.0.1:" + std::to_string(port));
  ASSERT_TRUE(ch.ok());
  // Health stays open for probes.
  EXPECT_TRUE(CheckHealth(*ch, "", 10).ok());
  {
    grpc::ClientContext ctx;
    EXPECT_EQ(GetParam().call(*ch, &ctx).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  }
  {
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer wrong-token!");
    EXPECT_EQ(GetParam().call(*ch, &ctx).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  }
  {
    grpc::ClientContext ctx;
    // Every probe RPC accepts the admin credential (services/common/auth_policy.cc).
    ctx.AddMetadata("authorization", "Bearer admin-t0ken");
    grpc::Status st = GetParam().call(*ch, &ctx);
    EXPECT_NE(st.error_code(), grpc::StatusCode::UNAUTHENTICATED) << st.error_message();
  }
  // The channel stays open on purpose: an idle client connection must not delay the stop.
  StopAndExpectCleanExit(&p);
}

TEST_P(ServiceBinaryTest, PortAlreadyInUseIsAClearError) {
  testing::Process first;
  int port = 0, mport = 0;
  ASSERT_NO_FATAL_FAILURE(Start(&first, {}, &port, &mport));
  std::string out;
  // Its own working directory, so only the port clashes (not e.g. a default data directory).
  const std::string other = testing::MakeTempDir("svc-second");
  const int rc = testing::RunCommand(
      "cd " + other + " && " + bin_ + " --port " + std::to_string(port) + " --metrics-port 0",
      &out);
  EXPECT_NE(rc, 0) << out;
  EXPECT_NE(out.find("already in use"), std::string::npos) << out;
  EXPECT_NE(out.find(std::to_string(port)), std::string::npos) << out;
  StopAndExpectCleanExit(&first);
}

INSTANTIATE_TEST_SUITE_P(AllServices, ServiceBinaryTest, ::testing::ValuesIn(AllBinaries()),
                         [](const ::testing::TestParamInfo<Binary>& info) {
                           return info.param.name;
                         });

}  // namespace
}  // namespace ragserve
