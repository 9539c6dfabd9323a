// Services start in any order (pods, compose files, these tests): a router started while its
// index is not yet listening answers a call once the index is up, within the call's deadline,
// instead of failing it at once with UNAVAILABLE (PeerChannel, services/common/client.h). An
// index lost after the router has reached it is still reported at once (rag_e2e_test:
// IndexKilledIsUnavailableQuicklyAndRestartKeepsTheCorpus).
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <chrono>
#include <string>
#include <thread>

#include "ragserve/v1/rag.grpc.pb.h"
#include "tests/e2e/cluster.h"

namespace ragserve {
namespace {

TEST(StartupOrderE2eTest, ARouterStartedBeforeItsIndexAnswersOnceTheIndexIsUp) {
  const std::string dir = testing::MakeTempDir("startup-order-e2e");
  testing::Cluster cluster(dir);
  std::string err;
  // Start the index once to give it a port, then stop it: the router below is made while
  // nothing listens there.
  ASSERT_TRUE(cluster.Start("index", "index", {"--data-dir", dir + "/index-data"}, &err)) << err;
  testing::ClusterService* index = cluster.Get("index");
  index->proc->Signal(SIGKILL);
  int code = 0;
  ASSERT_TRUE(index->proc->Wait(10, &code));
  ASSERT_TRUE(cluster.Start("router", "router",
                            {"--index-addr", index->addr(), "--decoders",
                             "127.0.0.1:" + std::to_string(testing::FreePort())},
                            &err))
      << err;
  auto ch = MakeChannel(cluster.Get("router")->addr());
  ASSERT_TRUE(ch.ok());
  auto router = v1::RagService::NewStub(*ch);

  // The index comes up a second after the call below was made.
  bool restarted = false;
  std::string restart_err;
  std::thread later([&] {
    std::this_thread::sleep_for(std::chrono::seconds(1));
    restarted = cluster.Restart("index", &restart_err);
  });
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  v1::ListCollectionsResponse resp;
  const grpc::Status st = router->ListCollections(&ctx, {}, &resp);
  later.join();
  ASSERT_TRUE(restarted) << restart_err;
  EXPECT_TRUE(st.ok()) << st.error_code() << ": " << st.error_message();
}

}  // namespace
}  // namespace ragserve
