// Sampling (greedy, temperature, top-k, top-p, repetition penalty, seeds), stop conditions and
// the Generate loop.
#include "services/engine/sampling.h"

#include <cmath>
#include <map>
#include <set>

#include "gtest/gtest.h"
#include "services/engine/bpe_trainer.h"
#include "services/engine/generate.h"
#include "tests/engine/engine_test_util.h"

namespace ragserve::engine {
namespace {

std::vector<float> LogProbs(const std::vector<double>& p) {
  std::vector<float> l;
  for (double x : p) l.push_back(static_cast<float>(std::log(x)));
  return l;
}

Sampler Make(SamplingParams p) {
  auto s = Sampler::Create(p);
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  return std::move(s).value();
}

TEST(SamplerTest, GreedyIsArgmaxWithTiesToTheSmallestId) {
  Sampler s = Make({});
  const std::vector<float> l = {0.5f, 3.0f, -1.0f, 3.0f};
  EXPECT_EQ(s.Sample(l, {}), 1);
  EXPECT_EQ(ArgMax(l), 1);
  EXPECT_EQ(ArgMax({}), -1);
}

TEST(SamplerTest, SameSeedGivesTheSameTokensAndOtherSeedsDiffer) {
  const std::vector<float> l(50, 0.0f);  // uniform over 50 ids
  auto draw = [&](uint64_t seed) {
    Sampler s = Make({.temperature = 1.0f, .seed = seed});
    std::vector<int32_t> out;
    for (int i = 0; i < 40; ++i) out.push_back(s.Sample(l, out));
    return out;
  };
  EXPECT_EQ(draw(42), draw(42));
  EXPECT_NE(draw(42), draw(43));
}

TEST(SamplerTest, TemperatureOneMatchesTheSoftmaxFrequencies) {
  const std::vector<double> p = {0.6, 0.3, 0.1};
  Sampler s = Make({.temperature = 1.0f, .seed = 7});
  std::vector<int> count(3, 0);
  const int n = 20000;
  for (int i = 0; i < n; ++i) ++count[s.Sample(LogProbs(p), {})];
  for (int i = 0; i < 3; ++i) EXPECT_NEAR(count[i] / double(n), p[i], 0.02) << "id " << i;
  // A low temperature sharpens: the top token dominates.
  Sampler cold = Make({.temperature = 0.25f, .seed = 7});
  int top = 0;
  for (int i = 0; i < 2000; ++i) top += cold.Sample(LogProbs(p), {}) == 0;
  EXPECT_GT(top, 0.9 * 2000);
}

TEST(SamplerTest, TopKKeepsOnlyTheKMostLikely) {
  const std::vector<float> l = {1.0f, 5.0f, 4.9f, 0.0f, 4.8f, 2.0f};
  Sampler s = Make({.temperature = 5.0f, .top_k = 3, .seed = 1});
  std::set<int32_t> seen;
  for (int i = 0; i < 500; ++i) seen.insert(s.Sample(l, {}));
  EXPECT_EQ(seen, (std::set<int32_t>{1, 2, 4}));
  Sampler k1 = Make({.temperature = 100.0f, .top_k = 1, .seed = 1});
  for (int i = 0; i < 50; ++i) EXPECT_EQ(k1.Sample(l, {}), 1);
}

TEST(SamplerTest, TopPKeepsTheSmallestNucleus) {
  const std::vector<float> l = LogProbs({0.05, 0.5, 0.15, 0.3});
  Sampler s = Make({.temperature = 1.0f, .top_p = 0.7f, .seed = 3});
  std::set<int32_t> seen;
  for (int i = 0; i < 500; ++i) seen.insert(s.Sample(l, {}));
  EXPECT_EQ(seen, (std::set<int32_t>{1, 3}));  // 0.5 + 0.3 >= 0.7
  Sampler tight = Make({.temperature = 1.0f, .top_p = 0.5f, .seed = 3});
  for (int i = 0; i < 50; ++i) EXPECT_EQ(tight.Sample(l, {}), 1);
}

TEST(SamplerTest, RepetitionPenaltyDividesPositiveAndMultipliesNegativeLogits) {
  Sampler s = Make({.repetition_penalty = 2.0f});
  const std::vector<float> l = {2.0f, 1.9f, -0.1f};
  EXPECT_EQ(s.Sample(l, std::vector<int32_t>{0, 0}), 1);  // 2.0 / 2 = 1.0 < 1.9
  EXPECT_EQ(s.Sample(l, {}), 0);
  // A seen negative logit goes further down: -0.1 * 2 < -0.15.
  const std::vector<float> neg = {-0.15f, -5.0f, -0.1f};
  EXPECT_EQ(s.Sample(neg, std::vector<int32_t>{2}), 0);
}

TEST(SamplerTest, CreateRejectsBadParametersByName) {
  EXPECT_NE(Sampler::Create({.temperature = -1.0f}).status().message().find("temperature"),
            std::string::npos);
  EXPECT_NE(Sampler::Create({.top_k = -2}).status().message().find("top_k"), std::string::npos);
  EXPECT_NE(Sampler::Create({.top_p = 0.0f}).status().message().find("top_p"), std::string::npos);
  EXPECT_NE(Sampler::Create({.top_p = 1.5f}).status().message().find("top_p"), std::string::npos);
  EXPECT_NE(Sampler::Create({.repetition_penalty = 0.0f}).status().message().find("repetition"),
            std::string::npos);
}

// A byte-level tokenizer with no merges: id = 2 + byte.
std::unique_ptr<Tokenizer> ByteTokenizer() {
  auto json = TrainByteLevelBpe({"ab"}, 258, {"<|begin_of_text|>", "<|end_of_text|>"});
  EXPECT_TRUE(json.ok()) << json.status().ToString();
  auto t = Tokenizer::FromJson(*json);
  EXPECT_TRUE(t.ok()) << t.status().ToString();
  return std::move(t).value();
}

std::vector<int32_t> Bytes(const std::string& s) {
  std::vector<int32_t> ids;
  for (unsigned char c : s) ids.push_back(2 + c);
  return ids;
}

TEST(StopCheckerTest, StopStringEndsGenerationAndIsNeverEmitted) {
  auto tok = ByteTokenizer();
  StopChecker c({.max_tokens = 100, .eos_ids = {1}, .stop_strings = {"END", "xyz"}}, tok.get());
  std::string text;
  StopReason r = StopReason::kNone;
  const std::vector<int32_t> ids = Bytes("hello ENwoEND tail");
  size_t i = 0;
  for (; i < ids.size() && r == StopReason::kNone; ++i) {
    r = c.Push(ids[i], &text);
    if (i == 7) {
      EXPECT_EQ(text, "hello ") << "\"EN\" must be held back";
    }
  }
  EXPECT_EQ(r, StopReason::kStopString);
  EXPECT_EQ(text, "hello ENwo");
  EXPECT_EQ(i, 13u);  // stopped right at the D of END
}

TEST(StopCheckerTest, EosAndMaxTokensStopAndFlushReleasesHeldText) {
  auto tok = ByteTokenizer();
  StopChecker eos({.max_tokens = 100, .eos_ids = {1}}, tok.get());
  std::string text;
  EXPECT_EQ(eos.Push(Bytes("a")[0], &text), StopReason::kNone);
  EXPECT_EQ(eos.Push(1, &text), StopReason::kEos);
  EXPECT_EQ(text, "a");
  StopChecker max({.max_tokens = 3, .stop_strings = {"qq"}}, tok.get());
  text.clear();
  const std::vector<int32_t> ids = Bytes("abq");
  EXPECT_EQ(max.Push(ids[0], &text), StopReason::kNone);
  EXPECT_EQ(max.Push(ids[1], &text), StopReason::kNone);
  EXPECT_EQ(max.Push(ids[2], &text), StopReason::kMaxTokens);
  EXPECT_EQ(text, "ab");
  EXPECT_EQ(max.Flush(), "q");
}

// The text one checker emits for `ids` (and why it stopped); with `flush` the held text too.
struct Emitted {
  std::string text;
  StopReason reason = StopReason::kNone;
};
Emitted PushAll(StopChecker* c, std::span<const int32_t> ids, bool flush) {
  Emitted e;
  for (size_t i = 0; i < ids.size() && e.reason == StopReason::kNone; ++i) {
    e.reason = c->Push(ids[i], &e.text);
  }
  if (flush && e.reason != StopReason::kStopString) e.text += c->Flush();
  return e;
}

TEST(StopCheckerTest, ReplayAtAnyHandOverGivesTheUninterruptedTextAndStop) {
  // A multi-byte character split over byte tokens, and a stop string that spans token
  // boundaries: whatever token a worker fails after, the first worker's text plus the text of a
  // checker that replayed the delivered tokens is the uninterrupted text.
  auto tok = ByteTokenizer();
  const std::vector<int32_t> ids = Bytes(
      "caf\xC3\xA9 \xE2\x82\xAC"
      "5 ENwo ENDING");
  const StopCriteria crit{.max_tokens = 100,
                          .stop_strings = {"END",
                                           "\xE2\x82\xAC"
                                           "6"}};
  StopChecker whole(crit, tok.get());
  const Emitted full = PushAll(&whole, ids, /*flush=*/true);
  ASSERT_EQ(full.reason, StopReason::kStopString);
  ASSERT_EQ(full.text,
            "caf\xC3\xA9 \xE2\x82\xAC"
            "5 ENwo ");
  for (size_t k = 1; k <= 18; ++k) {  // token 18 is the D of END
    StopChecker first(crit, tok.get());
    const Emitted before = PushAll(&first, std::span(ids).first(k), /*flush=*/false);
    StopCriteria rest_crit = crit;
    rest_crit.max_tokens = crit.max_tokens - static_cast<int>(k);
    StopChecker second(rest_crit, tok.get());
    second.Replay(std::span(ids).first(k));
    EXPECT_EQ(second.generated(), 0);
    const Emitted after = PushAll(&second, std::span(ids).subspan(k), /*flush=*/true);
    EXPECT_EQ(before.text + after.text, full.text) << "hand-over after token " << k;
    EXPECT_EQ(after.reason, StopReason::kStopString) << k;
  }
}

TEST(SamplerTest, SkipDrawsContinuesTheSeededSequence) {
  const std::vector<float> logits = LogProbs({0.2, 0.3, 0.1, 0.4});
  Sampler a = Make({.temperature = 1.0f, .seed = 99});
  std::vector<int32_t> seq;
  for (int i = 0; i < 40; ++i) seq.push_back(a.Sample(logits, {}));
  Sampler b = Make({.temperature = 1.0f, .seed = 99});
  b.SkipDraws(17);
  for (int i = 17; i < 40; ++i) EXPECT_EQ(b.Sample(logits, {}), seq[i]) << i;
  Sampler greedy = Make({});
  greedy.SkipDraws(5);  // no draws to skip
  EXPECT_EQ(greedy.Sample(logits, {}), 3);
}

TEST(StopCheckerTest, PerTokenWorkDoesNotGrowWithTheOutput) {
  // 16 stop strings of 256 bytes that almost match: a long output stays fast and correct.
  auto tok = ByteTokenizer();
  StopCriteria crit{.max_tokens = 1 << 30};
  for (int i = 0; i < 16; ++i) crit.stop_strings.push_back(std::string(255, 'a') + char('b' + i));
  StopChecker c(crit, tok.get());
  std::string text;
  const int32_t a = Bytes("a")[0];
  for (int i = 0; i < 200000; ++i) ASSERT_EQ(c.Push(a, &text), StopReason::kNone);
  EXPECT_EQ(text.size(), 200000u - 255);  // the last 255 a's could still begin a stop string
  EXPECT_EQ(c.Push(Bytes("q")[0], &text), StopReason::kStopString);
}

TEST(GenerateTest, GreedyGenerateMatchesAManualLoopAndStopsOnEos) {
  testing::TempDir dir;
  auto m = testing::MakeModel(dir, testing::SmallOptions());
  ASSERT_NE(m, nullptr);
  const std::vector<int32_t> prompt = {5, 17, 99, 4};
  GenerateOptions go;
  go.stop.max_tokens = 10;
  go.stop.eos_ids = {-1};
  go.prefill_chunk = 3;
  auto r = Generate(*m, nullptr, prompt, go);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_EQ(r->tokens.size(), 10u);
  EXPECT_EQ(r->reason, StopReason::kMaxTokens);
  // Manual: recompute from scratch each step.
  std::vector<int32_t> seq = prompt;
  for (int i = 0; i < 10; ++i) {
    auto kv = m->NewKvCache();
    std::vector<float> logits;
    ASSERT_TRUE(m->Prefill(seq, 0, kv.get(), 0, &logits).ok());
    EXPECT_EQ(ArgMax(logits), r->tokens[i]) << "step " << i;
    seq.push_back(ArgMax(logits));
  }
  // Make the 4th generated token an EOS: generation stops there.
  go.stop.eos_ids = {r->tokens[3]};
  auto e = Generate(*m, nullptr, prompt, go);
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->reason, StopReason::kEos);
  EXPECT_LE(e->tokens.size(), 4u);
  EXPECT_EQ(e->tokens.back(), r->tokens[3]);
}

TEST(GenerateTest, SampledGenerationIsReproducibleFromTheSeed) {
  testing::TempDir dir;
  auto m = testing::MakeModel(dir, testing::SmallOptions());
  ASSERT_NE(m, nullptr);
  const std::vector<int32_t> prompt = {9, 8, 7};
  GenerateOptions go;
  go.stop.max_tokens = 24;
  go.stop.eos_ids = {-1};
  go.sampling = {.temperature = 1.5f, .top_k = 50, .top_p = 0.95f, .seed = 1234};
  auto a = Generate(*m, nullptr, prompt, go);
  auto b = Generate(*m, nullptr, prompt, go);
  go.sampling.seed = 1235;
  auto c = Generate(*m, nullptr, prompt, go);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_EQ(a->tokens, b->tokens);
  EXPECT_NE(a->tokens, c->tokens);
  go.sampling.temperature = -1.0f;
  EXPECT_EQ(Generate(*m, nullptr, prompt, go).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace ragserve::engine
