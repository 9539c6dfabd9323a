// The real ragserve-decoder binary on loopback with a tiny model made by make-tiny-model:
// streamed generation equals an in-process greedy reference, continuous batching does not change
// any sequence's tokens, failover resume continues exactly, cancel frees the slot, bad input and
// overload get clear errors.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "ragserve/v1/decoder.grpc.pb.h"
#include "services/common/client.h"
#include "services/engine/model.h"
#include "services/engine/sampling.h"
#include "services/engine/tokenizer.h"
#include "services/engine/unicode.h"
#include "tests/support/process.h"

namespace ragserve {
namespace {

struct Generated {
  grpc::Status status;
  std::vector<int32_t> ids;
  std::string text;
  v1::GenerateStats stats;
};

class DecoderServiceTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(testing::MakeTempDir("decoder-test"));
    std::string error;
    ASSERT_FALSE(testing::MakeTinyModel(*dir_, &error).empty()) << error;
  }
  static void TearDownTestSuite() { delete dir_; }

  void Start(const std::vector<std::string>& extra = {}) {
    const std::string ready = *dir_ + "/ready-" + std::to_string(++starts_) + ".json";
    std::vector<std::string> args = {"--port",       "0",   "--metrics-port", "0",
                                     "--ready-file", ready, "--model",        *dir_ + "/model"};
    args.insert(args.end(), extra.begin(), extra.end());
    ASSERT_TRUE(proc_.Start(testing::BinPath("ragserve-decoder"), args, *dir_ + "/log.txt"));
    int port = 0, mport = 0;
    ASSERT_TRUE(testing::WaitForReadyFile(ready, 60, &port, &mport))
        << testing::ReadFileOrEmpty(*dir_ + "/log.txt");
    auto ch = MakeChannel("127.0.0.1:" + std::to_string(port));
    ASSERT_TRUE(ch.ok());
    stub_ = v1::DecoderService::NewStub(*ch);
  }

  void TearDown() override {
    proc_.Signal(SIGTERM);
    int code = -1;
    EXPECT_TRUE(proc_.Wait(10, &code));
    EXPECT_EQ(code, 0) << testing::ReadFileOrEmpty(*dir_ + "/log.txt");
  }

  static v1::GenerateRequest Raw(const std::string& prompt, int max_tokens) {
    v1::GenerateRequest req;
    req.set_prompt_override(prompt);
    req.mutable_sampling()->set_max_tokens(max_tokens);
    req.mutable_sampling()->set_ignore_eos(true);
    return req;
  }

  Generated Run(const v1::GenerateRequest& req, grpc::ClientContext* ctx = nullptr) {
    grpc::ClientContext local;
    if (ctx == nullptr) ctx = &local;
    ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    Generated g;
    auto reader = stub_->Generate(ctx, req);
    v1::GenerateEvent ev;
    while (reader->Read(&ev)) {
      if (ev.has_delta()) {
        g.ids.insert(g.ids.end(), ev.delta().token_ids().begin(), ev.delta().token_ids().end());
        g.text += ev.delta().text();
      } else if (ev.has_stats()) {
        g.stats = ev.stats();
      }
    }
    g.status = reader->Finish();
    return g;
  }

  // Greedy tokens from the engine directly: one sequence, plain KV cache, no batching.
  static std::vector<int32_t> Reference(const std::string& prompt, int n) {
    auto model = engine::Model::Load(*dir_ + "/model");
    EXPECT_TRUE(model.ok()) << model.status().ToString();
    auto tok = engine::Tokenizer::FromFile(*dir_ + "/model/tokenizer.json");
    EXPECT_TRUE(tok.ok());
    std::vector<int32_t> ids = (*tok)->Encode(prompt, /*add_bos=*/true);
    auto kv = (*model)->NewKvCache();
    std::vector<float> logits;
    EXPECT_TRUE((*model)->Prefill(ids, 0, kv.get(), 0, &logits).ok());
    std::vector<int32_t> out;
    for (int i = 0; i < n; ++i) {
      const int32_t t = engine::ArgMax(logits);
      out.push_back(t);
      const int32_t pos = static_cast<int32_t>(ids.size() + out.size() - 1);
      EXPECT_TRUE((*model)->Prefill(std::vector<int32_t>{t}, pos, kv.get(), 0, &logits).ok());
    }
    return out;
  }

  static std::string* dir_;
  static int starts_;
  testing::Process proc_;
  std::unique_ptr<v1::DecoderService::Stub> stub_;
};

std::string* DecoderServiceTest::dir_ = nullptr;
int DecoderServiceTest::starts_ = 0;

TEST_F(DecoderServiceTest, StreamedGreedyTokensEqualTheEngineReference) {
  ASSERT_NO_FATAL_FAILURE(Start());
  const std::string prompt = "The lighthouse on Varnholm Island is painted";
  Generated g = Run(Raw(prompt, 32));
  ASSERT_TRUE(g.status.ok()) << g.status.error_message();
  EXPECT_EQ(g.ids, Reference(prompt, 32));
  EXPECT_EQ(g.stats.generated_tokens(), 32);
  EXPECT_EQ(g.stats.finish_reason(), "length");
  EXPECT_GT(g.stats.prompt_tokens(), 3);
  EXPECT_GT(g.stats.timings().ttft_ms(), 0);
  // Same request again: the same tokens (greedy is deterministic).
  EXPECT_EQ(Run(Raw(prompt, 32)).ids, g.ids);
}

TEST_F(DecoderServiceTest, ContinuousBatchingKeepsEverySequenceExact) {
  // Small prefill chunks force prompts to be split and interleaved with other sequences' decode.
  ASSERT_NO_FATAL_FAILURE(Start({"--max-active", "4", "--prefill-chunk", "7"}));
  const std::vector<std::string> prompts = {
      "Question one about rivers and their lengths in kilometres",
      "A short prompt",
      "Tell me about the invention of the clockwork loom in the old city of Mereth",
      "Who",
      "Colours of lighthouses and the islands they stand on, listed",
      "Numbers: 1 2 3 4 5 6 7 8 9 10 11 12",
  };
  std::vector<Generated> results(prompts.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < prompts.size(); ++i) {
    threads.emplace_back([&, i] { results[i] = Run(Raw(prompts[i], 24)); });
  }
  for (auto& t : threads) t.join();
  for (size_t i = 0; i < prompts.size(); ++i) {
    ASSERT_TRUE(results[i].status.ok()) << results[i].status.error_message();
    EXPECT_EQ(results[i].ids, Reference(prompts[i], 24)) << "prompt " << i;
  }
}

TEST_F(DecoderServiceTest, ResumeContinuesExactlyAfterTheDeliveredTokens) {
  ASSERT_NO_FATAL_FAILURE(Start());
  const std::string prompt = "The Nawerk River flows";
  Generated full = Run(Raw(prompt, 20));
  ASSERT_TRUE(full.status.ok());
  ASSERT_EQ(full.ids.size(), 20u);
  v1::GenerateRequest req = Raw(prompt, 20);
  for (int i = 0; i < 8; ++i) req.add_resume_token_ids(full.ids[i]);
  Generated rest = Run(req);
  ASSERT_TRUE(rest.status.ok()) << rest.status.error_message();
  EXPECT_EQ(rest.ids, std::vector<int32_t>(full.ids.begin() + 8, full.ids.end()));
}

TEST_F(DecoderServiceTest, CancelEndsTheStreamAndFreesTheSlot) {
  ASSERT_NO_FATAL_FAILURE(Start({"--max-active", "1"}));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  v1::GenerateRequest req = Raw("Count forever", 4000);
  auto reader = stub_->Generate(&ctx, req);
  v1::GenerateEvent ev;
  ASSERT_TRUE(reader->Read(&ev));  // generation is running
  ctx.TryCancel();
  while (reader->Read(&ev)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  // The only slot is free again: a new request completes.
  Generated g = Run(Raw("After the cancel", 5));
  EXPECT_TRUE(g.status.ok()) << g.status.error_message();
  EXPECT_EQ(g.ids.size(), 5u);
}

TEST_F(DecoderServiceTest, BadRequestsAreInvalidArgument) {
  ASSERT_NO_FATAL_FAILURE(Start());
  EXPECT_EQ(Run(Raw("x", 0)).status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  v1::GenerateRequest empty;
  empty.mutable_sampling()->set_max_tokens(4);
  EXPECT_EQ(Run(empty).status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  v1::GenerateRequest huge = Raw(std::string(200000, 'a') + " b c d e", 4);
  Generated g = Run(huge);
  EXPECT_EQ(g.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(g.status.error_message().find("context"), std::string::npos)
      << g.status.error_message();
  v1::GenerateRequest bad_resume = Raw("x", 3);
  for (int i = 0; i < 3; ++i) bad_resume.add_resume_token_ids(5);
  EXPECT_EQ(Run(bad_resume).status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  v1::GenerateRequest bad_id = Raw("x", 3);
  bad_id.add_resume_token_ids(1 << 30);
  EXPECT_EQ(Run(bad_id).status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  v1::GenerateRequest bad_temp = Raw("x", 3);
  bad_temp.mutable_sampling()->set_temperature(-1);
  EXPECT_EQ(Run(bad_temp).status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  // The worker still serves well-formed requests.
  EXPECT_TRUE(Run(Raw("still fine", 3)).status.ok());
}

TEST_F(DecoderServiceTest, FullQueueIsResourceExhausted) {
  ASSERT_NO_FATAL_FAILURE(Start({"--max-active", "1", "--max-queue", "1"}));
  std::vector<grpc::ClientContext> ctxs(4);
  std::vector<std::unique_ptr<grpc::ClientReader<v1::GenerateEvent>>> readers;
  for (auto& c : ctxs) {
    c.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    readers.push_back(stub_->Generate(&c, Raw("A long answer please", 4000)));
    std::this_thread::sleep_for(std::chrono::milliseconds(100));  // keep arrival order
  }
  int exhausted = 0;
  for (size_t i = 0; i < readers.size(); ++i) {
    v1::GenerateEvent ev;
    if (i >= 2) {  // one running, one queued: the rest are refused
      while (readers[i]->Read(&ev)) {
      }
      if (readers[i]->Finish().error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) ++exhausted;
    }
  }
  EXPECT_EQ(exhausted, 2);
  for (size_t i = 0; i < 2; ++i) {
    ctxs[i].TryCancel();
    v1::GenerateEvent ev;
    while (readers[i]->Read(&ev)) {
    }
    readers[i]->Finish();
  }
}

// Under a flood, requests waited in the admission queue behind long generations until their
// deadline: DEADLINE_EXCEEDED after the whole wait. Now a queued request whose wait for a slot
// (requests ahead / slots x how long a request holds one, at least the running one's age so
// far) passes its deadline ends RESOURCE_EXHAUSTED before it, naming the flag; the request first
// in the queue waits (nothing is known to be ahead of it) and runs. Bounds: a 4,000-token answer
// holds the one slot for seconds; the third request has one queued ahead and a 2 s deadline, so
// it is dropped about 1 s in.
TEST_F(DecoderServiceTest, AQueuedRequestThatCannotStartBeforeItsDeadlineIsResourceExhausted) {
  ASSERT_NO_FATAL_FAILURE(Start({"--max-active", "1", "--max-queue", "8"}));
  grpc::ClientContext running;
  running.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  auto first = stub_->Generate(&running, Raw("A long answer please", 4000));
  v1::GenerateEvent ev;
  ASSERT_TRUE(first->Read(&ev));  // generating: the slot is taken
  grpc::ClientContext waiting;
  waiting.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  auto second = stub_->Generate(&waiting, Raw("Next in line", 3));
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // keep arrival order

  grpc::ClientContext late;
  late.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
  auto third = stub_->Generate(&late, Raw("Too late", 3));
  while (third->Read(&ev)) {
  }
  const grpc::Status st = third->Finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << st.error_message();
  EXPECT_NE(st.error_message().find("--max-active"), std::string::npos) << st.error_message();

  running.TryCancel();
  while (first->Read(&ev)) {
  }
  first->Finish();
  int tokens = 0;
  while (second->Read(&ev)) tokens += ev.has_delta() ? ev.delta().token_ids_size() : 0;
  const grpc::Status next = second->Finish();
  EXPECT_TRUE(next.ok()) << next.error_message();
  EXPECT_EQ(tokens, 3);
}

TEST_F(DecoderServiceTest, LoadReportsModelAndSlots) {
  ASSERT_NO_FATAL_FAILURE(Start({"--max-active", "3"}));
  grpc::ClientContext ctx;
  v1::LoadRequest req;
  v1::LoadReport load;
  const grpc::Status st = stub_->GetLoad(&ctx, req, &load);
  ASSERT_TRUE(st.ok()) << st.error_code() << " " << st.error_message();
  EXPECT_EQ(load.max_active_sequences(), 3);
  EXPECT_EQ(load.active_sequences(), 0);
  EXPECT_EQ(load.model().hex().size(), 16u);
  EXPECT_GT(load.free_kv_bytes(), 0);
  EXPECT_EQ(load.device(), "cpu");
}

// The decoder's wire form of text: every byte outside a valid UTF-8 sequence becomes U+FFFD.
std::string WireText(const std::string& bytes) {
  std::string out;
  for (size_t i = 0; i < bytes.size();) {
    const size_t n = engine::unicode::Utf8CharLen(bytes, i);
    if (n == 1 && static_cast<unsigned char>(bytes[i]) >= 0x80) {
      out += "\xEF\xBF\xBD";
    } else {
      out.append(bytes, i, n);
    }
    i += n;
  }
  return out;
}

// The text a worker has sent after delivering `ids` (held-back text not included).
std::string SentText(const engine::Tokenizer& tok, const std::vector<int32_t>& ids,
                     const std::vector<std::string>& stops) {
  engine::StopChecker c({.max_tokens = 1 << 20, .stop_strings = stops}, &tok);
  std::string text;
  for (int32_t id : ids) c.Push(id, &text);
  return WireText(text);
}

class DecoderFailoverTest : public DecoderServiceTest {
 protected:
  void SetUp() override {
    auto tok = engine::Tokenizer::FromFile(*dir_ + "/model/tokenizer.json");
    ASSERT_TRUE(tok.ok());
    tok_ = std::move(tok).value();
  }
  static v1::GenerateRequest Sampled(const std::vector<std::string>& stops) {
    v1::GenerateRequest req = Raw("Stories of the islands and the rivers", 48);
    req.mutable_sampling()->set_temperature(1.0f);
    req.mutable_sampling()->set_seed(1234);
    for (const auto& s : stops) req.mutable_sampling()->add_stop(s);
    return req;
  }
  // A worker failed after delivering ids[0, k): the next one resumes from them.
  Generated Resume(const std::vector<std::string>& stops, const std::vector<int32_t>& ids,
                   size_t k) {
    v1::GenerateRequest req = Sampled(stops);
    req.mutable_resume_token_ids()->Assign(ids.begin(), ids.begin() + k);
    return Run(req);
  }
  std::unique_ptr<engine::Tokenizer> tok_;
};

TEST_F(DecoderFailoverTest, ResumedTextAndSeededSamplingEqualTheUninterruptedRun) {
  ASSERT_NO_FATAL_FAILURE(Start());
  const Generated full = Run(Sampled({}));
  ASSERT_TRUE(full.status.ok()) << full.status.error_message();
  ASSERT_EQ(full.ids.size(), 48u);
  // Every hand-over point: the same tokens (the sampler's draws continue) and the text sent
  // before plus the text sent after is the uninterrupted text (held-back bytes of a split
  // character are completed, not replaced or lost).
  for (size_t k = 1; k < full.ids.size(); k += 3) {
    const Generated rest = Resume({}, full.ids, k);
    ASSERT_TRUE(rest.status.ok()) << rest.status.error_message();
    EXPECT_EQ(rest.ids, std::vector<int32_t>(full.ids.begin() + k, full.ids.end())) << k;
    const std::vector<int32_t> before(full.ids.begin(), full.ids.begin() + k);
    EXPECT_EQ(SentText(*tok_, before, {}) + rest.text, full.text) << "hand-over after " << k;
  }
}

TEST_F(DecoderFailoverTest, AStopStringSpanningTheHandOverStops) {
  ASSERT_NO_FATAL_FAILURE(Start());
  const Generated full = Run(Sampled({}));
  ASSERT_TRUE(full.status.ok()) << full.status.error_message();
  const std::string bytes = tok_->Decode(full.ids);
  // A 4-byte ASCII stop string whose first occurrence straddles the end of token k's text.
  size_t k = 0, at = 0;
  std::string stop;
  for (size_t i = 3; i + 3 < full.ids.size() && stop.empty(); ++i) {
    const size_t b =
        tok_->Decode(std::vector<int32_t>(full.ids.begin(), full.ids.begin() + i)).size();
    if (b < 2 || b + 2 > bytes.size()) continue;
    const std::string cand = bytes.substr(b - 2, 4);
    const bool ascii =
        std::all_of(cand.begin(), cand.end(), [](char c) { return c > ' ' && c < 127; });
    if (ascii && bytes.find(cand) == b - 2) {
      k = i;
      at = b - 2;
      stop = cand;
    }
  }
  ASSERT_FALSE(stop.empty()) << "no ASCII stop string candidate in: " << full.text;
  const Generated stopped = Run(Sampled({stop}));
  ASSERT_TRUE(stopped.status.ok());
  EXPECT_EQ(stopped.stats.finish_reason(), "stop");
  EXPECT_EQ(stopped.text, WireText(bytes.substr(0, at)));
  const Generated rest = Resume({stop}, full.ids, k);
  ASSERT_TRUE(rest.status.ok()) << rest.status.error_message();
  EXPECT_EQ(rest.stats.finish_reason(), "stop") << "stop '" << stop << "' after token " << k;
  const std::vector<int32_t> before(full.ids.begin(), full.ids.begin() + k);
  EXPECT_EQ(SentText(*tok_, before, {stop}) + rest.text, stopped.text);
}

TEST_F(DecoderServiceTest, ManyConcurrentOneTokenRequestsEachFinishOnce) {
  // A one-token job can finish (and its reactor be deleted) right after it is submitted: the
  // reactor must not be touched after Submit (run under ASan to catch a use-after-free).
  ASSERT_NO_FATAL_FAILURE(Start({"--max-active", "8"}));
  std::atomic<int> ok{0}, bad{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 40; ++i) {
        Generated g = Run(Raw("Hi", 1));
        (g.status.ok() && g.ids.size() == 1 ? ok : bad)++;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(ok.load(), 320);
  EXPECT_EQ(bad.load(), 0);
  EXPECT_TRUE(Run(Raw("still serving", 2)).status.ok());
}

TEST_F(DecoderServiceTest, StopStringsAreBoundedInCountAndLength) {
  ASSERT_NO_FATAL_FAILURE(Start());
  v1::GenerateRequest many = Raw("x", 3);
  for (int i = 0; i < 17; ++i) many.mutable_sampling()->add_stop("s" + std::to_string(i));
  Generated g = Run(many);
  EXPECT_EQ(g.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(g.status.error_message().find("stop strings"), std::string::npos)
      << g.status.error_message();
  v1::GenerateRequest longest = Raw("x", 3);
  longest.mutable_sampling()->add_stop(std::string(257, 'z'));
  EXPECT_EQ(Run(longest).status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  // At the limits: accepted.
  v1::GenerateRequest fine = Raw("x", 3);
  for (int i = 0; i < 16; ++i) fine.mutable_sampling()->add_stop(std::string(256, 'a' + i));
  EXPECT_TRUE(Run(fine).status.ok());
}

// A passage of about `words` tokens.
std::string Passage(int words, int seed) {
  std::string s;
  for (int i = 0; i < words; ++i) s += " w" + std::to_string((i * 7919 + seed * 104729) % 100000);
  return s;
}

TEST_F(DecoderServiceTest, ApePassagesAreBoundedAndCountAgainstTheKvBudget) {
  // 1 MiB of KV budget: 512 tokens of the tiny model (4 layers x 2 kv heads x 32 x f32, K and V).
  ASSERT_NO_FATAL_FAILURE(Start({"--kv-budget-mb", "1"}));
  v1::GenerateRequest req;
  req.set_question("What do the passages say?");
  req.mutable_sampling()->set_max_tokens(4);
  req.mutable_sampling()->set_ignore_eos(true);
  auto* p = req.add_passages();
  p->set_id("a");
  p->set_text(Passage(40, 1));
  Generated small = Run(req);
  ASSERT_TRUE(small.status.ok()) << small.status.error_message();
  // Passages whose KV alone is over the budget: the worker cannot hold them.
  for (int i = 0; i < 3; ++i) {
    auto* q = req.add_passages();
    q->set_id("p" + std::to_string(i));
    q->set_text(Passage(100, 10 + i));
  }
  Generated big = Run(req);
  EXPECT_EQ(big.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
      << big.status.error_message();
  // More passages than a request may carry.
  v1::GenerateRequest many = req;
  many.clear_passages();
  for (int i = 0; i < 65; ++i) {
    auto* q = many.add_passages();
    q->set_id("m" + std::to_string(i));
    q->set_text("short passage " + std::to_string(i));
  }
  Generated g = Run(many);
  EXPECT_EQ(g.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(g.status.error_message().find("passages"), std::string::npos)
      << g.status.error_message();
}

TEST_F(DecoderServiceTest, PassagesTogetherLongerThanTheContextAreInvalidArgument) {
  // Each passage fits the 4096-token context; together they do not (the prompt attends to all).
  ASSERT_NO_FATAL_FAILURE(Start());
  v1::GenerateRequest req;
  req.set_question("Summarise");
  req.mutable_sampling()->set_max_tokens(4);
  for (int i = 0; i < 4; ++i) {  // about 1500 tokens each (a passage may have 2048)
    auto* q = req.add_passages();
    q->set_id("p" + std::to_string(i));
    q->set_text(Passage(250, 20 + i));
  }
  Generated g = Run(req);
  EXPECT_EQ(g.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << g.status.error_message();
  EXPECT_NE(g.status.error_message().find("context"), std::string::npos)
      << g.status.error_message();
}

}  // namespace
}  // namespace ragserve
