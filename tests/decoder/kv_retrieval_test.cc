// RetrievalAttention in the decode worker, on the real binaries on loopback: ragserve-decoder with
// --kv-retrieval local (in-process store) and remote (a real ragserve-kvr). A long-prompt greedy
// Generate through the remote store equals the local store's output (same index settings); with
// top_k covering every key both equal the plain KV cache; the store's sequences are released
// after each request and after a client cancel; an unreachable or lost store fails that request
// with a clear status and the worker keeps serving.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <list>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "ragserve/v1/decoder.grpc.pb.h"
#include "ragserve/v1/kvr.grpc.pb.h"
#include "services/common/client.h"
#include "services/engine/tiny_model.h"
#include "services/engine/tokenizer.h"
#include "tests/support/process.h"

namespace ragserve {
namespace {

struct Generated {
  grpc::Status status;
  std::vector<int32_t> ids;
  v1::GenerateStats stats;
};

// A started service binary and its port.
struct Service {
  std::unique_ptr<testing::Process> proc = std::make_unique<testing::Process>();
  int port = 0;
  std::string log;
  std::string addr() const { return "127.0.0.1:" + std::to_string(port); }
};

class KvRetrievalDecoderTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(testing::MakeTempDir("decoder-kvr-test"));
    std::string error;
    ASSERT_FALSE(testing::MakeTinyModel(*dir_, &error).empty()) << error;
    // A long prompt: corpus passages until ~1500 tokens.
    auto texts = engine::ReadCorpusTexts(testing::SourceDir() + "/data/corpus/passages.jsonl");
    ASSERT_TRUE(texts.ok()) << texts.status().ToString();
    auto tok = engine::Tokenizer::FromFile(*dir_ + "/model/tokenizer.json");
    ASSERT_TRUE(tok.ok());
    prompt_ = new std::string();
    for (const auto& t : *texts) {
      if ((*tok)->Encode(*prompt_, true).size() >= 1500) break;
      *prompt_ += t + "\n";
    }
    prompt_tokens_ = static_cast<int>((*tok)->Encode(*prompt_, true).size());
    ASSERT_GE(prompt_tokens_, 1500);
  }
  static void TearDownTestSuite() {
    delete dir_;
    delete prompt_;
  }

  void TearDown() override {
    for (Service& s : services_) {
      s.proc->Signal(SIGTERM);
      int code = -1;
      EXPECT_TRUE(s.proc->Wait(15, &code));
      EXPECT_EQ(code, 0) << testing::ReadFileOrEmpty(s.log);
    }
  }

  // Starts a binary; *out points at it (owned by the fixture, stopped in TearDown).
  void StartBinary(const std::string& name, std::vector<std::string> args, Service** out) {
    Service* s = &services_.emplace_back();
    *out = s;
    const std::string tag = name + "-" + std::to_string(++starts_);
    const std::string ready = *dir_ + "/ready-" + tag + ".json";
    s->log = *dir_ + "/" + tag + ".log";
    std::vector<std::string> all = {"--port", "0", "--metrics-port", "0", "--ready-file", ready};
    all.insert(all.end(), args.begin(), args.end());
    ASSERT_TRUE(
        s->proc->Start(testing::BinPath(name), all, s->log, {{"OMP_WAIT_POLICY", "PASSIVE"}}));
    int mport = 0;
    ASSERT_TRUE(testing::WaitForReadyFile(ready, 60, &s->port, &mport))
        << testing::ReadFileOrEmpty(s->log);
  }

  // A decoder with the index settings every test shares; `extra` adds or overrides flags. The
  // index is built on the loop thread (--kvr-build-threads 0): with a background build these
  // short answers would end before the switch to the store, decoding exactly over the local
  // cache, and the tests here are about the store's path (the background build is tested in
  // async_index_build_test.cc).
  void StartDecoder(const std::vector<std::string>& extra, Service** s) {
    std::vector<std::string> args = {"--model",
                                     *dir_ + "/model",
                                     "--kvr-build-threads",
                                     "0",
                                     "--kv-retrieval-min-tokens",
                                     "1000",
                                     "--kvr-sink-tokens",
                                     "16",
                                     "--kvr-window-tokens",
                                     "64",
                                     "--kvr-top-k",
                                     "32",
                                     "--kvr-index-kind",
                                     "attention_aware"};
    // extra is "--flag value" pairs: a flag already in args gets the new value.
    for (size_t i = 0; i + 1 < extra.size(); i += 2) {
      auto it = std::find(args.begin(), args.end(), extra[i]);
      if (it != args.end()) {
        *(it + 1) = extra[i + 1];
      } else {
        args.push_back(extra[i]);
        args.push_back(extra[i + 1]);
      }
    }
    StartBinary("ragserve-decoder", args, s);
  }

  void StartKvr(Service** s) { StartBinary("ragserve-kvr", {}, s); }

  static v1::GenerateRequest Raw(const std::string& prompt, int max_tokens) {
    v1::GenerateRequest req;
    req.set_prompt_override(prompt);
    req.mutable_sampling()->set_max_tokens(max_tokens);
    req.mutable_sampling()->set_ignore_eos(true);
    return req;
  }

  static Generated Run(const Service& s, const v1::GenerateRequest& req) {
    auto ch = MakeChannel(s.addr());
    EXPECT_TRUE(ch.ok());
    auto stub = v1::DecoderService::NewStub(*ch);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
    Generated g;
    auto reader = stub->Generate(&ctx, req);
    v1::GenerateEvent ev;
    while (reader->Read(&ev)) {
      if (ev.has_delta()) {
        g.ids.insert(g.ids.end(), ev.delta().token_ids().begin(), ev.delta().token_ids().end());
      } else if (ev.has_stats()) {
        g.stats = ev.stats();
      }
    }
    g.status = reader->Finish();
    return g;
  }

  static v1::KvrStatsResponse KvrStats(const Service& kvr) {
    auto ch = MakeChannel(kvr.addr());
    EXPECT_TRUE(ch.ok());
    auto stub = v1::KvRetrievalService::NewStub(*ch);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::KvrStatsResponse resp;
    EXPECT_TRUE(stub->Stats(&ctx, v1::KvrStatsRequest{}, &resp).ok());
    return resp;
  }

  // Polls until the store holds no sequence (a release may land just after the client's
  // stream ends); returns the last count.
  static int64_t WaitForNoSequences(const Service& kvr) {
    int64_t n = -1;
    for (int i = 0; i < 200; ++i) {
      n = KvrStats(kvr).sequences();
      if (n == 0) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return n;
  }

  static std::string* dir_;
  static std::string* prompt_;
  static int prompt_tokens_;
  static int starts_;
  std::list<Service> services_;
};

std::string* KvRetrievalDecoderTest::dir_ = nullptr;
std::string* KvRetrievalDecoderTest::prompt_ = nullptr;
int KvRetrievalDecoderTest::prompt_tokens_ = 0;
int KvRetrievalDecoderTest::starts_ = 0;

TEST_F(KvRetrievalDecoderTest, RemoteRetrievalGreedyOutputEqualsLocalRetrieval) {
  Service *kvr, *local, *remote, *full;
  ASSERT_NO_FATAL_FAILURE(StartKvr(&kvr));
  ASSERT_NO_FATAL_FAILURE(StartDecoder({"--kv-retrieval", "local"}, &local));
  ASSERT_NO_FATAL_FAILURE(
      StartDecoder({"--kv-retrieval", "remote", "--kvr-addr", kvr->addr()}, &remote));
  ASSERT_NO_FATAL_FAILURE(StartDecoder({"--kv-retrieval", "off"}, &full));
  const int n = 32;
  Generated a = Run(*local, Raw(*prompt_, n));
  ASSERT_TRUE(a.status.ok()) << a.status.error_message();
  Generated b = Run(*remote, Raw(*prompt_, n));
  ASSERT_TRUE(b.status.ok()) << b.status.error_message();
  Generated f = Run(*full, Raw(*prompt_, n));
  ASSERT_TRUE(f.status.ok()) << f.status.error_message();
  ASSERT_EQ(a.ids.size(), static_cast<size_t>(n));
  EXPECT_EQ(b.ids, a.ids);
  EXPECT_EQ(b.stats.prompt_tokens(), prompt_tokens_);
  int agree = 0;
  for (int i = 0; i < n; ++i) agree += a.ids[i] == f.ids[i];
  int prefix = 0;
  while (prefix < n && a.ids[prefix] == f.ids[prefix]) ++prefix;
  std::printf(
      "[%d-token prompt, top_k 32 of ~%d middle keys] retrieval vs full attention: %d/%d "
      "greedy tokens equal, first %d identical\n",
      prompt_tokens_, prompt_tokens_ - 80, agree, n, prefix);
  // The remote store really served the request (one Attend per layer and decode step) and
  // released it afterwards.
  v1::KvrStatsResponse st = KvrStats(*kvr);
  EXPECT_GE(st.attend_calls(), int64_t{4} * (n - 1));
  EXPECT_EQ(WaitForNoSequences(*kvr), 0);
  EXPECT_EQ(KvrStats(*kvr).bytes_used(), 0);
  // A short prompt stays on the worker's own cache (below --kv-retrieval-min-tokens).
  const int64_t calls = KvrStats(*kvr).attend_calls();
  Generated s = Run(*remote, Raw("A short question about rivers", 8));
  ASSERT_TRUE(s.status.ok()) << s.status.error_message();
  EXPECT_EQ(s.ids, Run(*full, Raw("A short question about rivers", 8)).ids);
  EXPECT_EQ(KvrStats(*kvr).attend_calls(), calls);
}

TEST_F(KvRetrievalDecoderTest, TopKCoveringEveryKeyEqualsThePlainKvCache) {
  Service *kvr, *remote, *full;
  ASSERT_NO_FATAL_FAILURE(StartKvr(&kvr));
  ASSERT_NO_FATAL_FAILURE(StartDecoder(
      {"--kv-retrieval", "remote", "--kvr-addr", kvr->addr(), "--kvr-top-k", "100000"}, &remote));
  ASSERT_NO_FATAL_FAILURE(StartDecoder({"--kv-retrieval", "off"}, &full));
  Generated b = Run(*remote, Raw(*prompt_, 24));
  ASSERT_TRUE(b.status.ok()) << b.status.error_message();
  Generated f = Run(*full, Raw(*prompt_, 24));
  ASSERT_TRUE(f.status.ok()) << f.status.error_message();
  EXPECT_EQ(b.ids, f.ids);
  EXPECT_GT(KvrStats(*kvr).attend_calls(), 0);
  EXPECT_EQ(WaitForNoSequences(*kvr), 0);
}

// A worker that fails over mid-answer hands the tokens it sent to the next one
// (resume_token_ids). Under retrieval attention those tokens' K/V were computed with the
// approximate attention of decode steps; a prefill of prompt + resume would compute them exactly
// and the answer would go on differently (the chaos run's "answer differs" after a failover
// during kill:kvr). The next worker replays them as decode steps, so the answer continues as the
// uninterrupted one.
TEST_F(KvRetrievalDecoderTest, AResumedAnswerContinuesAsTheUninterruptedOne) {
  Service* dec;
  ASSERT_NO_FATAL_FAILURE(StartDecoder({"--kv-retrieval", "local"}, &dec));
  const int n = 24;
  const Generated full = Run(*dec, Raw(*prompt_, n));
  ASSERT_TRUE(full.status.ok()) << full.status.error_message();
  ASSERT_EQ(full.ids.size(), static_cast<size_t>(n));
  for (int k : {1, 9, 23}) {
    v1::GenerateRequest req = Raw(*prompt_, n);
    req.mutable_resume_token_ids()->Assign(full.ids.begin(), full.ids.begin() + k);
    const Generated rest = Run(*dec, req);
    ASSERT_TRUE(rest.status.ok()) << rest.status.error_message();
    EXPECT_EQ(rest.ids, std::vector<int32_t>(full.ids.begin() + k, full.ids.end()))
        << "resumed after " << k << " tokens";
    EXPECT_EQ(rest.stats.prompt_tokens(), prompt_tokens_ + k);
  }
}

TEST_F(KvRetrievalDecoderTest, ClientCancelReleasesTheStoreSequence) {
  Service *kvr, *remote;
  ASSERT_NO_FATAL_FAILURE(StartKvr(&kvr));
  ASSERT_NO_FATAL_FAILURE(
      StartDecoder({"--kv-retrieval", "remote", "--kvr-addr", kvr->addr()}, &remote));
  auto ch = MakeChannel(remote->addr());
  ASSERT_TRUE(ch.ok());
  auto stub = v1::DecoderService::NewStub(*ch);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
  auto reader = stub->Generate(&ctx, Raw(*prompt_, 2000));
  v1::GenerateEvent ev;
  ASSERT_TRUE(reader->Read(&ev));  // decoding through the store
  EXPECT_EQ(KvrStats(*kvr).sequences(), 1);
  ctx.TryCancel();
  while (reader->Read(&ev)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_EQ(WaitForNoSequences(*kvr), 0);
  EXPECT_EQ(KvrStats(*kvr).bytes_used(), 0);
  // The worker goes on: the next long request completes.
  Generated g = Run(*remote, Raw(*prompt_, 4));
  EXPECT_TRUE(g.status.ok()) << g.status.error_message();
  EXPECT_EQ(WaitForNoSequences(*kvr), 0);
}

TEST_F(KvRetrievalDecoderTest, AnUnreachableStoreFailsTheRequestNotTheWorker) {
  Service* remote;
  const std::string dead = "127.0.0.1:" + std::to_string(testing::FreePort());
  ASSERT_NO_FATAL_FAILURE(StartDecoder(
      {"--kv-retrieval", "remote", "--kvr-addr", dead, "--kvr-timeout-ms", "2000"}, &remote));
  Generated g = Run(*remote, Raw(*prompt_, 4));
  EXPECT_EQ(g.status.error_code(), grpc::StatusCode::UNAVAILABLE) << g.status.error_message();
  EXPECT_NE(g.status.error_message().find("kv retrieval"), std::string::npos)
      << g.status.error_message();
  // Short prompts do not need the store.
  Generated s = Run(*remote, Raw("A short question", 4));
  EXPECT_TRUE(s.status.ok()) << s.status.error_message();
  EXPECT_EQ(s.ids.size(), 4u);
}

TEST_F(KvRetrievalDecoderTest, AStoreLostMidAnswerFailsThatRequestOnly) {
  Service *kvr, *remote;
  ASSERT_NO_FATAL_FAILURE(StartKvr(&kvr));
  ASSERT_NO_FATAL_FAILURE(StartDecoder(
      {"--kv-retrieval", "remote", "--kvr-addr", kvr->addr(), "--kvr-timeout-ms", "5000"},
      &remote));
  auto ch = MakeChannel(remote->addr());
  ASSERT_TRUE(ch.ok());
  auto stub = v1::DecoderService::NewStub(*ch);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
  auto reader = stub->Generate(&ctx, Raw(*prompt_, 2000));
  v1::GenerateEvent ev;
  ASSERT_TRUE(reader->Read(&ev));  // decoding through the store
  kvr->proc->Signal(SIGKILL);
  int code = 0;
  ASSERT_TRUE(kvr->proc->Wait(10, &code));
  while (reader->Read(&ev)) {
  }
  const grpc::Status st = reader->Finish();
  EXPECT_TRUE(st.error_code() == grpc::StatusCode::UNAVAILABLE ||
              st.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED)
      << st.error_code() << " " << st.error_message();
  EXPECT_NE(st.error_message().find("kv retrieval"), std::string::npos) << st.error_message();
  // The worker is alive and serves what does not need the store.
  Generated s = Run(*remote, Raw("A short question", 4));
  EXPECT_TRUE(s.status.ok()) << s.status.error_message();
  EXPECT_EQ(s.ids.size(), 4u);
  services_.remove_if([kvr](const Service& x) { return &x == kvr; });  // already gone
}

TEST_F(KvRetrievalDecoderTest, AStalledStoreFailsItsSequencesFastWithUnavailable) {
  // The store stops answering (SIGSTOP: connections stay open, calls hang) while three
  // sequences decode through it. With the default deadline and the breaker they fail within a
  // few seconds with UNAVAILABLE (so a router fails over), not one 10 s deadline per layer, step
  // and sequence on the worker's loop thread; the worker keeps serving other requests.
  Service *kvr, *remote;
  ASSERT_NO_FATAL_FAILURE(StartKvr(&kvr));
  ASSERT_NO_FATAL_FAILURE(
      StartDecoder({"--kv-retrieval", "remote", "--kvr-addr", kvr->addr()}, &remote));
  auto ch = MakeChannel(remote->addr());
  ASSERT_TRUE(ch.ok());
  auto stub = v1::DecoderService::NewStub(*ch);
  constexpr int kSeqs = 3;
  std::vector<std::unique_ptr<grpc::ClientContext>> ctxs;
  std::vector<std::unique_ptr<grpc::ClientReader<v1::GenerateEvent>>> readers;
  v1::GenerateEvent ev;
  for (int i = 0; i < kSeqs; ++i) {
    ctxs.push_back(std::make_unique<grpc::ClientContext>());
    ctxs.back()->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(180));
    readers.push_back(stub->Generate(ctxs.back().get(), Raw(*prompt_, 2000)));
  }
  for (auto& r : readers) ASSERT_TRUE(r->Read(&ev));  // all three decode through the store
  ASSERT_TRUE(kvr->proc->Stop());
  const auto t0 = std::chrono::steady_clock::now();
  for (auto& r : readers) {
    while (r->Read(&ev)) {
    }
    const grpc::Status st = r->Finish();
    EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << st.error_message();
    EXPECT_NE(st.error_message().find("kv retrieval"), std::string::npos) << st.error_message();
  }
  const double waited =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  // Not a timing test: the bound is far above the default deadline (3 s) x breaker (2 calls) and
  // far below what the stalled sequences took before the deadline and breaker (60 s and then
  // DEADLINE_EXCEEDED), so load on the test machine cannot make it fail.
  EXPECT_LT(waited, 40.0) << "a stalled store held the worker's sequences for " << waited << " s";
  Generated s = Run(*remote, Raw("A short question", 4));
  EXPECT_TRUE(s.status.ok()) << s.status.error_message();
  kvr->proc->Signal(SIGCONT);
}

TEST_F(KvRetrievalDecoderTest, BadFlagsStopTheWorkerAtStartup) {
  testing::Process p;
  const std::string log = *dir_ + "/bad-flags.log";
  ASSERT_TRUE(p.Start(testing::BinPath("ragserve-decoder"),
                      {"--port", "0", "--metrics-port", "0", "--model", *dir_ + "/model",
                       "--kv-retrieval", "remote"},
                      log));
  int code = 0;
  ASSERT_TRUE(p.Wait(30, &code));
  EXPECT_NE(code, 0);
  EXPECT_NE(testing::ReadFileOrEmpty(log).find("--kvr-addr"), std::string::npos)
      << testing::ReadFileOrEmpty(log);
}

}  // namespace
}  // namespace ragserve
