// A KV retrieval sequence's key index is built off the decode loop (RetrievalSourceOptions::
// build_executor): while the build of one sequence is held back by a latch, the other sequences
// keep stepping and the sequence itself keeps decoding with exact attention; its greedy tokens
// equal those of the inline build (top_k covering every key); a cancel during the build ends the
// request at once and the build task frees the store's sequence; a build error fails only that
// request; the KV budget reserves a retrieval sequence's local cache only while it exists.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "services/common/executor.h"
#include "services/decoder/generator.h"
#include "services/kvr/kv_retrieval.h"
#include "tests/engine/engine_test_util.h"
#include "tests/kvr/latched_kvr_client.h"

namespace ragserve::decoder {
namespace {

using engine::testing::RandomTokens;
using kvr::testing::LatchedKvrClient;

constexpr double kWaitS = 120;  // liveness bound of every wait (never reached when correct)
constexpr int kLongPrompt = 150;

struct Outcome {
  Status status;
  GenerateStats result;
};

// A job whose tokens are collected in *ids (read after on_done) and counted in *emitted.
struct Tracked {
  std::promise<Outcome> done;
  std::vector<int32_t> ids;
  std::atomic<int> emitted{0};
};

std::unique_ptr<GenerateJob> Job(const std::string& id, std::vector<int32_t> prompt, int max_tokens,
                                 Tracked* t) {
  auto job = std::make_unique<GenerateJob>();
  job->request_id = id;
  job->prompt = std::move(prompt);
  job->stop.max_tokens = max_tokens;
  job->on_delta = [t](const std::vector<int32_t>& ids, const std::string&) {
    t->ids.insert(t->ids.end(), ids.begin(), ids.end());
    t->emitted += static_cast<int>(ids.size());
  };
  job->on_done = [t](const Status& st, const GenerateStats& r) { t->done.set_value({st, r}); };
  return job;
}

// Retrieval for prompts of at least 100 tokens, top_k covering every key (decode equals full
// attention), builds on `builds` (null: inline on the loop thread).
RetrievalSourceFactory Factory(kvr::KvrClient* client, BoundedExecutor* builds) {
  return
      [client, builds](const engine::KvGeometry& g, const std::string& id, int64_t prefill,
                       const DeviceKvTarget*) -> StatusOr<std::unique_ptr<kvr::RetrievalSource>> {
        if (prefill < 100) return std::unique_ptr<kvr::RetrievalSource>();
        kvr::RetrievalSourceOptions o;
        o.prefill_tokens = prefill;
        o.attend.top_k = 1 << 20;
        o.build_executor = builds;
        RS_ASSIGN_OR_RETURN(auto src, kvr::RetrievalKvSource::Create(client, id, g, o));
        return std::unique_ptr<kvr::RetrievalSource>(std::move(src));
      };
}

kvr::KvRetrievalOptions StoreOptions() {
  kvr::KvRetrievalOptions ko;
  ko.defaults.sink_tokens = 8;
  ko.defaults.window_tokens = 32;
  ko.defaults.index_kind = kvr::KeyIndexKind::kExact;
  return ko;
}

// Polls `pred` every millisecond until it holds or kWaitS passed.
template <typename Pred>
bool PollUntil(Pred pred) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(kWaitS);
  while (!pred()) {
    if (std::chrono::steady_clock::now() > end) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}

Outcome Get(Tracked* t) {
  auto f = t->done.get_future();
  if (f.wait_for(std::chrono::duration<double>(kWaitS)) != std::future_status::ready) {
    return {DeadlineExceeded("the request did not finish"), {}};
  }
  return f.get();
}

class AsyncIndexBuildTest : public ::testing::Test {
 protected:
  void SetUp() override {
    engine::TinyModelOptions o = engine::testing::SmallOptions();
    o.max_position_embeddings = 2048;
    model_ = engine::testing::MakeModel(dir_, o);
    ASSERT_NE(model_, nullptr);
    const engine::KvGeometry& g = model_->geometry();
    bytes_per_token_ = int64_t{2} * g.num_layers * g.kv_row() * int64_t{sizeof(float)};
  }
  // The greedy tokens of the long prompt alone on a generator whose builds run inline.
  std::vector<int32_t> InlineBuildTokens(int max_tokens) {
    kvr::KvRetrieval store(StoreOptions());
    kvr::LocalKvrClient client(&store);
    GeneratorOptions go;
    go.kv_retrieval = Factory(&client, nullptr);
    Generator gen(model_.get(), nullptr, go);
    Tracked t;
    EXPECT_TRUE(gen.Submit(Job("inline", LongPrompt(), max_tokens, &t)).ok());
    const Outcome out = Get(&t);
    EXPECT_TRUE(out.status.ok()) << out.status.ToString();
    gen.Shutdown();
    return t.ids;
  }
  std::vector<int32_t> LongPrompt() const {
    return RandomTokens(kLongPrompt, model_->config().vocab_size, 21);
  }

  engine::testing::TempDir dir_;
  std::unique_ptr<engine::Model> model_;
  int64_t bytes_per_token_ = 0;
};

TEST_F(AsyncIndexBuildTest, OtherSequencesKeepSteppingWhileOneIndexBuildIsBlocked) {
  const int max_tokens = 1500;
  kvr::KvRetrieval store(StoreOptions());
  kvr::LocalKvrClient local(&store);
  LatchedKvrClient latched(&local);
  BoundedExecutor builds(1, 8);  // declared last: joined before the store goes
  GeneratorOptions go;
  go.kv_retrieval = Factory(&latched, &builds);
  Generator gen(model_.get(), nullptr, go);
  Tracked a, b;
  ASSERT_TRUE(gen.Submit(Job("a", LongPrompt(), max_tokens, &a)).ok());
  ASSERT_TRUE(gen.Submit(Job("b", RandomTokens(5, 300, 22), 16, &b)).ok());
  ASSERT_TRUE(latched.WaitForBuildsStarted(1, kWaitS));
  // b finishes and a keeps decoding (exactly) while a's build cannot return.
  const Outcome ob = Get(&b);
  const int a_during_build = a.emitted.load();
  const int finished_during_build = latched.builds_finished();
  latched.Open();
  EXPECT_TRUE(ob.status.ok()) << ob.status.ToString();
  EXPECT_EQ(ob.result.generated_tokens, 16);
  EXPECT_EQ(finished_during_build, 0);
  EXPECT_GE(a_during_build, 8);  // a decoded in the same batches as b
  // a switches to the store while it still decodes (its reservation shrinks to one token).
  const bool switched = PollUntil([&] {
    return gen.Load().kv_bytes_free == go.kv_budget_bytes - bytes_per_token_ ||
           a.emitted.load() == max_tokens;
  });
  const int at_switch = a.emitted.load();
  EXPECT_TRUE(switched);
  EXPECT_LT(at_switch, max_tokens) << "a ended before its build was taken";
  EXPECT_TRUE(PollUntil([&] { return a.emitted.load() >= std::min(max_tokens, at_switch + 20); }));
  gen.Cancel("a");
  const Outcome oa = Get(&a);
  EXPECT_TRUE(oa.status.ok() || oa.status.code() == StatusCode::kCancelled) << oa.status.ToString();
  ASSERT_TRUE(builds.WaitIdle(kWaitS));
  EXPECT_EQ(latched.builds_finished(), 1);
  EXPECT_EQ(latched.overlaps(), 0);
  gen.Shutdown();
  EXPECT_EQ(store.Stats().sequences, 0);
  // Its greedy tokens, before and after the switch, are those of the inline build: exact
  // attention during the build, then the store with top_k covering every key.
  const std::vector<int32_t> expected = InlineBuildTokens(max_tokens);
  ASSERT_GE(a.ids.size(), static_cast<size_t>(std::min(max_tokens, at_switch + 20)));
  ASSERT_LE(a.ids.size(), expected.size());
  EXPECT_TRUE(std::equal(a.ids.begin(), a.ids.end(), expected.begin()));
}

TEST_F(AsyncIndexBuildTest, CancelDuringTheBuildEndsTheRequestAndTheBuildFreesTheSequence) {
  kvr::KvRetrieval store(StoreOptions());
  kvr::LocalKvrClient local(&store);
  LatchedKvrClient latched(&local);
  BoundedExecutor builds(1, 8);
  GeneratorOptions go;
  go.kv_retrieval = Factory(&latched, &builds);
  Generator gen(model_.get(), nullptr, go);
  Tracked a;
  ASSERT_TRUE(gen.Submit(Job("a", LongPrompt(), 1000, &a)).ok());
  ASSERT_TRUE(latched.WaitForBuildsStarted(1, kWaitS));
  ASSERT_TRUE(gen.Cancel("a"));
  const Outcome oa = Get(&a);
  const int64_t seqs_before_build_returned = store.Stats().sequences;
  latched.Open();
  EXPECT_EQ(oa.status.code(), StatusCode::kCancelled) << oa.status.ToString();
  // The store's sequence is the build's until FinishPrefill returns; then the task releases it.
  EXPECT_EQ(seqs_before_build_returned, 1);
  ASSERT_TRUE(builds.WaitIdle(kWaitS));
  EXPECT_EQ(store.Stats().sequences, 0);
  EXPECT_EQ(store.Stats().bytes_used, 0);
  EXPECT_EQ(latched.overlaps(), 0);
  // The worker goes on serving.
  Tracked c;
  ASSERT_TRUE(gen.Submit(Job("c", RandomTokens(5, 300, 23), 4, &c)).ok());
  EXPECT_TRUE(Get(&c).status.ok());
  gen.Shutdown();
}

TEST_F(AsyncIndexBuildTest, ABuildErrorFailsOnlyThatRequest) {
  kvr::KvRetrieval store(StoreOptions());
  kvr::LocalKvrClient local(&store);
  LatchedKvrClient latched(&local);
  latched.FailBuilds(ResourceExhausted("injected: index memory"));
  BoundedExecutor builds(1, 8);
  GeneratorOptions go;
  go.kv_retrieval = Factory(&latched, &builds);
  Generator gen(model_.get(), nullptr, go);
  Tracked a, b;
  ASSERT_TRUE(gen.Submit(Job("a", LongPrompt(), 1000, &a)).ok());
  ASSERT_TRUE(gen.Submit(Job("b", RandomTokens(5, 300, 24), 40, &b)).ok());
  ASSERT_TRUE(latched.WaitForBuildsStarted(1, kWaitS));
  latched.Open();
  const Outcome oa = Get(&a);
  EXPECT_EQ(oa.status.code(), StatusCode::kResourceExhausted) << oa.status.ToString();
  EXPECT_NE(oa.status.message().find("injected: index memory"), std::string::npos);
  const Outcome ob = Get(&b);
  EXPECT_TRUE(ob.status.ok()) << ob.status.ToString();
  EXPECT_EQ(ob.result.generated_tokens, 40);
  ASSERT_TRUE(builds.WaitIdle(kWaitS));
  EXPECT_EQ(store.Stats().sequences, 0);
  gen.Shutdown();
}

TEST_F(AsyncIndexBuildTest, ARetrievalSequenceReservesItsLocalCacheOnlyWhileItExists) {
  kvr::KvRetrieval store(StoreOptions());
  kvr::LocalKvrClient local(&store);
  LatchedKvrClient latched(&local);
  BoundedExecutor builds(1, 8);
  GeneratorOptions go;
  go.kv_retrieval = Factory(&latched, &builds);
  const int max_tokens = 1500;
  const int64_t full = (kLongPrompt + max_tokens) * bytes_per_token_;
  go.kv_budget_bytes = full + 64 * bytes_per_token_;
  Generator gen(model_.get(), nullptr, go);
  Tracked a;
  ASSERT_TRUE(gen.Submit(Job("a", LongPrompt(), max_tokens, &a)).ok());
  ASSERT_TRUE(latched.WaitForBuildsStarted(1, kWaitS));
  // While the build runs the sequence decodes over its local cache: all of it stays reserved.
  EXPECT_TRUE(PollUntil([&] { return a.emitted.load() >= 2; }));
  EXPECT_EQ(gen.Load().kv_bytes_free, go.kv_budget_bytes - full);
  EXPECT_GT(gen.Load().kv_bytes_used, kLongPrompt * bytes_per_token_);
  latched.Open();
  // Decoding through the store it keeps one step's token.
  const bool trimmed =
      PollUntil([&] { return gen.Load().kv_bytes_free == go.kv_budget_bytes - bytes_per_token_; });
  EXPECT_TRUE(trimmed) << "free " << gen.Load().kv_bytes_free;
  EXPECT_LE(gen.Load().kv_bytes_used, bytes_per_token_);
  ASSERT_TRUE(gen.Cancel("a"));
  EXPECT_EQ(Get(&a).status.code(), StatusCode::kCancelled);
  gen.Shutdown();
  EXPECT_EQ(gen.Load().kv_bytes_free, go.kv_budget_bytes);
}

}  // namespace
}  // namespace ragserve::decoder
