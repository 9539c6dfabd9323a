// Decoders fetch passage KV from the context cache over gRPC (real binaries on loopback): the
// router pre-encodes ingested passages in ragserve-ctxcache, a decoder started with
// --ctxcache-addr serves a routed query from those entries (fetched, not recomputed, as its
// /metrics show) and answers exactly as a decoder that computes everything itself; a passage the
// service lacks is computed locally; a service that is down (or dies) degrades to local compute
// without failing a request.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <string>
#include <vector>

#include "ragserve/v1/ctxcache.grpc.pb.h"
#include "ragserve/v1/decoder.grpc.pb.h"
#include "ragserve/v1/rag.grpc.pb.h"
#include "tests/e2e/cluster.h"

namespace ragserve {
namespace {

using testing::Ctx;

const char* const kDocs[] = {
    "The Quillmoor ferry leaves the north pier at seven and returns by noon.",
    "Barley from the Tessent valley is malted in copper drums before roasting.",
    "The observatory on Mount Harrel records meteor showers every August.",
    "Lanterns in the old quarter of Velsk are lit with whale oil on feast days.",
    "The Orrin glacier has retreated four hundred metres since the survey of 1902.",
    "Weavers in Pell dye their wool with madder root and crushed walnut shells.",
};

class CtxcacheE2eTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string dir = testing::MakeTempDir("ctxcache-e2e");
    cluster_ = new testing::Cluster(dir);
    const std::string model = testing::Cluster::MakeModel(dir);
    ASSERT_FALSE(model.empty()) << "make-tiny-model failed";
    std::string err;
    ASSERT_TRUE(cluster_->Start("index", "index", {"--data-dir", dir + "/index-data"}, &err))
        << err;
    ASSERT_TRUE(cluster_->Start("ctxcache", "ctxcache",
                                {"--model", model, "--data-dir", dir + "/ctxcache-data"}, &err))
        << err;
    const std::string cc = cluster_->Get("ctxcache")->addr();
    ASSERT_TRUE(
        cluster_->Start("decoder", "fetching",
                        {"--model", model, "--worker-id", "fetching", "--ctxcache-addr", cc}, &err))
        << err;
    ASSERT_TRUE(
        cluster_->Start("decoder", "local", {"--model", model, "--worker-id", "local"}, &err))
        << err;
    // Nothing listens on this port: every fetch fails at once.
    ASSERT_TRUE(cluster_->Start("decoder", "down",
                                {"--model", model, "--worker-id", "down", "--ctxcache-addr",
                                 "127.0.0.1:" + std::to_string(testing::FreePort())},
                                &err))
        << err;
    ASSERT_TRUE(cluster_->Start("router", "router",
                                {"--index-addr", cluster_->Get("index")->addr(), "--decoders",
                                 cluster_->Get("fetching")->addr(), "--ctxcache-addr", cc},
                                &err))
        << err;
    router_ = v1::RagService::NewStub(*MakeChannel(cluster_->Get("router")->addr())).release();
  }
  static void TearDownTestSuite() {
    delete router_;
    delete cluster_;
  }

  // A counter or gauge sample from a service's /metrics (-1 when absent or unreachable).
  static double Metric(const std::string& service, const std::string& sample) {
    std::string body;
    if (testing::HttpGet(cluster_->Get(service)->metrics_port, "/metrics", &body) != 200) {
      return -1;
    }
    const std::string key = "\n" + sample + " ";
    const size_t at = body.find(key);
    if (at == std::string::npos) return -1;
    return std::stod(body.substr(at + key.size()));
  }
  static double Passages(const std::string& decoder, const std::string& source) {
    return Metric(decoder, "ragserve_decoder_passages_total{source=\"" + source + "\"}");
  }
  static double Fetches(const std::string& decoder, const std::string& result) {
    return Metric(decoder, "ragserve_ctxcache_remote_fetches_total{result=\"" + result + "\"}");
  }

  static v1::GenerateRequest Request(const std::string& question,
                                     const std::vector<std::string>& passages) {
    v1::GenerateRequest g;
    g.set_question(question);
    for (size_t i = 0; i < passages.size(); ++i) {
      auto* p = g.add_passages();
      p->set_id("p" + std::to_string(i));
      p->set_text(passages[i]);
    }
    g.mutable_sampling()->set_max_tokens(12);
    g.mutable_sampling()->set_ignore_eos(true);
    return g;  // APE (sequential_context false), the decoders' default context mode
  }

  static grpc::Status Generate(const std::string& decoder, const v1::GenerateRequest& g,
                               std::vector<int32_t>* ids, v1::GenerateStats* stats = nullptr) {
    auto stub = v1::DecoderService::NewStub(*MakeChannel(cluster_->Get(decoder)->addr()));
    auto ctx = Ctx();
    auto reader = stub->Generate(ctx.get(), g);
    v1::GenerateEvent ev;
    ids->clear();
    while (reader->Read(&ev)) {
      if (ev.has_delta()) {
        ids->insert(ids->end(), ev.delta().token_ids().begin(), ev.delta().token_ids().end());
      } else if (ev.has_stats() && stats != nullptr) {
        *stats = ev.stats();
      }
    }
    return reader->Finish();
  }

  static testing::Cluster* cluster_;
  static v1::RagService::Stub* router_;
};

testing::Cluster* CtxcacheE2eTest::cluster_ = nullptr;
v1::RagService::Stub* CtxcacheE2eTest::router_ = nullptr;

TEST_F(CtxcacheE2eTest, PassagesPreEncodedOnIngestAreFetchedNotRecomputed) {
  {
    auto ctx = Ctx();
    v1::IngestResponse resp;
    auto writer = router_->Ingest(ctx.get(), &resp);
    v1::IngestRequest req;
    req.set_collection("kb");
    req.set_pre_encode(true);
    req.mutable_create_spec()->set_name("kb");
    req.mutable_create_spec()->set_dimension(64);
    for (size_t i = 0; i < std::size(kDocs); ++i) {
      auto* d = req.add_documents();
      d->set_id("d" + std::to_string(i));
      d->set_text(kDocs[i]);
    }
    ASSERT_TRUE(writer->Write(req));
    writer->WritesDone();
    const grpc::Status st = writer->Finish();
    ASSERT_TRUE(st.ok()) << st.error_message();
    ASSERT_EQ(resp.pre_encoded(), static_cast<int64_t>(std::size(kDocs)));
  }
  ASSERT_EQ(Passages("fetching", "remote"), 0);
  ASSERT_EQ(Passages("fetching", "computed"), 0);

  // A routed query with the context cache: the worker joins APE-encoded passage KV.
  v1::QueryRequest q;
  q.set_collection("kb");
  q.set_question("When does the Quillmoor ferry leave?");
  q.set_top_k(3);
  q.set_use_context_cache(true);
  q.mutable_sampling()->set_max_tokens(12);
  q.mutable_sampling()->set_ignore_eos(true);
  auto ctx = Ctx();
  auto reader = router_->Query(ctx.get(), q);
  v1::QueryEvent ev;
  std::vector<std::string> passages;
  std::vector<int32_t> routed;
  v1::QueryStats stats;
  while (reader->Read(&ev)) {
    if (ev.has_passages()) {
      for (const auto& p : ev.passages().passages()) passages.push_back(p.text());
    } else if (ev.has_delta()) {
      routed.insert(routed.end(), ev.delta().token_ids().begin(), ev.delta().token_ids().end());
    } else if (ev.has_stats()) {
      stats = ev.stats();
    }
  }
  const grpc::Status st = reader->Finish();
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_EQ(passages.size(), 3u);
  ASSERT_EQ(routed.size(), 12u);

  // Every passage came from the service: fetched (hits there), none computed on the worker.
  EXPECT_EQ(Passages("fetching", "remote"), 3);
  EXPECT_EQ(Passages("fetching", "computed"), 0);
  EXPECT_EQ(Fetches("fetching", "hit"), 3);
  EXPECT_EQ(Metric("fetching", "ragserve_ctxcache_remote_rejected_total"), 0);
  EXPECT_GT(stats.cached_prompt_tokens(), stats.prompt_tokens() / 2);

  // A worker that computes everything itself gives the same tokens for the same request.
  std::vector<int32_t> local;
  ASSERT_TRUE(Generate("local", Request(q.question(), passages), &local).ok());
  EXPECT_EQ(Passages("local", "computed"), 3);
  EXPECT_EQ(local, routed);

  // Asked again, the fetching worker serves the passages from its own RAM tier.
  std::vector<int32_t> again;
  ASSERT_TRUE(Generate("fetching", Request(q.question(), passages), &again).ok());
  EXPECT_EQ(again, routed);
  EXPECT_EQ(Passages("fetching", "ram"), 3);
  EXPECT_EQ(Fetches("fetching", "hit"), 3);
}

TEST_F(CtxcacheE2eTest, APassageTheServiceLacksIsComputedLocally) {
  const std::vector<std::string> passages = {
      "The salt marshes of Ebbrin flood twice a day at the spring tides."};
  const double misses = std::max(0.0, Fetches("fetching", "miss"));
  const double computed = std::max(0.0, Passages("fetching", "computed"));
  std::vector<int32_t> fetched, local;
  ASSERT_TRUE(
      Generate("fetching", Request("How often do the marshes flood?", passages), &fetched).ok());
  ASSERT_TRUE(Generate("local", Request("How often do the marshes flood?", passages), &local).ok());
  EXPECT_EQ(Fetches("fetching", "miss"), misses + 1);
  EXPECT_EQ(Passages("fetching", "computed"), computed + 1);
  EXPECT_EQ(fetched.size(), 12u);
  EXPECT_EQ(fetched, local);
}

TEST_F(CtxcacheE2eTest, AServiceThatIsDownDegradesToLocalCompute) {
  const std::vector<std::string> passages = {
      "Copper bells in the Aldwater chapel ring the hours from six to ten.",
      "The chapel's organ was rebuilt after the fire of 1788."};
  std::vector<int32_t> down, local;
  v1::GenerateStats stats;
  ASSERT_TRUE(Generate("down", Request("When do the bells ring?", passages), &down, &stats).ok());
  ASSERT_TRUE(Generate("local", Request("When do the bells ring?", passages), &local).ok());
  EXPECT_EQ(down.size(), 12u);
  EXPECT_EQ(down, local);
  EXPECT_EQ(Passages("down", "computed"), 2);
  EXPECT_EQ(Passages("down", "remote"), 0);
  // The first fetch fails; the next one is skipped (the service is given a rest) or fails too.
  EXPECT_GE(Fetches("down", "error"), 1);
  EXPECT_EQ(Fetches("down", "error") + Fetches("down", "skipped"), 2);

  // The service dies under a worker that was using it: requests still succeed.
  testing::ClusterService* cc = cluster_->Get("ctxcache");
  cc->proc->Signal(SIGKILL);
  int code = 0;
  ASSERT_TRUE(cc->proc->Wait(10, &code));
  const double computed = Passages("fetching", "computed");
  const std::vector<std::string> fresh = {"Herons nest in the alders along the Caul river."};
  std::vector<int32_t> a, b;
  ASSERT_TRUE(Generate("fetching", Request("Where do herons nest?", fresh), &a).ok());
  ASSERT_TRUE(Generate("local", Request("Where do herons nest?", fresh), &b).ok());
  EXPECT_EQ(a, b);
  EXPECT_EQ(Passages("fetching", "computed"), computed + 1);
  std::string err;
  ASSERT_TRUE(cluster_->Restart("ctxcache", &err)) << err;
}

}  // namespace
}  // namespace ragserve
