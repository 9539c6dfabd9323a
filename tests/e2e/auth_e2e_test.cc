// With auth on everywhere: the router refuses calls without the right token and calls the index
// and the decoders with the internal token (its default downstream token). Every RPC with every
// credential: tests/rpcfuzz/auth_matrix_test.cc.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "ragserve/v1/rag.grpc.pb.h"
#include "tests/e2e/cluster.h"

namespace ragserve {
namespace {

TEST(AuthE2eTest, WrongOrMissingTokenIsUnauthenticatedRightTokenWorks) {
  const std::string dir = testing::MakeTempDir("auth-e2e");
  testing::Cluster cluster(dir);
  const std::string model = testing::Cluster::MakeModel(dir);
  ASSERT_FALSE(model.empty());
  const std::string token = "t0k3n-for-tests";    // public
  const std::string internal = "internal-t0k3n";  // service to service
  std::string err;
  ASSERT_TRUE(cluster.Start("index", "index",
                            {"--data-dir", dir + "/index", "--internal-token", internal}, &err))
      << err;
  ASSERT_TRUE(
      cluster.Start("decoder", "decoder", {"--model", model, "--internal-token", internal}, &err))
      << err;
  ASSERT_TRUE(cluster.Start("router", "router",
                            {"--auth-token", token, "--internal-token", internal, "--index-addr",
                             cluster.Get("index")->addr(), "--decoders",
                             cluster.Get("decoder")->addr(), "--poll-interval", "0.2"},
                            &err))
      << err;
  auto ch = MakeChannel(cluster.Get("router")->addr());
  ASSERT_TRUE(ch.ok());
  auto router = v1::RagService::NewStub(*ch);
  auto list = [&](const std::string& tok) {
    grpc::ClientContext ctx;
    if (!tok.empty()) ctx.AddMetadata("authorization", "Bearer " + tok);
    v1::ListCollectionsRequest req;
    v1::ListCollectionsResponse resp;
    return router->ListCollections(&ctx, req, &resp).error_code();
  };
  EXPECT_EQ(list(""), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(list("wrong"), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(list(token), grpc::StatusCode::OK);  // internal token accepted by the index
  // The internal credential is for calls inside the cluster, not for the router's clients.
  EXPECT_EQ(list(internal), grpc::StatusCode::PERMISSION_DENIED);

  grpc::ClientContext ctx;
  ctx.AddMetadata("authorization", "Bearer nope");
  v1::QueryRequest q;
  q.set_collection("docs");
  q.set_question("anything");
  auto reader = router->Query(&ctx, q);
  v1::QueryEvent ev;
  while (reader->Read(&ev)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::UNAUTHENTICATED);
}

}  // namespace
}  // namespace ragserve
