// The index service in process (ServiceServer + IndexGrpcService, one executor thread held by a
// test task) under the overload rules of docs/RELIABILITY.md "Floods": an Upsert message queued
// for a caller that has left is not applied, the cheap calls (ListCollections, Stats) are
// answered while the executor is busy, an Upsert stream is refused before it is read when
// the request memory budget is full, and a unary call whose deadline comes before the queue's
// expected wait is refused at once, and an answer waiting for a slow reader holds its bytes of
// the budget until it is sent.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <chrono>
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

// A big answer to a caller that does not read it stays in the server (the HTTP/2 window of the
// caller is not opened) long after the task that made it returned: under a flood of such calls
// the budget was empty while the answers filled the memory. The call holds its request and
// answer until it is done, and gives them back then. The caller here starts the call and does
// not ask for the answer (no Finish: its transport grants no window for it).
TEST_F(IndexOverloadTest, AnAnswerWaitingForItsReaderHoldsItsBytesUntilSent) {
  constexpr int kTextBytes = 600 * 1024;
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(Clock::now() + std::chrono::seconds(60));
    v1::UpsertResponse resp;
    auto writer = stub_->Upsert(&ctx, &resp);
    v1::UpsertRequest msg;
    msg.set_collection("kb");
    auto* d = msg.add_documents();
    d->set_id("big");
    d->set_text(std::string(kTextBytes, 'x'));
    d->mutable_vector()->Resize(16, 0.25f);
    writer->Write(msg);
    writer->WritesDone();
    const grpc::Status st = writer->Finish();
    ASSERT_TRUE(st.ok()) << st.error_message();
  }
  ASSERT_TRUE(WaitBudgetEmpty());

  grpc::CompletionQueue cq;
  grpc::ClientContext ctx;
  ctx.set_deadline(Clock::now() + std::chrono::seconds(60));
  v1::GetDocumentsRequest req;
  req.set_collection("kb");
  req.add_ids("big");
  // A small window that does not grow (no bandwidth probing): the answer cannot all be sent.
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  args.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 16 * 1024);
  auto channel =
      grpc::CreateCustomChannel(server_->address(), grpc::InsecureChannelCredentials(), args);
  ASSERT_TRUE(channel->WaitForConnected(Clock::now() + std::chrono::seconds(60)));
  auto reader = v1::IndexService::NewStub(channel);
  auto call = reader->PrepareAsyncGetDocuments(&ctx, req, &cq);
  call->StartCall();
  call->ReadInitialMetadata(reinterpret_cast<void*>(2));  // sends the request (Finish not yet)
  // The caller's transport runs while its queue is polled (only the initial metadata is asked
  // for).
  void* tag = nullptr;
  bool ok = false;
  auto poll = [&](int ms) {
    for (int i = 0; i < ms / 5; ++i) {
      if (cq.AsyncNext(&tag, &ok, Clock::now() + std::chrono::milliseconds(5)) ==
              grpc::CompletionQueue::GOT_EVENT &&
          tag != reinterpret_cast<void*>(2)) {
        ADD_FAILURE() << "an event before the answer was asked for";
      }
      if (server_->executor().bytes_held() >= kTextBytes) return true;
    }
    return false;
  };
  EXPECT_TRUE(poll(60000)) << "held: " << server_->executor().bytes_held();
  poll(200);
  EXPECT_GE(server_->executor().bytes_held(), kTextBytes) << "given back before it was sent";
  EXPECT_EQ(server_->executor().queued(), 0);

  v1::GetDocumentsResponse resp;
  grpc::Status st;
  call->Finish(&resp, &st, reinterpret_cast<void*>(1));
  ASSERT_TRUE(cq.Next(&tag, &ok));
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_EQ(resp.documents_size(), 1);
  EXPECT_EQ(resp.documents(0).text().size(), static_cast<size_t>(kTextBytes));
  EXPECT_TRUE(WaitBudgetEmpty()) << "held: " << server_->executor().bytes_held();
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
}

}  // namespace
}  // namespace ragserve::collection
