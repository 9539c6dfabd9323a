// Decode workers found through a DNS name (as a headless Kubernetes Service gives): the router
// resolves "localhost:<port>" to its addresses, polls them, and answers through the one that
// serves.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "ragserve/v1/rag.grpc.pb.h"
#include "tests/e2e/cluster.h"

namespace ragserve {
namespace {

TEST(DnsE2eTest, RouterFindsWorkersThroughADnsName) {
  const std::string dir = testing::MakeTempDir("dns-e2e");
  testing::Cluster cluster(dir);
  const std::string model = testing::Cluster::MakeModel(dir);
  ASSERT_FALSE(model.empty());
  std::string err;
  ASSERT_TRUE(cluster.Start("index", "index", {"--data-dir", dir + "/index"}, &err)) << err;
  ASSERT_TRUE(cluster.Start("decoder", "decoder", {"--model", model, "--worker-id", "w-dns"}, &err))
      << err;
  ASSERT_TRUE(cluster.Start("router", "router",
                            {"--index-addr", cluster.Get("index")->addr(), "--decoders-dns",
                             "localhost:" + std::to_string(cluster.Get("decoder")->port),
                             "--resolve-interval", "0.5", "--poll-interval", "0.2"},
                            &err))
      << err;
  auto router = v1::RagService::NewStub(*MakeChannel(cluster.Get("router")->addr()));
  {
    grpc::ClientContext ctx;
    v1::IngestResponse resp;
    auto w = router->Ingest(&ctx, &resp);
    v1::IngestRequest req;
    req.set_collection("docs");
    req.mutable_create_spec()->set_name("docs");
    req.mutable_create_spec()->set_dimension(64);
    auto* d = req.add_documents();
    d->set_id("a");
    d->set_text("The harbour of Tessel has seven piers.");
    ASSERT_TRUE(w->Write(req));
    w->WritesDone();
    ASSERT_TRUE(w->Finish().ok());
  }
  grpc::ClientContext ctx;
  v1::QueryRequest q;
  q.set_collection("docs");
  q.set_question("How many piers does Tessel have?");
  q.mutable_sampling()->set_max_tokens(4);
  q.mutable_sampling()->set_ignore_eos(true);
  auto reader = router->Query(&ctx, q);
  v1::QueryEvent ev;
  std::string worker;
  while (reader->Read(&ev)) {
    if (ev.has_stats()) worker = ev.stats().worker_id();
  }
  grpc::Status st = reader->Finish();
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(worker, "w-dns");
}

TEST(DnsE2eTest, NoWorkersAtAllIsAClearStartupError) {
  std::string out;
  const int rc = testing::RunCommand(
      testing::BinPath("ragserve-router") + " --port 0 --metrics-port 0 --decoders ,", &out);
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("no decode workers"), std::string::npos) << out;
}

}  // namespace
}  // namespace ragserve
