// Hostile and unlucky clients against the real router and index binaries on loopback (issue 17):
// rejected and interrupted ingests, questions without words, decode workers that accept a call
// and never answer, and request ids that must not collide across router replicas. The decode
// workers are in-process fakes (the real decoder is exercised by rag_e2e_test).
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "ragserve/v1/decoder.grpc.pb.h"
#include "ragserve/v1/rag.grpc.pb.h"
#include "tests/e2e/cluster.h"

namespace ragserve {
namespace {

using Clock = std::chrono::steady_clock;
constexpr int kDim = 16;

using testing::Ctx;

double SecondsSince(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// A decode worker: healthy GetLoad with a set load; Generate either answers one token at once,
// (hang) accepts the call and never answers until the caller gives up, or (stall) sends one
// token and then nothing until the caller gives up, as a decoder stopped mid-answer. Records
// request ids and the resume_token_ids of the last request.
class FakeDecoder final : public v1::DecoderService::Service {
 public:
  FakeDecoder(bool hang, int active, bool stall = false) : hang_(hang), stall_(stall) {
    load_.set_active_sequences(active);
    grpc::ServerBuilder b;
    b.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    b.RegisterService(this);
    server_ = b.BuildAndStart();
  }
  ~FakeDecoder() override { server_->Shutdown(std::chrono::system_clock::now()); }

  grpc::Status GetLoad(grpc::ServerContext*, const v1::LoadRequest*, v1::LoadReport* out) override {
    *out = load_;
    return grpc::Status::OK;
  }
  grpc::Status Generate(grpc::ServerContext* ctx, const v1::GenerateRequest* req,
                        grpc::ServerWriter<v1::GenerateEvent>* writer) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      ids_.push_back(req->request_id());
      resume_.assign(req->resume_token_ids().begin(), req->resume_token_ids().end());
    }
    ++calls_;
    if (stall_) {
      v1::GenerateEvent first;
      first.mutable_delta()->add_token_ids(7);
      first.mutable_delta()->set_text("ok");
      writer->Write(first);
    }
    if (hang_ || stall_) {
      while (!ctx->IsCancelled()) std::this_thread::sleep_for(std::chrono::milliseconds(10));
      return grpc::Status(grpc::StatusCode::CANCELLED, "caller gave up");
    }
    v1::GenerateEvent ev;
    ev.mutable_delta()->add_token_ids(7);
    ev.mutable_delta()->set_text("ok");
    writer->Write(ev);
    return grpc::Status::OK;
  }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  int calls() const { return calls_.load(); }
  std::vector<std::string> ids() {
    std::lock_guard<std::mutex> lock(mu_);
    return ids_;
  }
  std::vector<int32_t> last_resume_token_ids() {
    std::lock_guard<std::mutex> lock(mu_);
    return resume_;
  }

 private:
  const bool hang_;
  const bool stall_;
  v1::LoadReport load_;
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
  std::atomic<int> calls_{0};
  std::mutex mu_;
  std::vector<std::string> ids_;
  std::vector<int32_t> resume_;
};

// The router flags under test (0 turns a feature off: the tests below then fail).
constexpr char kWorkerIdleTimeout[] = "1";
constexpr char kIndexTimeout[] = "1";

v1::Document Doc(const std::string& id, const std::string& text, int dim = 0) {
  v1::Document d;
  d.set_id(id);
  d.set_text(text);
  for (int i = 0; i < dim; ++i) d.add_vector(0.1f * static_cast<float>(i + 1));
  return d;
}

v1::IngestRequest Create(const std::string& name) {
  v1::IngestRequest req;
  req.set_collection(name);
  req.mutable_create_spec()->set_name(name);
  req.mutable_create_spec()->set_dimension(kDim);
  req.mutable_create_spec()->set_index_kind(v1::INDEX_KIND_FLAT);
  return req;
}

struct QueryResult {
  grpc::Status status;
  int tokens = 0;
  v1::QueryStats stats;
};

class RouterHardeningE2eTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string dir = testing::MakeTempDir("router-hardening-e2e");
    cluster_ = new testing::Cluster(dir);
    hang_ = new FakeDecoder(/*hang=*/true, /*active=*/0);
    good_ = new FakeDecoder(/*hang=*/false, /*active=*/10);  // least_load tries hang_ first
    stall_ = new FakeDecoder(/*hang=*/false, /*active=*/0, /*stall=*/true);
    std::string err;
    ASSERT_TRUE(cluster_->Start("index", "index", {"--data-dir", dir + "/index-data"}, &err))
        << err;
    for (const char* name : {"router", "router2"}) {
      ASSERT_TRUE(cluster_->Start(
          "router", name,
          {"--index-addr", cluster_->Get("index")->addr(), "--decoders",
           hang_->address() + "," + good_->address(), "--policy", "least_load", "--poll-interval",
           "0.2", "--max-attempts", "2", "--worker-timeout", "1"},
          &err))
          << err;
    }
    // Only the idle timeout can rescue a query from stall_: the worker timeout is 300 s.
    ASSERT_TRUE(
        cluster_->Start("router", "router-idle",
                        {"--index-addr", cluster_->Get("index")->addr(), "--decoders",
                         stall_->address() + "," + good_->address(), "--policy", "least_load",
                         "--poll-interval", "0.2", "--max-attempts", "2", "--worker-timeout", "300",
                         "--worker-idle-timeout", kWorkerIdleTimeout},
                        &err))
        << err;
    ASSERT_TRUE(cluster_->Start("router", "router-index-timeout",
                                {"--index-addr", cluster_->Get("index")->addr(), "--decoders",
                                 good_->address(), "--index-timeout", kIndexTimeout},
                                &err))
        << err;
    // A request memory budget of one largest message: one Ingest stream fills it (F7).
    ASSERT_TRUE(
        cluster_->Start("router", "router-small-budget",
                        {"--index-addr", cluster_->Get("index")->addr(), "--decoders",
                         good_->address(), "--executor-queue-mb", "1", "--max-message-mb", "1"},
                        &err))
        << err;
    router_ = Stub("router").release();
    // A small corpus for the query tests.
    auto ctx = Ctx(30);
    v1::IngestResponse resp;
    auto writer = router_->Ingest(ctx.get(), &resp);
    v1::IngestRequest req = Create("kb");
    *req.add_documents() = Doc("river", "The Nawerk River is 212 kilometres long.");
    *req.add_documents() = Doc("lizard", "The Trykelurk lizard lives in deserts.");
    ASSERT_TRUE(writer->Write(req));
    writer->WritesDone();
    const grpc::Status st = writer->Finish();
    ASSERT_TRUE(st.ok()) << st.error_message();
  }
  static void TearDownTestSuite() {
    delete router_;
    delete cluster_;
    delete hang_;
    delete good_;
    delete stall_;
  }

  static std::unique_ptr<v1::RagService::Stub> Stub(const std::string& name) {
    auto ch = MakeChannel(cluster_->Get(name)->addr());
    return v1::RagService::NewStub(*ch);
  }

  // Streams `msgs` with a pause between them (so the index's verdict on one message arrives
  // before the router forwards the next) and returns how the Ingest ended.
  static grpc::Status Ingest(const std::vector<v1::IngestRequest>& msgs,
                             const std::function<void(int)>& after_write = {}) {
    auto ctx = Ctx(30);
    v1::IngestResponse resp;
    auto writer = router_->Ingest(ctx.get(), &resp);
    for (size_t i = 0; i < msgs.size(); ++i) {
      if (!writer->Write(msgs[i])) break;
      if (after_write) after_write(static_cast<int>(i));
      std::this_thread::sleep_for(std::chrono::milliseconds(150));
    }
    writer->WritesDone();
    return writer->Finish();
  }

  static bool RouterAnswers() {
    auto ctx = Ctx(5);
    v1::ListCollectionsRequest req;
    v1::ListCollectionsResponse resp;
    return router_->ListCollections(ctx.get(), req, &resp).ok() &&
           cluster_->Get("router")->proc->running();
  }

  static QueryResult Ask(v1::RagService::Stub* stub, const std::string& question,
                         double deadline_s = 30, int max_tokens = 1) {
    v1::QueryRequest req;
    req.set_collection("kb");
    req.set_question(question);
    req.set_top_k(2);
    req.mutable_sampling()->set_max_tokens(max_tokens);
    auto ctx = Ctx(deadline_s);
    auto reader = stub->Query(ctx.get(), req);
    QueryResult r;
    v1::QueryEvent ev;
    while (reader->Read(&ev)) {
      if (ev.has_delta()) r.tokens += ev.delta().token_ids_size();
      if (ev.has_stats()) r.stats = ev.stats();
    }
    r.status = reader->Finish();
    return r;
  }

  static testing::Cluster* cluster_;
  static v1::RagService::Stub* router_;
  static FakeDecoder* hang_;
  static FakeDecoder* good_;
  static FakeDecoder* stall_;
};

testing::Cluster* RouterHardeningE2eTest::cluster_ = nullptr;
v1::RagService::Stub* RouterHardeningE2eTest::router_ = nullptr;
FakeDecoder* RouterHardeningE2eTest::hang_ = nullptr;
FakeDecoder* RouterHardeningE2eTest::good_ = nullptr;
FakeDecoder* RouterHardeningE2eTest::stall_ = nullptr;

// Issue 17 #1: the index rejects message 1; the router used to Finish its index stream twice
// when message 2 arrived and die of a gRPC API-misuse abort.
TEST_F(RouterHardeningE2eTest, RejectedIngestDocumentIsInvalidArgumentNamingItAndRouterLives) {
  v1::IngestRequest first = Create("dims");
  *first.add_documents() = Doc("short-vector", "x", kDim - 3);
  std::vector<v1::IngestRequest> msgs = {first};
  for (int i = 0; i < 4; ++i) {
    v1::IngestRequest next;
    *next.add_documents() = Doc("fine-" + std::to_string(i), "fine", kDim);
    msgs.push_back(next);
  }
  const grpc::Status st = Ingest(msgs);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << st.error_message();
  EXPECT_NE(st.error_message().find("short-vector"), std::string::npos) << st.error_message();
  EXPECT_TRUE(RouterAnswers()) << "router died:\n"
                               << testing::ReadFileOrEmpty(cluster_->Get("router")->log);
}

// Issue 17 #1, second half: the index dies mid-ingest -> UNAVAILABLE; the router lives, and
// ingests again once the index is back. Leaves the index restarted.
TEST_F(RouterHardeningE2eTest, IndexKilledMidIngestIsUnavailableAndRouterLives) {
  std::vector<v1::IngestRequest> msgs = {Create("restart")};
  for (int i = 0; i < 6; ++i) {
    v1::IngestRequest next;
    *next.add_documents() = Doc("d" + std::to_string(i), "some text", kDim);
    msgs.push_back(next);
  }
  const grpc::Status st = Ingest(msgs, [](int i) {
    if (i == 1) cluster_->Get("index")->proc->Signal(SIGKILL);
  });
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << st.error_message();
  EXPECT_TRUE(cluster_->Get("router")->proc->running())
      << testing::ReadFileOrEmpty(cluster_->Get("router")->log);
  std::string err;
  ASSERT_TRUE(cluster_->Restart("index", &err)) << err;
  grpc::Status again;
  for (int i = 0; i < 50; ++i) {
    again = Ingest({msgs[0], msgs[1]});
    if (again.ok()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  EXPECT_TRUE(again.ok()) << again.error_message();
}

// docs/RELIABILITY.md "Floods" F7: an Ingest stream reserves one --max-message-mb of
// --executor-queue-mb before its first read and holds it to its end. With a budget of one
// message, a second stream is refused RESOURCE_EXHAUSTED before it is read (before: it was read
// and forwarded like the first, however many streams a flood opened), and once the first has
// ended an Ingest goes through again.
TEST_F(RouterHardeningE2eTest, IngestStreamIsRefusedBeforeItIsReadWhenTheBudgetIsFull) {
  auto router = Stub("router-small-budget");
  auto first_ctx = Ctx();
  v1::IngestResponse first_resp;
  auto first = router->Ingest(first_ctx.get(), &first_resp);
  v1::IngestRequest create = Create("budget");
  *create.add_documents() = Doc("one", "the stream that holds the budget", kDim);
  ASSERT_TRUE(first->Write(create));
  // Once its collection exists the first message was read, so the stream's reservation (taken
  // before that read, held for the next one) is in place. Up to 30 s: a bound for a broken build.
  bool created = false;
  for (int i = 0; i < 300 && !created; ++i) {
    auto ctx = Ctx(5);
    v1::ListCollectionsResponse list;
    if (router->ListCollections(ctx.get(), v1::ListCollectionsRequest(), &list).ok()) {
      for (const auto& c : list.collections()) created |= c.spec().name() == "budget";
    }
    if (!created) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_TRUE(created) << testing::ReadFileOrEmpty(cluster_->Get("router-small-budget")->log);

  v1::IngestRequest more;
  more.set_collection("budget");
  *more.add_documents() = Doc("two", "a stream past the budget", kDim);
  {
    auto ctx = Ctx();
    v1::IngestResponse resp;
    auto second = router->Ingest(ctx.get(), &resp);
    (void)second->Write(more);  // fails once the call has been refused
    second->WritesDone();
    const grpc::Status st = second->Finish();
    EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << st.error_message();
    EXPECT_NE(st.error_message().find("--executor-queue-mb"), std::string::npos)
        << st.error_message();
  }

  ASSERT_TRUE(first->WritesDone());
  const grpc::Status first_st = first->Finish();
  ASSERT_TRUE(first_st.ok()) << first_st.error_message();
  auto ctx = Ctx();
  v1::IngestResponse resp;
  auto again = router->Ingest(ctx.get(), &resp);
  *more.mutable_documents(0) = Doc("three", "a stream after the first ended", kDim);
  ASSERT_TRUE(again->Write(more));
  again->WritesDone();
  const grpc::Status st = again->Finish();
  EXPECT_TRUE(st.ok()) << st.error_message();
}

// Issue 17 #3 (router side): documents per Ingest message are bounded before they are copied.
TEST_F(RouterHardeningE2eTest, IngestMessageOverTheDocumentLimitIsInvalidArgument) {
  v1::IngestRequest many = Create("many");
  for (int i = 0; i <= 10000; ++i) *many.add_documents() = Doc("id" + std::to_string(i), "");
  const grpc::Status st = Ingest({many});
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << st.error_message();
  EXPECT_NE(st.error_message().find("--max-ingest-docs"), std::string::npos) << st.error_message();
  EXPECT_TRUE(RouterAnswers());
}

// Issue 17 #12: a question without words embeds to a zero vector; say so instead of returning
// arbitrary passages.
TEST_F(RouterHardeningE2eTest, QuestionWithoutWordsIsInvalidArgument) {
  for (const std::string q : {"?!", "...   ---", " "}) {
    QueryResult r = Ask(router_, q);
    EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << "'" << q << "'";
    EXPECT_NE(r.status.error_message().find("no words"), std::string::npos)
        << r.status.error_message();
  }
}

// Issue 17 #10: a worker that accepts Generate and never answers must not pin the query: the
// router's per-call worker deadline (--worker-timeout 1) fails it over to the other worker.
TEST_F(RouterHardeningE2eTest, WorkerThatNeverAnswersTimesOutAndTheQueryFailsOver) {
  const int hang_calls = hang_->calls();
  const auto t0 = Clock::now();
  QueryResult r = Ask(router_, "How long is the Nawerk River?", /*deadline_s=*/20);
  const double secs = SecondsSince(t0);
  ASSERT_TRUE(r.status.ok()) << r.status.error_code() << " " << r.status.error_message();
  EXPECT_EQ(r.tokens, 1);
  EXPECT_EQ(hang_->calls(), hang_calls + 1) << "the hanging worker was not tried first";
  EXPECT_EQ(r.stats.retries(), 1);
  EXPECT_LT(secs, 10.0);
}

// Issue 17 #5: ids are unique per router process, not <listen address>/q<counter>.
TEST_F(RouterHardeningE2eTest, RequestIdsDifferAcrossRouterReplicas) {
  auto second = Stub("router2");
  const size_t before = good_->ids().size();
  ASSERT_TRUE(Ask(router_, "Nawerk River").status.ok());
  ASSERT_TRUE(Ask(second.get(), "Nawerk River").status.ok());
  const std::vector<std::string> ids = good_->ids();
  ASSERT_GE(ids.size(), before + 2);
  const std::set<std::string> all(ids.begin(), ids.end());
  EXPECT_EQ(all.size(), ids.size()) << "a request id was issued twice";
  for (const auto& id : ids) {
    EXPECT_EQ(id.find(cluster_->Get("router")->addr()), std::string::npos) << id;
    EXPECT_EQ(id.find("0.0.0.0"), std::string::npos) << id;
  }
}

// Issue 23 chaos C4: a worker that sent a token and then stops (hung, SIGSTOPped) used to hold
// the query until the client's deadline (20 s here; keepalive and --worker-timeout are far
// longer). After --worker-idle-timeout of silence the router fails the query over to the other
// worker, which resumes after the token already sent; the client sees one answer.
TEST_F(RouterHardeningE2eTest, WorkerThatStopsMidAnswerFailsOverAfterTheIdleTimeout) {
  auto stub = Stub("router-idle");
  const int stall_calls = stall_->calls();
  QueryResult r = Ask(stub.get(), "How long is the Nawerk River?", /*deadline_s=*/20,
                      /*max_tokens=*/2);
  ASSERT_TRUE(r.status.ok()) << r.status.error_code() << " " << r.status.error_message();
  EXPECT_EQ(stall_->calls(), stall_calls + 1) << "the stalling worker was not tried first";
  EXPECT_EQ(r.tokens, 2);  // 7 from the stalled worker, 7 from the one that took over
  EXPECT_EQ(r.stats.retries(), 1);
  EXPECT_EQ(good_->last_resume_token_ids(), std::vector<int32_t>{7});
}

// Issue 23 chaos C5: the router's calls to a hung index (SIGSTOP: its connection stays open)
// end after --index-timeout with UNAVAILABLE naming the index, within the client's longer
// deadline (they used to wait for it and end DEADLINE_EXCEEDED); after SIGCONT they work again.
TEST_F(RouterHardeningE2eTest, HungIndexIsUnavailableAfterTheIndexTimeout) {
  auto stub = Stub("router-index-timeout");
  ASSERT_TRUE(Ask(stub.get(), "Nawerk River").status.ok());  // connected to the index
  testing::ClusterService* index = cluster_->Get("index");
  ASSERT_TRUE(index->proc->Stop());
  QueryResult r = Ask(stub.get(), "How long is the Nawerk River?", /*deadline_s=*/20);
  auto ctx = Ctx(20);
  v1::ListCollectionsRequest lreq;
  v1::ListCollectionsResponse lresp;
  const grpc::Status list = stub->ListCollections(ctx.get(), lreq, &lresp);
  index->proc->Signal(SIGCONT);
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::UNAVAILABLE) << r.status.error_message();
  EXPECT_NE(r.status.error_message().find("did not answer within"), std::string::npos)
      << r.status.error_message();
  EXPECT_EQ(list.error_code(), grpc::StatusCode::UNAVAILABLE) << list.error_message();
  EXPECT_TRUE(Ask(stub.get(), "Nawerk River").status.ok());
}

}  // namespace
}  // namespace ragserve
