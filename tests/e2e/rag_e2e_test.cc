// The whole RAG path on loopback with real binaries: index (RocksDB + HNSW), two decode workers
// with the tiny model, and the router. Ingest the sample corpus through the router, ask the
// sample questions, and check retrieval, streaming, exactness against a worker called directly,
// bad input, cancellation, deadlines, and failover when a worker is killed mid-answer.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <atomic>
#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "ragserve/v1/decoder.grpc.pb.h"
#include "ragserve/v1/index.grpc.pb.h"
#include "ragserve/v1/rag.grpc.pb.h"
#include "tests/e2e/cluster.h"

namespace ragserve {
namespace {

struct Answer {
  grpc::Status status;
  std::vector<v1::RetrievedPassage> passages;
  std::vector<int32_t> ids;
  std::string text;
  v1::QueryStats stats;
  int deltas = 0;
};

using testing::Ctx;

class RagE2eTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string dir = testing::MakeTempDir("rag-e2e");
    cluster_ = new testing::Cluster(dir);
    const std::string model = testing::Cluster::MakeModel(dir);
    ASSERT_FALSE(model.empty()) << "make-tiny-model failed";
    std::string err;
    ASSERT_TRUE(cluster_->Start("index", "index", {"--data-dir", dir + "/index-data"}, &err))
        << err;
    for (const char* d : {"decoder0", "decoder1"}) {
      ASSERT_TRUE(cluster_->Start("decoder", d, {"--model", model, "--worker-id", d}, &err)) << err;
    }
    ASSERT_TRUE(cluster_->Start("ctxcache", "ctxcache",
                                {"--model", model, "--data-dir", dir + "/ctxcache-data"}, &err))
        << err;
    ASSERT_TRUE(cluster_->Start(
        "router", "router",
        {"--index-addr", cluster_->Get("index")->addr(), "--decoders",
         cluster_->Get("decoder0")->addr() + "," + cluster_->Get("decoder1")->addr(), "--policy",
         "cache_aware", "--poll-interval", "0.2", "--ctxcache-addr",
         cluster_->Get("ctxcache")->addr()},
        &err))
        << err;
    auto ch = MakeChannel(cluster_->Get("router")->addr());
    ASSERT_TRUE(ch.ok());
    router_ = v1::RagService::NewStub(*ch).release();

    // Ingest the corpus through the router, creating the collection.
    std::ifstream f(testing::SourceDir() + "/data/corpus/passages.jsonl");
    std::string line;
    auto ctx = Ctx();
    v1::IngestResponse resp;
    auto writer = router_->Ingest(ctx.get(), &resp);
    v1::IngestRequest first;
    first.set_collection("docs");
    auto* spec = first.mutable_create_spec();
    spec->set_name("docs");
    spec->set_dimension(1024);
    spec->set_metric(v1::METRIC_COSINE);
    spec->set_index_kind(v1::INDEX_KIND_HNSW);
    ASSERT_TRUE(writer->Write(first));
    v1::IngestRequest batch;
    int n = 0;
    while (std::getline(f, line)) {
      auto j = nlohmann::json::parse(line);
      auto* d = batch.add_documents();
      d->set_id(j["id"].get<std::string>());
      d->set_text(j["text"].get<std::string>());
      d->set_metadata_json(j["metadata"].dump());
      ++n;
      if (batch.documents_size() == 50) {
        ASSERT_TRUE(writer->Write(batch));
        batch.clear_documents();
      }
    }
    if (batch.documents_size() > 0) {
      ASSERT_TRUE(writer->Write(batch));
    }
    writer->WritesDone();
    grpc::Status st = writer->Finish();
    ASSERT_TRUE(st.ok()) << st.error_message();
    ASSERT_EQ(resp.ingested(), n);
    corpus_size_ = n;
  }
  static void TearDownTestSuite() {
    delete router_;
    delete cluster_;
  }

  static v1::QueryRequest Question(const std::string& q, int max_tokens) {
    v1::QueryRequest req;
    req.set_collection("docs");
    req.set_question(q);
    req.set_top_k(4);
    req.mutable_sampling()->set_max_tokens(max_tokens);
    req.mutable_sampling()->set_ignore_eos(true);
    return req;
  }

  static Answer Ask(const v1::QueryRequest& req, grpc::ClientContext* ctx = nullptr) {
    auto local = Ctx();
    if (ctx == nullptr) ctx = local.get();
    Answer a;
    auto reader = router_->Query(ctx, req);
    v1::QueryEvent ev;
    while (reader->Read(&ev)) {
      if (ev.has_passages()) {
        a.passages.assign(ev.passages().passages().begin(), ev.passages().passages().end());
      } else if (ev.has_delta()) {
        ++a.deltas;
        a.ids.insert(a.ids.end(), ev.delta().token_ids().begin(), ev.delta().token_ids().end());
        a.text += ev.delta().text();
      } else if (ev.has_stats()) {
        a.stats = ev.stats();
      }
    }
    a.status = reader->Finish();
    return a;
  }

  static std::unique_ptr<v1::DecoderService::Stub> Decoder(const std::string& name) {
    auto ch = MakeChannel(cluster_->Get(name)->addr());
    return v1::DecoderService::NewStub(*ch);
  }

  static int Active(const std::string& name) {
    auto ctx = Ctx(5);
    v1::LoadRequest req;
    v1::LoadReport load;
    if (!Decoder(name)->GetLoad(ctx.get(), req, &load).ok()) return -1;
    return load.active_sequences();
  }

  static testing::Cluster* cluster_;
  static v1::RagService::Stub* router_;
  static int corpus_size_;
};

testing::Cluster* RagE2eTest::cluster_ = nullptr;
v1::RagService::Stub* RagE2eTest::router_ = nullptr;
int RagE2eTest::corpus_size_ = 0;

TEST_F(RagE2eTest, SampleQuestionsRetrieveTheirPassageAndStreamAnAnswer) {
  std::ifstream f(testing::SourceDir() + "/data/corpus/questions.jsonl");
  std::string line;
  int asked = 0, found = 0;
  while (std::getline(f, line) && asked < 10) {
    auto q = nlohmann::json::parse(line);
    Answer a = Ask(Question(q["question"].get<std::string>(), 12));
    ASSERT_TRUE(a.status.ok()) << a.status.error_message();
    ++asked;
    ASSERT_EQ(a.passages.size(), 4u);
    for (const auto& p : a.passages) {
      EXPECT_FALSE(p.text().empty());
      if (p.id() == q["answer_passage_id"].get<std::string>()) {
        ++found;
        EXPECT_NE(p.text().find(q["answer_contains"].get<std::string>()), std::string::npos);
      }
    }
    EXPECT_EQ(a.ids.size(), 12u);
    EXPECT_EQ(a.stats.generated_tokens(), 12);
    EXPECT_EQ(a.stats.finish_reason(), "length");
    EXPECT_GT(a.stats.prompt_tokens(), 20);
    EXPECT_GT(a.stats.timings().search_ms(), 0);
    EXPECT_GT(a.stats.timings().ttft_ms(), 0);
    EXPECT_GE(a.stats.timings().total_ms(), a.stats.timings().ttft_ms());
    EXPECT_EQ(a.stats.retries(), 0);
  }
  EXPECT_GE(found, 9) << "answer passage in the top 4 for only " << found << " of " << asked;
}

TEST_F(RagE2eTest, RoutedAnswerEqualsTheWorkerCalledDirectly) {
  Answer a = Ask(Question("What colour is the stripe on the back of the Trykelurk lizard?", 24));
  ASSERT_TRUE(a.status.ok()) << a.status.error_message();
  v1::GenerateRequest g;
  g.set_question("What colour is the stripe on the back of the Trykelurk lizard?");
  for (const auto& p : a.passages) {
    auto* cp = g.add_passages();
    cp->set_id(p.id());
    cp->set_text(p.text());
  }
  g.mutable_sampling()->set_max_tokens(24);
  g.mutable_sampling()->set_ignore_eos(true);
  g.set_sequential_context(true);  // as the router sends it without use_context_cache
  for (const char* d : {"decoder0", "decoder1"}) {
    auto ctx = Ctx();
    auto reader = Decoder(d)->Generate(ctx.get(), g);
    v1::GenerateEvent ev;
    std::vector<int32_t> ids;
    while (reader->Read(&ev)) {
      if (ev.has_delta()) {
        ids.insert(ids.end(), ev.delta().token_ids().begin(), ev.delta().token_ids().end());
      }
    }
    ASSERT_TRUE(reader->Finish().ok());
    EXPECT_EQ(ids, a.ids) << d;
  }
}

TEST_F(RagE2eTest, ContextCacheServesRepeatedPassagesWithApe) {
  // A question no other test asks, so its passages start uncached.
  v1::QueryRequest req = Question("Which year was the clock tower of Ostmere finished?", 8);
  req.set_use_context_cache(true);
  Answer first = Ask(req);
  ASSERT_TRUE(first.status.ok()) << first.status.error_message();
  Answer second = Ask(req);
  ASSERT_TRUE(second.status.ok()) << second.status.error_message();
  EXPECT_EQ(second.ids.size(), 8u);
  // The second time every passage's KV comes from a worker's cache (the router sends the query
  // where the passages are resident), so only the question part is prefilled.
  EXPECT_GT(second.stats.cached_prompt_tokens(), first.stats.cached_prompt_tokens());
  EXPECT_GT(second.stats.cached_prompt_tokens(), second.stats.prompt_tokens() / 2);
  EXPECT_EQ(second.stats.worker_id(), first.stats.worker_id());
  // The first answer encoded its passages, and the router passes that time on to the client.
  EXPECT_GT(first.stats.timings().context_ms(), 0);
  // Same passages, same worker, same greedy tokens.
  EXPECT_EQ(second.ids, first.ids);
}

TEST_F(RagE2eTest, IngestWithPreEncodeFillsTheContextCache) {
  auto ctx = Ctx();
  v1::IngestResponse resp;
  auto writer = router_->Ingest(ctx.get(), &resp);
  v1::IngestRequest req;
  req.set_collection("pre");
  req.set_pre_encode(true);
  req.mutable_create_spec()->set_name("pre");
  req.mutable_create_spec()->set_dimension(64);
  for (int i = 0; i < 5; ++i) {
    auto* d = req.add_documents();
    d->set_id("d" + std::to_string(i));
    d->set_text("Pre-encoded passage number " + std::to_string(i) + " about harbours.");
  }
  ASSERT_TRUE(writer->Write(req));
  writer->WritesDone();
  grpc::Status st = writer->Finish();
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(resp.ingested(), 5);
  EXPECT_EQ(resp.pre_encoded(), 5);
}

TEST_F(RagE2eTest, BadQueriesGetClearErrorsAndDoNotTripTheBreaker) {
  v1::QueryRequest empty = Question("", 4);
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(Ask(empty).status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  }
  v1::QueryRequest unknown = Question("anything", 4);
  unknown.set_collection("no-such-collection");
  Answer a = Ask(unknown);
  EXPECT_EQ(a.status.error_code(), grpc::StatusCode::NOT_FOUND) << a.status.error_message();
  v1::QueryRequest big_k = Question("anything", 4);
  big_k.set_top_k(1000);
  EXPECT_EQ(Ask(big_k).status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  v1::QueryRequest bad_temp = Question("anything", 4);
  bad_temp.mutable_sampling()->set_temperature(-2);
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(Ask(bad_temp).status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  }
  // Client errors are not worker failures: both workers still serve.
  for (int i = 0; i < 4; ++i) EXPECT_TRUE(Ask(Question("Nawerk River", 3)).status.ok());
}

TEST_F(RagE2eTest, ExpiredDeadlineIsDeadlineExceeded) {
  auto ctx = Ctx(0.001);
  std::this_thread::sleep_for(std::chrono::milliseconds(5));
  Answer a = Ask(Question("Nawerk River", 4), ctx.get());
  EXPECT_EQ(a.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
}

TEST_F(RagE2eTest, ClientCancelStopsTheWorker) {
  auto ctx = Ctx();
  auto reader = router_->Query(ctx.get(), Question("Tell me everything", 3000));
  v1::QueryEvent ev;
  while (reader->Read(&ev) && !ev.has_delta()) {
  }
  ASSERT_GE(Active("decoder0") + Active("decoder1"), 1);
  ctx->TryCancel();
  while (reader->Read(&ev)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  int active = -1;
  for (int i = 0; i < 100 && active != 0; ++i) {
    active = Active("decoder0") + Active("decoder1");
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_EQ(active, 0) << "the worker kept generating after the client cancelled";
}

TEST_F(RagE2eTest, AThousandMalformedRequestsGetClearErrorsAndTheClusterStillAnswers) {
  std::vector<v1::QueryRequest> bad;
  bad.push_back(Question("", 4));                           // empty question
  bad.push_back(Question(std::string(70 * 1024, 'x'), 4));  // over 64 KiB
  bad.push_back(Question("q", -5));                         // negative max_tokens
  v1::QueryRequest k = Question("q", 4);
  k.set_top_k(-1);
  bad.push_back(k);
  v1::QueryRequest c = Question("q", 4);
  c.set_collection("");
  bad.push_back(c);
  v1::QueryRequest t = Question("q", 4);
  t.mutable_sampling()->set_top_p(7);
  bad.push_back(t);
  std::atomic<int> clear{0}, total{0};
  std::vector<std::thread> threads;
  for (int w = 0; w < 8; ++w) {
    threads.emplace_back([&, w] {
      for (int i = w; i < 1000; i += 8) {
        Answer a = Ask(bad[i % bad.size()]);
        ++total;
        if (a.status.error_code() == grpc::StatusCode::INVALID_ARGUMENT &&
            !a.status.error_message().empty()) {
          ++clear;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(total.load(), 1000);
  EXPECT_EQ(clear.load(), 1000);
  Answer ok = Ask(Question("How long is the Nawerk River in kilometres?", 8));
  ASSERT_TRUE(ok.status.ok()) << ok.status.error_message();
  EXPECT_EQ(ok.ids.size(), 8u);
}

TEST_F(RagE2eTest, IndexKilledIsUnavailableQuicklyAndRestartKeepsTheCorpus) {
  cluster_->Get("index")->proc->Signal(SIGKILL);
  const auto t0 = std::chrono::steady_clock::now();
  Answer a = Ask(Question("Nawerk River", 4));
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(a.status.error_code(), grpc::StatusCode::UNAVAILABLE) << a.status.error_message();
  EXPECT_LT(secs, 5.0);
  std::string err;
  ASSERT_TRUE(cluster_->Restart("index", &err)) << err;
  // The router reconnects; every acknowledged document is there.
  v1::ListCollectionsResponse list;
  grpc::Status st;
  for (int i = 0; i < 100; ++i) {
    auto ctx = Ctx(5);
    v1::ListCollectionsRequest req;
    st = router_->ListCollections(ctx.get(), req, &list);
    if (st.ok()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  ASSERT_TRUE(st.ok()) << st.error_message();
  int64_t docs = -1;
  for (const auto& c : list.collections()) {
    if (c.spec().name() == "docs") docs = c.num_documents();
  }
  EXPECT_EQ(docs, corpus_size_);
  Answer b = Ask(Question("How long is the Nawerk River in kilometres?", 4));
  ASSERT_TRUE(b.status.ok()) << b.status.error_message();
  bool found = false;
  for (const auto& p : b.passages) found = found || p.id() == "p0006";
  EXPECT_TRUE(found);
}

TEST_F(RagE2eTest, ExpiredDeadlineReleasesTheWorkersSequence) {
  auto ctx = Ctx(0.5);
  Answer a = Ask(Question("Tell me a very long story", 3000), ctx.get());
  EXPECT_EQ(a.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  int active = -1;
  for (int i = 0; i < 100 && active != 0; ++i) {
    active = Active("decoder0") + Active("decoder1");
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_EQ(active, 0) << "a sequence outlived its request's deadline";
}

// Last: it kills a worker.
TEST_F(RagE2eTest, WorkerKilledMidAnswerIsInvisibleToTheClient) {
  const v1::QueryRequest req = Question("How long is the Nawerk River in kilometres?", 1200);
  Answer baseline = Ask(req);
  ASSERT_TRUE(baseline.status.ok()) << baseline.status.error_message();
  ASSERT_EQ(baseline.ids.size(), 1200u);

  auto ctx = Ctx();
  auto reader = router_->Query(ctx.get(), req);
  v1::QueryEvent ev;
  std::vector<int32_t> ids;
  v1::QueryStats stats;
  std::string killed;
  while (reader->Read(&ev)) {
    if (ev.has_delta()) {
      ids.insert(ids.end(), ev.delta().token_ids().begin(), ev.delta().token_ids().end());
      if (killed.empty()) {
        for (const char* d : {"decoder0", "decoder1"}) {
          if (Active(d) > 0) {
            killed = d;
            cluster_->Get(d)->proc->Signal(SIGKILL);
            break;
          }
        }
        ASSERT_FALSE(killed.empty()) << "no worker was generating";
      }
    } else if (ev.has_stats()) {
      stats = ev.stats();
    }
  }
  const grpc::Status st = reader->Finish();
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(stats.retries(), 1);
  EXPECT_LT(static_cast<int>(ids.size() - 1200), 1);  // no token twice
  EXPECT_EQ(ids, baseline.ids) << "the continuation differs from the uninterrupted answer";
  EXPECT_NE(stats.worker_id(), killed);
  // The survivor keeps serving new queries.
  EXPECT_TRUE(Ask(Question("Trykelurk lizard", 4)).status.ok());
}

TEST_F(RagE2eTest, RetrievalModesQueryByVectorAndDeleteThroughTheRouter) {
  // BM25 alone finds the passage of a question with a rare name; passages name their document.
  v1::QueryRequest q = Question("How long is the Nawerk River in kilometres?", 2);
  q.set_retrieval(v1::RETRIEVAL_MODE_BM25);
  Answer a = Ask(q);
  ASSERT_TRUE(a.status.ok()) << a.status.error_message();
  ASSERT_FALSE(a.passages.empty());
  EXPECT_EQ(a.passages[0].id(), "p0006");
  EXPECT_EQ(a.passages[0].document_id(), "p0006");
  // Query by vector: the stored vector of p0024 (read from the index service) finds p0024.
  auto index = v1::IndexService::NewStub(*MakeChannel(cluster_->Get("index")->addr()));
  v1::GetDocumentsRequest greq;
  greq.set_collection("docs");
  greq.add_ids("p0024");
  v1::GetDocumentsResponse gresp;
  ASSERT_TRUE(index->GetDocuments(Ctx().get(), greq, &gresp).ok());
  ASSERT_EQ(gresp.documents_size(), 1);
  v1::QueryRequest by_vector = Question("Which passage is this?", 2);
  *by_vector.mutable_vector() = gresp.documents(0).vector();
  by_vector.set_retrieval(v1::RETRIEVAL_MODE_DENSE);
  a = Ask(by_vector);
  ASSERT_TRUE(a.status.ok()) << a.status.error_message();
  ASSERT_FALSE(a.passages.empty());
  EXPECT_EQ(a.passages[0].id(), "p0024");
  // A vector of the wrong dimension and a question without words are INVALID_ARGUMENT.
  by_vector.mutable_vector()->Resize(5, 0.5f);
  a = Ask(by_vector);
  EXPECT_EQ(a.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(a.status.error_message().find("dimension 5"), std::string::npos);
  EXPECT_NE(a.status.error_message().find("1024"), std::string::npos);
  EXPECT_EQ(Ask(Question("?! ...", 2)).status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  // Passages of a longer document in another collection; Delete by document removes them all.
  auto ctx = Ctx();
  v1::IngestResponse iresp;
  auto writer = router_->Ingest(ctx.get(), &iresp);
  v1::IngestRequest req;
  req.set_collection("chunked");
  req.mutable_create_spec()->set_name("chunked");
  req.mutable_create_spec()->set_dimension(64);
  for (int i = 0; i < 3; ++i) {
    auto* d = req.add_documents();
    d->set_id("manual#" + std::to_string(i));
    d->set_text("part " + std::to_string(i) + " of the Quorvane manual");
    d->set_document_id("manual");
    d->set_chunk_index(i);
    d->set_offset(100 * i);
  }
  req.add_documents()->set_text("a Quorvane note");
  req.mutable_documents(3)->set_id("note");
  ASSERT_TRUE(writer->Write(req));
  writer->WritesDone();
  ASSERT_TRUE(writer->Finish().ok());
  v1::QueryRequest manual = Question("Quorvane manual part 2", 2);
  manual.set_collection("chunked");
  a = Ask(manual);
  ASSERT_TRUE(a.status.ok()) << a.status.error_message();
  ASSERT_FALSE(a.passages.empty());
  EXPECT_EQ(a.passages[0].id(), "manual#2");
  EXPECT_EQ(a.passages[0].document_id(), "manual");
  EXPECT_EQ(a.passages[0].chunk_index(), 2);
  EXPECT_EQ(a.passages[0].offset(), 200);
  v1::DeleteRequest del;
  del.set_collection("chunked");
  del.add_document_ids("manual");
  v1::DeleteResponse dresp;
  ASSERT_TRUE(router_->Delete(Ctx().get(), del, &dresp).ok());
  EXPECT_EQ(dresp.deleted(), 3);
  a = Ask(manual);
  ASSERT_TRUE(a.status.ok());
  ASSERT_EQ(a.passages.size(), 1u);
  EXPECT_EQ(a.passages[0].id(), "note");
  // A whole long document sent to Ingest is cut by the router (--ingest-chunk-tokens 200,
  // overlap 32): 450 words make passages of words 0-199, 168-367 and 336-449.
  std::string guide;
  for (int i = 0; i < 450; ++i) {
    guide += (i ? " " : "") + (i == 420 ? "Zelvantine" : "w" + std::to_string(i));
  }
  v1::IngestResponse gresp2;
  auto gctx = Ctx();
  auto gwriter = router_->Ingest(gctx.get(), &gresp2);
  v1::IngestRequest greq2;
  greq2.set_collection("chunked");
  greq2.add_documents()->set_id("guide");
  greq2.mutable_documents(0)->set_text(guide);
  ASSERT_TRUE(gwriter->Write(greq2));
  gwriter->WritesDone();
  ASSERT_TRUE(gwriter->Finish().ok());
  EXPECT_EQ(gresp2.ingested(), 3);
  v1::QueryRequest zel = Question("Zelvantine", 1);
  zel.set_collection("chunked");
  zel.set_retrieval(v1::RETRIEVAL_MODE_BM25);
  a = Ask(zel);
  ASSERT_TRUE(a.status.ok()) << a.status.error_message();
  ASSERT_EQ(a.passages.size(), 1u);
  EXPECT_EQ(a.passages[0].id(), "guide#2");
  EXPECT_EQ(a.passages[0].document_id(), "guide");
  EXPECT_EQ(a.passages[0].chunk_index(), 2);
  EXPECT_EQ(a.passages[0].offset(), static_cast<int64_t>(guide.find("w336")));
  del.set_collection("no-such-collection");
  EXPECT_EQ(router_->Delete(Ctx().get(), del, &dresp).error_code(), grpc::StatusCode::NOT_FOUND);
}

}  // namespace
}  // namespace ragserve
