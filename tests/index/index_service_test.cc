// End to end: the real ragserve-index binary over gRPC on loopback, including kill -9 right
// after an acknowledged upsert.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <csignal>
#include <filesystem>
#include <limits>

#include "ragserve/v1/index.grpc.pb.h"
#include "services/common/client.h"
#include "services/index/collection.h"
#include "tests/index/test_data.h"
#include "tests/support/process.h"

namespace ragserve::collection {
namespace {

using ragserve::testing::BinPath;
using ragserve::testing::MakeTempDir;
using ragserve::testing::Process;
using ragserve::testing::WaitForReadyFile;

constexpr char kToken[] = "idx-token";               // internal credential
constexpr char kAdminToken[] = "index-admin-token";  // Rebuild needs the admin one
constexpr int kDim = 16;

class IndexServer {
 public:
  explicit IndexServer(const std::string& dir) : dir_(dir) {}
  void Start() {
    const std::string ready = dir_ + "/ready-" + std::to_string(++starts_) + ".json";
    ASSERT_TRUE(proc_.Start(
        BinPath("ragserve-index"),
        {"--port", "0", "--metrics-port", "0", "--ready-file", ready, "--internal-token", kToken,
         "--admin-token", kAdminToken, "--data-dir", dir_ + "/data"},
        dir_ + "/server.log", {}, dir_));
    int port = 0, mport = 0;
    ASSERT_TRUE(WaitForReadyFile(ready, 30, &port, &mport)) << "see " << dir_ << "/server.log";
    auto ch = MakeChannel("127.0.0.1:" + std::to_string(port));
    ASSERT_TRUE(ch.ok());
    stub_ = v1::IndexService::NewStub(*ch);
  }
  v1::IndexService::Stub* stub() { return stub_.get(); }
  Process& proc() { return proc_; }

 private:
  std::string dir_;
  int starts_ = 0;
  Process proc_;
  std::unique_ptr<v1::IndexService::Stub> stub_;
};

std::unique_ptr<grpc::ClientContext> Ctx(bool auth = true, const char* token = kToken) {
  auto ctx = std::make_unique<grpc::ClientContext>();
  if (auth) ctx->AddMetadata("authorization", std::string("Bearer ") + token);
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  return ctx;
}

TEST(IndexServiceTest, AcknowledgedUpsertsSurviveKill9AndGrpcSearchEqualsInProcess) {
  const std::string dir = MakeTempDir("rs_index_e2e");
  const auto x = index::testing::ClusteredData(400, kDim, 8, 77);
  IndexServer server(dir);
  ASSERT_NO_FATAL_FAILURE(server.Start());
  {
    v1::CreateCollectionRequest req;
    req.mutable_spec()->set_name("kb");
    req.mutable_spec()->set_dimension(kDim);
    req.mutable_spec()->set_metric(v1::METRIC_L2);
    req.mutable_spec()->set_index_kind(v1::INDEX_KIND_HNSW);
    v1::CreateCollectionResponse resp;
    ASSERT_TRUE(server.stub()->CreateCollection(Ctx().get(), req, &resp).ok());
    EXPECT_EQ(resp.info().spec().params().hnsw_m(), 16);
    // Without the token: UNAUTHENTICATED, nothing created.
    req.mutable_spec()->set_name("kb2");
    EXPECT_EQ(server.stub()->CreateCollection(Ctx(false).get(), req, &resp).error_code(),
              grpc::StatusCode::UNAUTHENTICATED);
    // Bad input maps to INVALID_ARGUMENT / ALREADY_EXISTS / NOT_FOUND.
    req.mutable_spec()->set_name("kb");
    EXPECT_EQ(server.stub()->CreateCollection(Ctx().get(), req, &resp).error_code(),
              grpc::StatusCode::ALREADY_EXISTS);
    req.mutable_spec()->set_name("m0");
    req.mutable_spec()->mutable_params()->set_ivf_nlist(5);  // not an HNSW param
    EXPECT_EQ(server.stub()->CreateCollection(Ctx().get(), req, &resp).error_code(),
              grpc::StatusCode::INVALID_ARGUMENT);
    v1::StatsRequest sreq;
    sreq.set_collection("missing");
    v1::StatsResponse sresp;
    EXPECT_EQ(server.stub()->Stats(Ctx().get(), sreq, &sresp).error_code(),
              grpc::StatusCode::NOT_FOUND);
  }
  // Stream 400 documents in 4 messages; kill -9 the moment the ack arrives.
  {
    auto ctx = Ctx();
    v1::UpsertResponse resp;
    auto writer = server.stub()->Upsert(ctx.get(), &resp);
    for (int m = 0; m < 4; ++m) {
      v1::UpsertRequest req;
      if (m == 0) req.set_collection("kb");
      for (int i = m * 100; i < (m + 1) * 100; ++i) {
        v1::Document* d = req.add_documents();
        d->set_id("doc-" + std::to_string(i));
        d->set_text("text " + std::to_string(i));
        d->set_metadata_json(R"({"shard": )" + std::to_string(i % 4) + "}");
        d->mutable_vector()->Add(x.begin() + i * kDim, x.begin() + (i + 1) * kDim);
      }
      ASSERT_TRUE(writer->Write(req));
    }
    writer->WritesDone();
    const grpc::Status st = writer->Finish();
    server.proc().Signal(SIGKILL);
    ASSERT_TRUE(st.ok()) << st.error_message();
    EXPECT_EQ(resp.upserted(), 400);
    int code = 0;
    ASSERT_TRUE(server.proc().Wait(10, &code));
  }
  ASSERT_NO_FATAL_FAILURE(server.Start());
  v1::GetDocumentsRequest greq;
  greq.set_collection("kb");
  for (int i = 0; i < 400; ++i) greq.add_ids("doc-" + std::to_string(i));
  greq.add_ids("never-written");
  v1::GetDocumentsResponse gresp;
  ASSERT_TRUE(server.stub()->GetDocuments(Ctx().get(), greq, &gresp).ok());
  ASSERT_EQ(gresp.documents_size(), 400);
  EXPECT_EQ(gresp.documents(123).text(), "text 123");
  EXPECT_EQ(gresp.documents(123).vector_size(), kDim);
  ASSERT_EQ(gresp.missing_ids_size(), 1);
  // Delete some, then search in a batch with a filter.
  v1::DeleteRequest dreq;
  dreq.set_collection("kb");
  dreq.add_ids("doc-0");
  dreq.add_ids("doc-1");
  v1::DeleteResponse dresp;
  ASSERT_TRUE(server.stub()->Delete(Ctx().get(), dreq, &dresp).ok());
  EXPECT_EQ(dresp.deleted(), 2);
  v1::SearchRequest sreq;
  sreq.set_collection("kb");
  sreq.set_k(5);
  sreq.set_include_text(true);
  for (int i = 0; i < 20; ++i) {
    sreq.add_queries()->mutable_vector()->Add(x.begin() + i * kDim, x.begin() + (i + 1) * kDim);
  }
  v1::SearchResponse sresp;
  ASSERT_TRUE(server.stub()->Search(Ctx().get(), sreq, &sresp).ok());
  ASSERT_EQ(sresp.results_size(), 20);
  EXPECT_EQ(sresp.results(5).hits(0).id(), "doc-5");
  EXPECT_EQ(sresp.results(5).hits(0).text(), "text 5");
  for (const auto& h : sresp.results(0).hits()) EXPECT_NE(h.id(), "doc-0");
  (*sreq.mutable_filter()->mutable_equals())["shard"] = "2";
  v1::SearchResponse fresp;
  ASSERT_TRUE(server.stub()->Search(Ctx().get(), sreq, &fresp).ok());
  for (const auto& list : fresp.results()) {
    ASSERT_EQ(list.hits_size(), 5);
    for (const auto& h : list.hits()) EXPECT_EQ(std::stoi(h.id().substr(4)) % 4, 2) << h.id();
  }
  // Rebuild (online) to the exact flat kind.
  v1::RebuildRequest rreq;
  rreq.set_collection("kb");
  rreq.set_index_kind(v1::INDEX_KIND_FLAT);
  v1::RebuildResponse rresp;
  ASSERT_TRUE(server.stub()->Rebuild(Ctx(true, kAdminToken).get(), rreq, &rresp).ok());
  EXPECT_EQ(rresp.info().spec().index_kind(), v1::INDEX_KIND_FLAT);
  EXPECT_EQ(rresp.info().num_documents(), 398);
  v1::SearchResponse exact;
  sreq.clear_filter();
  ASSERT_TRUE(server.stub()->Search(Ctx().get(), sreq, &exact).ok());
  // Graceful stop, then the same searches in-process give the same answers.
  server.proc().Signal(SIGTERM);
  int code = -1;
  ASSERT_TRUE(server.proc().Wait(10, &code));
  EXPECT_EQ(code, 0);
  auto store = CollectionStore::Open(dir + "/data").value();
  auto c = store->Get("kb").value();
  std::vector<Query> queries(20);  // the same batch as over gRPC: same BLAS blocking
  for (int i = 0; i < 20; ++i) {
    queries[i].vector.assign(x.begin() + i * kDim, x.begin() + (i + 1) * kDim);
  }
  auto r = c->Search(queries, {.k = 5}).value();
  for (int i = 0; i < 20; ++i) {
    ASSERT_EQ(static_cast<int>(r[i].size()), exact.results(i).hits_size());
    for (size_t j = 0; j < r[i].size(); ++j) {
      EXPECT_EQ(r[i][j].id, exact.results(i).hits(j).id());
      EXPECT_EQ(r[i][j].score, exact.results(i).hits(j).score());
      EXPECT_EQ(r[i][j].text, exact.results(i).hits(j).text());
    }
  }
  store.reset();
  std::filesystem::remove_all(dir);
}

// ---- Hostile requests (issue 17): each gets a clear status and the process lives. -----------

class IndexHardeningTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(MakeTempDir("rs_index_hardening"));
    server_ = new IndexServer(*dir_);
    ASSERT_NO_FATAL_FAILURE(server_->Start());
    ASSERT_TRUE(CreateCollection("kb", kDim, v1::INDEX_KIND_HNSW).ok());
    v1::UpsertRequest req;
    req.set_collection("kb");
    *req.add_documents() = TextDoc("river", "The Nawerk River is 212 kilometres long");
    *req.add_documents() = TextDoc("lizard", "The Trykelurk lizard lives in deserts");
    ASSERT_TRUE(Upsert(req).ok());
  }
  static void TearDownTestSuite() {
    delete server_;
    std::filesystem::remove_all(*dir_);
    delete dir_;
  }

  static grpc::Status CreateCollection(const std::string& name, int dim, v1::IndexKind kind) {
    v1::CreateCollectionRequest req;
    req.mutable_spec()->set_name(name);
    req.mutable_spec()->set_dimension(dim);
    req.mutable_spec()->set_index_kind(kind);
    v1::CreateCollectionResponse resp;
    return server_->stub()->CreateCollection(Ctx().get(), req, &resp);
  }
  static v1::Document TextDoc(const std::string& id, const std::string& text) {
    v1::Document d;
    d.set_id(id);
    d.set_text(text);
    return d;
  }
  static grpc::Status Upsert(const v1::UpsertRequest& req) {
    auto ctx = Ctx();
    v1::UpsertResponse resp;
    auto writer = server_->stub()->Upsert(ctx.get(), &resp);
    writer->Write(req);
    writer->WritesDone();
    return writer->Finish();
  }
  static grpc::Status SearchText(const std::string& text, v1::SearchRequest req = {}) {
    req.set_collection("kb");
    if (req.k() == 0) req.set_k(2);
    req.add_queries()->set_text(text);
    v1::SearchResponse resp;
    return server_->stub()->Search(Ctx().get(), req, &resp);
  }
  static bool Serving() {
    v1::StatsRequest req;
    req.set_collection("kb");
    v1::StatsResponse resp;
    return server_->stub()->Stats(Ctx().get(), req, &resp).ok() && server_->proc().running();
  }

  static std::string* dir_;
  static IndexServer* server_;
};

std::string* IndexHardeningTest::dir_ = nullptr;
IndexServer* IndexHardeningTest::server_ = nullptr;

// #4: 400 KB of metadata nested 200,000 levels deep used to overflow the stack when the parsed
// value was re-serialised.
TEST_F(IndexHardeningTest, DeeplyNestedMetadataIsInvalidArgumentAndTheServiceLives) {
  const int kLevels = 200000;
  v1::UpsertRequest req;
  req.set_collection("kb");
  v1::Document d = TextDoc("deep", "deep text");
  d.set_metadata_json("{\"a\":" + std::string(kLevels, '[') + std::string(kLevels, ']') + "}");
  *req.add_documents() = d;
  const grpc::Status st = Upsert(req);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << st.error_message();
  EXPECT_NE(st.error_message().find("levels deep"), std::string::npos) << st.error_message();
  // A deep filter value likewise.
  v1::SearchRequest sreq;
  (*sreq.mutable_filter()->mutable_equals())["a"] =
      std::string(kLevels, '[') + std::string(kLevels, ']');
  EXPECT_EQ(SearchText("river", sreq).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  ASSERT_TRUE(Serving()) << "ragserve-index died";
  // 64 levels are fine.
  d.set_metadata_json("{\"a\":" + std::string(63, '[') + std::string(63, ']') + "}");
  *req.mutable_documents(0) = d;
  EXPECT_TRUE(Upsert(req).ok());
}

// #11: ef_search (and nprobe) are capped on every search path, the inline one included.
TEST_F(IndexHardeningTest, EfSearchOrNprobeAboveTheCapIsInvalidArgument) {
  v1::SearchRequest req;
  req.set_ef_search(std::numeric_limits<int32_t>::max());
  grpc::Status st = SearchText("river", req);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << st.error_message();
  EXPECT_NE(st.error_message().find("ef_search"), std::string::npos) << st.error_message();
  req.set_ef_search(10000);  // kMaxEfSearch
  EXPECT_TRUE(SearchText("river", req).ok());
  req.set_ef_search(0);
  req.set_nprobe(std::numeric_limits<int32_t>::max());
  EXPECT_EQ(SearchText("river", req).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  req.set_nprobe(0);
  req.set_k(10001);  // kMaxK + 1
  EXPECT_EQ(SearchText("river", req).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

// #12: a text without words embeds to a zero vector: INVALID_ARGUMENT, not arbitrary hits.
TEST_F(IndexHardeningTest, QueryTextWithoutWordsIsInvalidArgument) {
  for (const std::string text : {"?!", " ... --- ", "\t"}) {
    const grpc::Status st = SearchText(text);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << "'" << text << "'";
    EXPECT_NE(st.error_message().find("no words"), std::string::npos) << st.error_message();
  }
  EXPECT_TRUE(SearchText("river?").ok());
}

// #3: documents per message and bytes embedded per call are bounded before anything is
// allocated (defaults: 10000 documents, 64 MiB).
TEST_F(IndexHardeningTest, TooManyDocumentsOrTooManyBytesToEmbedAreRejected) {
  v1::UpsertRequest many;
  many.set_collection("kb");
  for (int i = 0; i <= 10000; ++i) *many.add_documents() = TextDoc("id" + std::to_string(i), "");
  grpc::Status st = Upsert(many);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << st.error_message();
  EXPECT_NE(st.error_message().find("10000"), std::string::npos) << st.error_message();
  // 300 id-only documents in a 65536-dim collection would embed to 300 x 256 KiB = 75 MiB.
  ASSERT_TRUE(CreateCollection("wide", 65536, v1::INDEX_KIND_FLAT).ok());
  v1::UpsertRequest wide;
  wide.set_collection("wide");
  for (int i = 0; i < 300; ++i) *wide.add_documents() = TextDoc("w" + std::to_string(i), "");
  st = Upsert(wide);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << st.error_message();
  EXPECT_NE(st.error_message().find("embedding batch"), std::string::npos) << st.error_message();
  wide.mutable_documents()->DeleteSubrange(10, 290);
  for (auto& d : *wide.mutable_documents()) d.set_text("some words");
  EXPECT_TRUE(Upsert(wide).ok());
  EXPECT_TRUE(Serving());
}

}  // namespace
}  // namespace ragserve::collection
