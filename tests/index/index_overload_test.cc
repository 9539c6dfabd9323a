// The index service in process (ServiceServer + IndexGrpcService, one executor thread held by a
// test task) under the overload rules of docs/RELIABILITY.md "Floods": an Upsert message queued
// for a caller that has left is not applied, the cheap calls (ListCollections, Stats) are
// answered while the executor is busy, an Upsert stream is refused before it is read when
// the request memory budget is full, and a unary call whose deadline comes before the queue's
// expected wait is refused at once, and an answer waiting for a slow reader holds its bytes of
// the budget until it is sent.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <future>
#include <memory>
#include <string>
#include <thread>

#include "ragserve/v1/index.grpc.pb.h"
#include "services/common/server.h"
#include "services/index/collection.h"
#include "services/index/service.h"
#include "tests/support/process.h"

namespace ragserve::collection {
namespace {

using Clock = std::chrono::system_clock;

class IndexOverloadTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::MakeTempDir("rs_index_overload");
    auto store = CollectionStore::Open(dir_ + "/data");
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    store_ = std::move(*store);
    ServerConfig cfg;
    cfg.service = "index";
    cfg.metrics_port = -1;
    cfg.executor_threads = 1;
    // A budget of one largest message (1 MiB): one Upsert stream waiting for a message fills it.
    cfg.max_message_mb = 1;
    cfg.executor_queue_mb = 1;
    server_ = std::make_unique<ServiceServer>(cfg);
    service_ = std::make_unique<IndexGrpcService>(server_.get(), store_.get());
    server_->AddService(service_.get(), "ragserve.v1.IndexService");
    ASSERT_TRUE(server_->Start().ok());
    stub_ = v1::IndexService::NewStub(
        grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials()));
    v1::CreateCollectionRequest req;
    req.mutable_spec()->set_name("kb");
    req.mutable_spec()->set_dimension(16);
    req.mutable_spec()->set_index_kind(v1::INDEX_KIND_FLAT);
    v1::CreateCollectionResponse resp;
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub_->CreateCollection(&ctx, req, &resp).ok());
    // The call's task gives its bytes back just after its answer is sent: a stream opened before
    // that finds the one-message budget taken (a flake of the stream tests on a loaded machine).
    ASSERT_TRUE(WaitBudgetEmpty());
  }

  void TearDown() override {
    ReleaseExecutor();
    server_->Shutdown();
    service_.reset();
    store_.reset();
  }

  // Occupies the executor's only thread until ReleaseExecutor(); returns once the task runs.
  void BlockExecutor() {
    ASSERT_TRUE(server_->executor().Submit([gate = gate_] { gate.wait(); }).ok());
    while (server_->executor().queued() > 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }
  void ReleaseExecutor() {
    if (!released_) open_.set_value();
    released_ = true;
  }
  // Waits (up to 60 s, a bound for a broken build) until the executor's budget holds `bytes`.
  bool WaitBytesHeld(int64_t bytes) {
    for (int i = 0; i < 12000 && server_->executor().bytes_held() < bytes; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return server_->executor().bytes_held() >= bytes;
  }
  // An Upsert stream of the one message `msg` into "kb".
  grpc::Status UpsertOneMessage(v1::UpsertRequest msg, v1::UpsertResponse* resp,
                                std::chrono::seconds deadline = std::chrono::seconds(60)) {
    grpc::ClientContext ctx;
    ctx.set_deadline(Clock::now() + deadline);
    auto writer = stub_->Upsert(&ctx, resp);
    msg.set_collection("kb");
    writer->Write(msg);
    writer->WritesDone();
    return writer->Finish();
  }
  // Waits (up to 60 s, a bound for a broken build) until the executor's budget holds nothing.
  bool WaitBudgetEmpty() {
    for (int i = 0; i < 12000 && server_->executor().bytes_held() > 0; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return server_->executor().bytes_held() == 0;
  }
  // Waits (up to 60 s, a bound for a broken build) until `n` tasks wait on the executor.
  bool WaitQueued(int n) {
    for (int i = 0; i < 12000 && server_->executor().queued() < n; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return server_->executor().queued() >= n;
  }

  std::string dir_;
  std::unique_ptr<CollectionStore> store_;
  std::unique_ptr<ServiceServer> server_;
  std::unique_ptr<IndexGrpcService> service_;
  std::unique_ptr<v1::IndexService::Stub> stub_;
  std::promise<void> open_;
  std::shared_future<void> gate_ = open_.get_future().share();
  bool released_ = false;
};

// Under a flood most queued Upsert messages belong to callers whose deadline has passed; applying
// them anyway kept the index busy (and the router, which forwards to it, unanswered) for tens of
// seconds after the flood. Here the message is queued behind a busy executor, its caller's
// deadline passes, then the executor frees up: the message must not be written.
TEST_F(IndexOverloadTest, UpsertMessageQueuedForACallerThatLeftIsNotApplied) {
  ASSERT_NO_FATAL_FAILURE(BlockExecutor());
  const auto t0 = Clock::now();
  const auto deadline = t0 + std::chrono::seconds(2);
  grpc::ClientContext ctx;
  ctx.set_deadline(deadline);
  v1::UpsertResponse resp;
  auto writer = stub_->Upsert(&ctx, &resp);
  v1::UpsertRequest msg;
  msg.set_collection("kb");
  auto* d = msg.add_documents();
  d->set_id("abandoned");
  d->set_text("a document whose caller has gone");
  ASSERT_TRUE(writer->Write(msg));
  ASSERT_TRUE(WaitQueued(1));
  ASSERT_LT(Clock::now(), deadline) << "the message was queued after its deadline: no test";
  EXPECT_EQ(writer->Finish().error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  // The server's deadline is its arrival time plus the timeout sent, so it passes before
  // deadline + (deadline - t0) (arrival was before `deadline`, the timeout at most deadline - t0).
  std::this_thread::sleep_until(deadline + (deadline - t0) + std::chrono::milliseconds(100));
  ReleaseExecutor();
  ASSERT_TRUE(server_->executor().WaitIdle(60));
  auto kb = store_->Get("kb");
  ASSERT_TRUE(kb.ok());
  EXPECT_EQ((*kb)->Info().num_documents, 0) << "the abandoned message was applied";
}

// Under a flood of message-sized Upsert streams every stream's message was read (gRPC reads once
// a read is started) and refused only afterwards, or its sender waited on flow control until its
// deadline. Now a stream reads only when the request memory budget can hold a message of the
// largest size: with the budget taken by one stream waiting for its message, a second stream is
// refused RESOURCE_EXHAUSTED at once (before: it waited for a message it was never sent, until
// its deadline), and once the first has finished an Upsert goes through again.
TEST_F(IndexOverloadTest, UpsertStreamIsRefusedBeforeItIsReadWhenTheBudgetIsFull) {
  grpc::ClientContext first_ctx;
  first_ctx.set_deadline(Clock::now() + std::chrono::seconds(60));
  v1::UpsertResponse first_resp;
  auto first = stub_->Upsert(&first_ctx, &first_resp);
  EXPECT_TRUE(WaitBytesHeld(int64_t{1} << 20)) << "the first stream reserved nothing";

  grpc::ClientContext ctx;
  ctx.set_deadline(Clock::now() + std::chrono::seconds(10));
  v1::UpsertResponse resp;
  auto refused = stub_->Upsert(&ctx, &resp);
  const grpc::Status st = refused->Finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << st.error_message();
  EXPECT_NE(st.error_message().find("--executor-queue-mb"), std::string::npos)
      << st.error_message();

  v1::UpsertRequest msg;
  msg.set_collection("kb");
  auto* d = msg.add_documents();
  d->set_id("kept");
  d->set_text("a document of the stream that was admitted");
  d->mutable_vector()->Resize(16, 0.25f);
  ASSERT_TRUE(first->Write(msg));
  ASSERT_TRUE(first->WritesDone());
  const grpc::Status first_st = first->Finish();
  ASSERT_TRUE(first_st.ok()) << first_st.error_message();
  EXPECT_EQ(first_resp.upserted(), 1);

  grpc::ClientContext again_ctx;
  again_ctx.set_deadline(Clock::now() + std::chrono::seconds(60));
  v1::UpsertResponse again_resp;
  auto again = stub_->Upsert(&again_ctx, &again_resp);
  d->set_id("after");
  ASSERT_TRUE(again->Write(msg));
  ASSERT_TRUE(again->WritesDone());
  const grpc::Status again_st = again->Finish();
  EXPECT_TRUE(again_st.ok()) << again_st.error_message();
  EXPECT_EQ(server_->executor().bytes_held(), 0);
}

// ListCollections and Stats (what probes and the router ask for) run on the lane of cheap calls:
// answered while the executor is held (before: queued behind it until their deadline).
TEST_F(IndexOverloadTest, ListCollectionsAndStatsAnswerWhileTheExecutorIsBusy) {
  ASSERT_NO_FATAL_FAILURE(BlockExecutor());
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(Clock::now() + std::chrono::seconds(20));
    v1::ListCollectionsResponse resp;
    const grpc::Status st = stub_->ListCollections(&ctx, v1::ListCollectionsRequest(), &resp);
    ASSERT_TRUE(st.ok()) << st.error_message();
    ASSERT_EQ(resp.collections_size(), 1);
  }
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(Clock::now() + std::chrono::seconds(20));
    v1::StatsRequest req;
    req.set_collection("kb");
    v1::StatsResponse resp;
    const grpc::Status st = stub_->Stats(&ctx, req, &resp);
    ASSERT_TRUE(st.ok()) << st.error_message();
    EXPECT_EQ(resp.info().spec().name(), "kb");
  }
  EXPECT_EQ(server_->executor().queued(), 0) << "a cheap call waited on the main executor";
}

// Under a flood of unary calls each was queued whatever its deadline and, behind seconds-long
// work, ended DEADLINE_EXCEEDED when its caller gave up. Now a call whose deadline comes before
// the queue's expected wait is refused RESOURCE_EXHAUSTED at once, naming the flag, and a call
// with a deadline long enough is admitted and answered; cheap calls still answer. Bounds: the
// running task has run at least 500 ms and eight tasks are queued ahead on one thread: at least 4 s
// of expected wait against a 2 s deadline (before: DEADLINE_EXCEEDED after 2 s).
TEST_F(IndexOverloadTest, UnaryCallThatWouldTimeOutQueuedIsRefusedAtOnce) {
  ASSERT_NO_FATAL_FAILURE(BlockExecutor());
  for (int i = 0; i < 8; ++i) ASSERT_TRUE(server_->executor().Submit([] {}).ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  v1::GetDocumentsRequest req;
  req.set_collection("kb");
  req.add_ids("x");
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(Clock::now() + std::chrono::seconds(2));
    v1::GetDocumentsResponse resp;
    const grpc::Status st = stub_->GetDocuments(&ctx, req, &resp);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << st.error_message();
    EXPECT_NE(st.error_message().find("--executor-threads"), std::string::npos)
        << st.error_message();
  }
  EXPECT_EQ(server_->executor().queued(), 8) << "the refused call was queued";
  {
    // The lane of cheap calls is not subject to the main queue's wait, even with a short deadline.
    grpc::ClientContext ctx;
    ctx.set_deadline(Clock::now() + std::chrono::seconds(2));
    v1::ListCollectionsResponse resp;
    const grpc::Status st = stub_->ListCollections(&ctx, v1::ListCollectionsRequest(), &resp);
    EXPECT_TRUE(st.ok()) << st.error_message();
  }

  grpc::ClientContext ctx;
  ctx.set_deadline(Clock::now() + std::chrono::seconds(60));
  v1::GetDocumentsResponse resp;
  auto admitted =
      std::async(std::launch::async, [&] { return stub_->GetDocuments(&ctx, req, &resp); });
  ASSERT_TRUE(WaitQueued(9));
  ReleaseExecutor();
  const grpc::Status st = admitted.get();
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_EQ(resp.missing_ids_size(), 1);
}

// A stream message queued behind slow work waited until its caller's deadline: the Upsert ended
// DEADLINE_EXCEEDED (under a flood, every caller of the router's Ingest streams). Now the message
// is shed while queued as soon as the wait ahead of it passes the deadline: RESOURCE_EXHAUSTED
// before it, naming the flag, and nothing applied. Bounds: one task queued ahead on one thread,
// behind a task whose age t grows from ~0: shed once t > 4 s - t, about 2 s in.
TEST_F(IndexOverloadTest, UpsertMessageQueuedPastItsDeadlineIsShedBeforeIt) {
  ASSERT_NO_FATAL_FAILURE(BlockExecutor());
  ASSERT_TRUE(server_->executor().Submit([] {}).ok());
  v1::UpsertRequest msg;
  auto* d = msg.add_documents();
  d->set_id("late");
  d->set_text("a document queued past its caller's deadline");
  d->mutable_vector()->Resize(16, 0.25f);
  v1::UpsertResponse resp;
  const grpc::Status st = UpsertOneMessage(msg, &resp, std::chrono::seconds(4));
  EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << st.error_message();
  EXPECT_NE(st.error_message().find("--executor-threads"), std::string::npos) << st.error_message();
  ReleaseExecutor();
  ASSERT_TRUE(server_->executor().WaitIdle(60));
  v1::GetDocumentsRequest req;
  req.set_collection("kb");
  req.add_ids("late");
  grpc::ClientContext ctx;
  v1::GetDocumentsResponse got;
  const grpc::Status get = stub_->GetDocuments(&ctx, req, &got);
  ASSERT_TRUE(get.ok()) << get.error_message();
  EXPECT_EQ(got.missing_ids_size(), 1) << "the shed message was applied";
}

// A GetDocuments call whose caller does not read the answer: it asks only for the initial
// metadata (no Finish), on a channel with a 16 KiB window that does not grow (no bandwidth
// probing), so an answer over 16 KiB stays in the server until Finish.
class UnreadAnswer {
 public:
  UnreadAnswer(const std::string& address, const v1::GetDocumentsRequest& req) {
    ctx_.set_deadline(Clock::now() + std::chrono::seconds(60));
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
    args.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 16 * 1024);
    channel_ = grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
    connected_ = channel_->WaitForConnected(Clock::now() + std::chrono::seconds(60));
    stub_ = v1::IndexService::NewStub(channel_);
    call_ = stub_->PrepareAsyncGetDocuments(&ctx_, req, &cq_);
    call_->StartCall();
    call_->ReadInitialMetadata(kMetadataTag);  // sends the request
  }
  ~UnreadAnswer() {
    cq_.Shutdown();
    void* tag = nullptr;
    bool ok = false;
    while (cq_.Next(&tag, &ok)) {
    }
  }
  bool connected() const { return connected_; }
  // Runs the caller's transport (polls its queue) for up to `ms` or until `done()`; any event
  // but the initial metadata is a failure (the answer was not asked for).
  bool PollUntil(int ms, const std::function<bool()>& done) {
    void* tag = nullptr;
    bool ok = false;
    for (int i = 0; i < ms / 5; ++i) {
      if (cq_.AsyncNext(&tag, &ok, Clock::now() + std::chrono::milliseconds(5)) ==
              grpc::CompletionQueue::GOT_EVENT &&
          tag != kMetadataTag) {
        ADD_FAILURE() << "an event before the answer was asked for";
      }
      if (done()) return true;
    }
    return false;
  }
  // Reads the answer.
  grpc::Status Finish(v1::GetDocumentsResponse* resp) {
    grpc::Status st;
    call_->Finish(resp, &st, kFinishTag);
    void* tag = nullptr;
    bool ok = false;
    while (cq_.Next(&tag, &ok) && tag != kFinishTag) {
    }
    return st;
  }

 private:
  static inline void* const kMetadataTag = reinterpret_cast<void*>(2);
  static inline void* const kFinishTag = reinterpret_cast<void*>(1);
  grpc::CompletionQueue cq_;
  grpc::ClientContext ctx_;
  std::shared_ptr<grpc::Channel> channel_;
  bool connected_ = false;
  std::unique_ptr<v1::IndexService::Stub> stub_;
  std::unique_ptr<grpc::ClientAsyncResponseReader<v1::GetDocumentsResponse>> call_;
};

// A big answer to a caller that does not read it stays in the server (the HTTP/2 window of the
// caller is not opened) long after the task that made it returned: under a flood of such calls
// the budget was empty while the answers filled the memory. The call holds its request and
// answer until it is done, and gives them back then.
TEST_F(IndexOverloadTest, AnAnswerWaitingForItsReaderHoldsItsBytesUntilSent) {
  constexpr int kTextBytes = 600 * 1024;
  {
    v1::UpsertRequest msg;
    auto* d = msg.add_documents();
    d->set_id("big");
    d->set_text(std::string(kTextBytes, 'x'));
    d->mutable_vector()->Resize(16, 0.25f);
    v1::UpsertResponse resp;
    const grpc::Status st = UpsertOneMessage(msg, &resp);
    ASSERT_TRUE(st.ok()) << st.error_message();
  }
  ASSERT_TRUE(WaitBudgetEmpty());

  v1::GetDocumentsRequest req;
  req.set_collection("kb");
  req.add_ids("big");
  UnreadAnswer call(server_->address(), req);
  ASSERT_TRUE(call.connected());
  auto held = [&] { return server_->executor().bytes_held() >= kTextBytes; };
  EXPECT_TRUE(call.PollUntil(60000, held)) << "held: " << server_->executor().bytes_held();
  call.PollUntil(200, [] { return false; });
  EXPECT_GE(server_->executor().bytes_held(), kTextBytes) << "given back before it was sent";
  EXPECT_EQ(server_->executor().queued(), 0);

  v1::GetDocumentsResponse resp;
  const grpc::Status st = call.Finish(&resp);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_EQ(resp.documents_size(), 1);
  EXPECT_EQ(resp.documents(0).text().size(), static_cast<size_t>(kTextBytes));
  EXPECT_TRUE(WaitBudgetEmpty()) << "held: " << server_->executor().bytes_held();
}

// An answer of many small documents holds several times its wire size in memory (each document,
// string and repeated field is an allocation of its own); the budget counted wire bytes, so a
// flood of such calls (kvr's 200,000-item Attends: ~5x) held far more than it admitted. The call
// holds what the answer really takes: the message and its serialized copy.
TEST_F(IndexOverloadTest, AnAnswerOfManySmallDocumentsHoldsItsMemoryNotItsWireSize) {
  constexpr int kDocs = 4000;
  v1::GetDocumentsRequest req;
  req.set_collection("kb");
  {
    v1::UpsertRequest msg;
    for (int i = 0; i < kDocs; ++i) {
      auto* d = msg.add_documents();
      d->set_id("d" + std::to_string(i));
      d->set_text("w" + std::to_string(i));
      d->set_metadata_json(R"({"k": 1})");
      d->mutable_vector()->Resize(16, 0.25f);
      req.add_ids(d->id());
    }
    v1::UpsertResponse resp;
    const grpc::Status st = UpsertOneMessage(msg, &resp);
    ASSERT_TRUE(st.ok()) << st.error_message();
    ASSERT_EQ(resp.upserted(), kDocs);
  }
  ASSERT_TRUE(WaitBudgetEmpty());

  UnreadAnswer call(server_->address(), req);
  ASSERT_TRUE(call.connected());
  int64_t peak = 0;
  call.PollUntil(3000, [&] {
    peak = std::max(peak, server_->executor().bytes_held());
    return false;
  });
  v1::GetDocumentsResponse resp;
  const grpc::Status st = call.Finish(&resp);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_EQ(resp.documents_size(), kDocs);
  const auto wire = static_cast<int64_t>(req.ByteSizeLong() + resp.ByteSizeLong());
  ASSERT_GT(static_cast<int64_t>(resp.ByteSizeLong()), 64 * 1024) << "sent without waiting";
  std::printf("wire %lld bytes (request + answer), held at most %lld (%.2fx)\n",
              static_cast<long long>(wire), static_cast<long long>(peak),
              static_cast<double>(peak) / static_cast<double>(wire));
  // Counted in wire bytes the peak was `wire` (its serialized copy uncounted: 2 * wire with it);
  // the answer object alone holds about twice its wire size.
  EXPECT_GE(peak, 3 * wire) << "wire " << wire;
  EXPECT_LE(peak, 12 * wire) << "wire " << wire;
  EXPECT_TRUE(WaitBudgetEmpty()) << "held: " << server_->executor().bytes_held();
}

}  // namespace
}  // namespace ragserve::collection
