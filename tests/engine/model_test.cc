// Forward-pass invariants: KV-cached decode equals recomputation, chunked prefill equals one-shot,
// a batch equals its sequences alone, fast kernels equal the reference, and the KV-source
// compositions (prefix blocks, APE, append hooks) equal sequential encoding.
#include "services/engine/model.h"

#include <random>

#include "gtest/gtest.h"
#include "services/engine/sampling.h"
#include "tests/engine/engine_test_util.h"

namespace ragserve::engine {
namespace {

using testing::MakeModel;
using testing::MaxAbsDiff;
using testing::RandomTokens;
using testing::SmallOptions;
using testing::TempDir;

std::vector<float> PrefillLogits(Model& m, const std::vector<int32_t>& toks, int chunk,
                                 KvCache* kv = nullptr) {
  std::unique_ptr<KvCache> own;
  if (kv == nullptr) {
    own = m.NewKvCache();
    kv = own.get();
  }
  std::vector<float> logits;
  Status s = m.Prefill(toks, static_cast<int32_t>(kv->length()), kv, chunk, &logits);
  EXPECT_TRUE(s.ok()) << s.ToString();
  return logits;
}

Status DecodeOne(Model& m, KvCache* kv, int32_t tok, std::vector<float>* logits) {
  SequenceStep st{std::span<const int32_t>(&tok, 1), static_cast<int32_t>(kv->length()), kv};
  return m.Forward(std::span<const SequenceStep>(&st, 1), LogitsMode::kLast, logits);
}

TEST(ModelTest, DecodeWithKvCacheEqualsRecomputingFromScratch) {
  TempDir dir;
  auto m = MakeModel(dir, SmallOptions());
  ASSERT_NE(m, nullptr);
  std::vector<int32_t> seq = RandomTokens(9, 300, 1);
  auto kv = m->NewKvCache();
  std::vector<float> logits = PrefillLogits(*m, seq, 0, kv.get());
  for (int step = 0; step < 8; ++step) {
    const int32_t next = ArgMax(logits);
    seq.push_back(next);
    ASSERT_TRUE(DecodeOne(*m, kv.get(), next, &logits).ok());
    const std::vector<float> full = PrefillLogits(*m, seq, 0);
    EXPECT_LT(MaxAbsDiff(logits, full), 1e-4f) << "step " << step;
  }
  EXPECT_EQ(kv->length(), static_cast<int64_t>(seq.size()));
}

TEST(ModelTest, ChunkedPrefillEqualsOneShotPrefill) {
  TempDir dir;
  auto m = MakeModel(dir, SmallOptions());
  ASSERT_NE(m, nullptr);
  const std::vector<int32_t> seq = RandomTokens(37, 300, 2);
  auto kv0 = m->NewKvCache();
  const std::vector<float> one = PrefillLogits(*m, seq, 0, kv0.get());
  for (int chunk : {1, 3, 8, 9, 16, 36}) {
    auto kv = m->NewKvCache();
    const std::vector<float> chunked = PrefillLogits(*m, seq, chunk, kv.get());
    EXPECT_LT(MaxAbsDiff(one, chunked), 1e-4f) << "chunk " << chunk;
    ASSERT_EQ(kv->length(), kv0->length());
    for (int l = 0; l < m->config().num_layers; ++l) {
      const int64_t n = kv->length() * m->geometry().kv_row();
      std::vector<float> a(kv0->keys(l), kv0->keys(l) + n), b(kv->keys(l), kv->keys(l) + n);
      EXPECT_LT(MaxAbsDiff(a, b), 1e-4f) << "chunk " << chunk << " layer " << l;
    }
  }
}

TEST(ModelTest, BatchOfSequencesEqualsEachAlone) {
  TempDir dir;
  auto m = MakeModel(dir, SmallOptions());
  ASSERT_NE(m, nullptr);
  const int B = 8;
  // Each sequence has its own prompt; then one mixed step (3 decode tokens for some, several new
  // tokens for others) and a pure decode step of all 8 (the GEMV path reading weights once).
  std::vector<std::unique_ptr<KvCache>> batch_kv, alone_kv;
  std::vector<std::vector<int32_t>> prompts;
  for (int b = 0; b < B; ++b) {
    prompts.push_back(RandomTokens(3 + b, 300, 100 + b));
    batch_kv.push_back(m->NewKvCache());
    alone_kv.push_back(m->NewKvCache());
    PrefillLogits(*m, prompts[b], 0, batch_kv[b].get());
    PrefillLogits(*m, prompts[b], 0, alone_kv[b].get());
  }
  std::vector<std::vector<int32_t>> step1, step2;
  for (int b = 0; b < B; ++b) {
    step1.push_back(RandomTokens(b % 3 == 0 ? 4 : 1, 300, 200 + b));
    step2.push_back(RandomTokens(1, 300, 300 + b));
  }
  for (const auto* steps : {&step1, &step2}) {
    std::vector<SequenceStep> batch;
    for (int b = 0; b < B; ++b) {
      batch.push_back(
          {(*steps)[b], static_cast<int32_t>(batch_kv[b]->length()), batch_kv[b].get()});
    }
    std::vector<float> logits;
    ASSERT_TRUE(m->Forward(batch, LogitsMode::kLast, &logits).ok());
    const int V = m->config().vocab_size;
    ASSERT_EQ(logits.size(), static_cast<size_t>(B) * V);
    for (int b = 0; b < B; ++b) {
      std::vector<float> alone;
      SequenceStep st{(*steps)[b], static_cast<int32_t>(alone_kv[b]->length()), alone_kv[b].get()};
      ASSERT_TRUE(
          m->Forward(std::span<const SequenceStep>(&st, 1), LogitsMode::kLast, &alone).ok());
      std::vector<float> mine(logits.begin() + b * V, logits.begin() + (b + 1) * V);
      EXPECT_LT(MaxAbsDiff(mine, alone), 1e-4f) << "sequence " << b;
    }
  }
}

TEST(ModelTest, DecodeResultsDoNotDependOnTheThreadCount) {
  TempDir dir;
  TinyModelOptions o = SmallOptions();
  o.hidden_size = 256;  // matrices large enough to be split across threads
  o.intermediate_size = 1024;
  o.num_heads = 8;
  auto m = MakeModel(dir, o);
  ASSERT_NE(m, nullptr);
  const std::vector<int32_t> seq = RandomTokens(5, 300, 13);
  std::vector<std::vector<float>> runs;
  for (int threads : {1, 2, 0}) {
    m->SetDecodeThreads(threads);
    auto kv = m->NewKvCache();
    std::vector<float> all;
    for (int32_t t : seq) {
      std::vector<float> logits;
      ASSERT_TRUE(DecodeOne(*m, kv.get(), t, &logits).ok());
      all.insert(all.end(), logits.begin(), logits.end());
    }
    runs.push_back(all);
  }
  EXPECT_EQ(runs[0], runs[1]);  // bit-identical
  EXPECT_EQ(runs[0], runs[2]);
}

TEST(ModelTest, TruncatedCacheDecodesLikeAFreshOne) {
  TempDir dir;
  auto m = MakeModel(dir, SmallOptions());
  ASSERT_NE(m, nullptr);
  const std::vector<int32_t> prompt = RandomTokens(6, 300, 14);
  auto kv = m->NewKvCache();
  PrefillLogits(*m, prompt, 0, kv.get());
  std::vector<float> a, b;
  ASSERT_TRUE(DecodeOne(*m, kv.get(), 11, &a).ok());
  ASSERT_TRUE(DecodeOne(*m, kv.get(), 12, &a).ok());
  kv->Truncate(6);  // roll back both steps
  EXPECT_EQ(kv->length(), 6);
  EXPECT_EQ(kv->positions().size(), 6u);
  ASSERT_TRUE(DecodeOne(*m, kv.get(), 13, &a).ok());
  std::vector<int32_t> fresh = prompt;
  fresh.push_back(13);
  b = PrefillLogits(*m, fresh, 0);
  EXPECT_LT(MaxAbsDiff(a, b), 1e-4f);
}

TEST(ModelTest, AllLogitsModeMatchesLastLogitsOfEachPrefix) {
  TempDir dir;
  auto m = MakeModel(dir, SmallOptions());
  ASSERT_NE(m, nullptr);
  const std::vector<int32_t> seq = RandomTokens(6, 300, 3);
  auto kv = m->NewKvCache();
  SequenceStep st{seq, 0, kv.get()};
  std::vector<float> all;
  ASSERT_TRUE(m->Forward(std::span<const SequenceStep>(&st, 1), LogitsMode::kAll, &all).ok());
  const int V = m->config().vocab_size;
  ASSERT_EQ(all.size(), seq.size() * V);
  for (size_t i = 1; i <= seq.size(); ++i) {
    const std::vector<float> last =
        PrefillLogits(*m, std::vector<int32_t>(seq.begin(), seq.begin() + i), 0);
    std::vector<float> row(all.begin() + (i - 1) * V, all.begin() + i * V);
    EXPECT_LT(MaxAbsDiff(row, last), 1e-4f) << "position " << i - 1;
  }
}

class OpsAgreeTest : public ::testing::TestWithParam<kernels::DType> {};

TEST_P(OpsAgreeTest, FastOpsMatchReferenceOpsOnPrefillAndDecode) {
  TempDir dir;
  TinyModelOptions o = SmallOptions();
  o.dtype = GetParam();
  o.model_type = "qwen2";
  auto fast = MakeModel(dir, o, "m", &kernels::FastOps());
  ASSERT_NE(fast, nullptr);
  auto ref = Model::Load(dir.path() + "/m", &kernels::RefOps());
  ASSERT_TRUE(ref.ok());
  const std::vector<int32_t> seq = RandomTokens(21, 300, 4);  // > kGemvMaxRows: the sgemm path
  auto kf = fast->NewKvCache();
  auto kr = (*ref)->NewKvCache();
  EXPECT_LT(
      MaxAbsDiff(PrefillLogits(*fast, seq, 0, kf.get()), PrefillLogits(**ref, seq, 0, kr.get())),
      1e-3f);
  std::vector<float> lf, lr;
  ASSERT_TRUE(DecodeOne(*fast, kf.get(), 7, &lf).ok());
  ASSERT_TRUE(DecodeOne(**ref, kr.get(), 7, &lr).ok());
  EXPECT_LT(MaxAbsDiff(lf, lr), 1e-3f);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, OpsAgreeTest,
                         ::testing::Values(kernels::DType::kF32, kernels::DType::kF16,
                                           kernels::DType::kBF16));

TEST(ModelTest, EncodeBlockAfterPrefixEqualsTheSameTokensPrefilledSequentially) {
  TempDir dir;
  auto m = MakeModel(dir, SmallOptions());
  ASSERT_NE(m, nullptr);
  const std::vector<int32_t> prefix = RandomTokens(5, 300, 5), passage = RandomTokens(11, 300, 6);
  auto pre = m->EncodeBlock(nullptr, prefix, 0);
  ASSERT_TRUE(pre.ok()) << pre.status().ToString();
  EXPECT_EQ(pre->tokens, 5);
  EXPECT_EQ(pre->fingerprint, m->fingerprint());
  auto blk = m->EncodeBlock(&*pre, passage, 5, /*chunk_size=*/4);
  ASSERT_TRUE(blk.ok()) << blk.status().ToString();
  ASSERT_EQ(blk->tokens, 11);
  EXPECT_EQ(blk->positions.front(), 5);
  EXPECT_EQ(blk->positions.back(), 15);

  std::vector<int32_t> all = prefix;
  all.insert(all.end(), passage.begin(), passage.end());
  auto kv = m->NewKvCache();
  PrefillLogits(*m, all, 0, kv.get());
  const KvBlock seq = kv->ToBlock(5, 16, m->fingerprint());
  for (int l = 0; l < m->config().num_layers; ++l) {
    EXPECT_LT(MaxAbsDiff(blk->k[l], seq.k[l]), 1e-4f) << "layer " << l;
    EXPECT_LT(MaxAbsDiff(blk->v[l], seq.v[l]), 1e-4f) << "layer " << l;
  }
}

TEST(ModelTest, EncodeBlockRejectsAPrefixFromAnotherModel) {
  TempDir dir;
  auto m = MakeModel(dir, SmallOptions());
  ASSERT_NE(m, nullptr);
  auto pre = m->EncodeBlock(nullptr, RandomTokens(3, 300, 7), 0);
  ASSERT_TRUE(pre.ok());
  pre->fingerprint = "0000000000000000";
  auto blk = m->EncodeBlock(&*pre, RandomTokens(3, 300, 8), 3);
  EXPECT_EQ(blk.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(blk.status().message().find("fingerprint"), std::string::npos);
}

TEST(ModelTest, ApeWithUnitTemperatureAndScalingEqualsSequentialEncoding) {
  TempDir dir;
  auto m = MakeModel(dir, SmallOptions());
  ASSERT_NE(m, nullptr);
  const std::vector<int32_t> prefix = RandomTokens(4, 300, 9), ctx = RandomTokens(10, 300, 10),
                             question = RandomTokens(6, 300, 11);
  auto pre = m->EncodeBlock(nullptr, prefix, 0);
  ASSERT_TRUE(pre.ok());
  auto c = m->EncodeBlock(&*pre, ctx, 4);
  ASSERT_TRUE(c.ok());
  auto own = m->NewKvCache();
  ApeKvSource ape(&*pre, {&*c}, own.get(), 1.0f, 1.0f);
  std::vector<float> ape_logits;
  ASSERT_TRUE(m->Prefill(question, 14, &ape, 4, &ape_logits).ok());
  std::vector<int32_t> all = prefix;
  all.insert(all.end(), ctx.begin(), ctx.end());
  all.insert(all.end(), question.begin(), question.end());
  EXPECT_LT(MaxAbsDiff(ape_logits, PrefillLogits(*m, all, 0)), 1e-4f);
  EXPECT_EQ(own->length(), 6);

  // A temperature != 1 changes the result (the knob is wired through).
  auto own2 = m->NewKvCache();
  ApeKvSource ape2(&*pre, {&*c}, own2.get(), 0.5f, 1.0f);
  std::vector<float> hot;
  ASSERT_TRUE(m->Prefill(question, 14, &ape2, 0, &hot).ok());
  EXPECT_GT(MaxAbsDiff(hot, ape_logits), 1e-3f);
}

TEST(ModelTest, AppendHookSeesTheKeysAndValuesTheCacheStores) {
  TempDir dir;
  auto m = MakeModel(dir, SmallOptions());
  ASSERT_NE(m, nullptr);
  auto kv = m->NewKvCache();
  const int64_t row = m->geometry().kv_row();
  std::vector<std::vector<float>> seen_k(m->config().num_layers);
  std::vector<int32_t> seen_pos;
  int calls = 0;
  ObservedKvSource obs(kv.get(),
                       [&](int layer, const float* k, const float*, int n, const int32_t* pos) {
                         ++calls;
                         seen_k[layer].insert(seen_k[layer].end(), k, k + n * row);
                         if (layer == 0) seen_pos.insert(seen_pos.end(), pos, pos + n);
                       });
  const std::vector<int32_t> seq = RandomTokens(7, 300, 12);
  ASSERT_TRUE(m->Prefill(seq, 0, &obs, 3, nullptr).ok());
  EXPECT_EQ(calls, 3 * m->config().num_layers);  // 3 chunks x layers
  EXPECT_EQ(seen_pos, (std::vector<int32_t>{0, 1, 2, 3, 4, 5, 6}));
  for (int l = 0; l < m->config().num_layers; ++l) {
    EXPECT_EQ(seen_k[l], std::vector<float>(kv->keys(l), kv->keys(l) + 7 * row));
  }
}

TEST(ModelTest, ForwardRejectsBadInputWithoutTouchingTheCache) {
  TempDir dir;
  auto m = MakeModel(dir, SmallOptions());
  ASSERT_NE(m, nullptr);
  auto kv = m->NewKvCache();
  std::vector<float> logits;
  const std::vector<int32_t> bad = {5, 300};
  SequenceStep st{bad, 0, kv.get()};
  Status s = m->Forward(std::span<const SequenceStep>(&st, 1), LogitsMode::kLast, &logits);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("300"), std::string::npos) << s.message();
  EXPECT_EQ(kv->length(), 0);
  const std::vector<int32_t> neg = {-1};
  st = {neg, 0, kv.get()};
  EXPECT_FALSE(m->Forward(std::span<const SequenceStep>(&st, 1), LogitsMode::kLast, &logits).ok());
  const std::vector<int32_t> ok = {5};
  st = {ok, -3, kv.get()};
  EXPECT_FALSE(m->Forward(std::span<const SequenceStep>(&st, 1), LogitsMode::kLast, &logits).ok());
  st = {ok, 0, nullptr};
  EXPECT_FALSE(m->Forward(std::span<const SequenceStep>(&st, 1), LogitsMode::kLast, &logits).ok());
  EXPECT_FALSE(m->Forward({}, LogitsMode::kLast, &logits).ok());
}

TEST(ModelTest, FingerprintIsStableAndChangesWithTheWeightsHeader) {
  TempDir dir;
  TinyModelOptions o = SmallOptions();
  auto a = MakeModel(dir, o, "a");
  auto b = MakeModel(dir, o, "b");
  o.dtype = kernels::DType::kBF16;
  auto c = MakeModel(dir, o, "c");
  o = SmallOptions();
  o.rope_theta = 20000.0;
  auto d = MakeModel(dir, o, "d");
  ASSERT_TRUE(a && b && c && d);
  EXPECT_EQ(a->fingerprint().size(), 16u);
  EXPECT_EQ(a->fingerprint().find_first_not_of("0123456789abcdef"), std::string::npos);
  EXPECT_EQ(a->fingerprint(), b->fingerprint());
  EXPECT_NE(a->fingerprint(), c->fingerprint());
  EXPECT_NE(a->fingerprint(), d->fingerprint());
}

// Weights retrained under the same config and tensor shapes (a new reader, shipped in place) get
// another fingerprint, so KV the old weights made (the context cache's stored blocks) is refused
// rather than mixed in. Before, only the config and the tensor headers were hashed: equal here.
TEST(ModelTest, FingerprintChangesWithTheWeightsValues) {
  TempDir dir;
  TinyModelOptions o = SmallOptions();
  auto a = MakeModel(dir, o, "a");
  o.seed = o.seed + 1;
  auto e = MakeModel(dir, o, "e");
  ASSERT_TRUE(a && e);
  EXPECT_NE(a->fingerprint(), e->fingerprint());
}

TEST(ModelTest, BytesReadPerTokenCountsEveryMatrixOnce) {
  TempDir dir;
  const TinyModelOptions o = SmallOptions();
  auto m = MakeModel(dir, o);
  ASSERT_NE(m, nullptr);
  // All params but the embedding table, plus one embedding row, 4 bytes each.
  const int64_t want =
      (TinyModelParams(o) - int64_t{o.vocab_size} * o.hidden_size + o.hidden_size) * 4;
  EXPECT_EQ(m->weights().BytesReadPerToken(), want);
  EXPECT_EQ(m->weights().num_params(), TinyModelParams(o));
}

}  // namespace
}  // namespace ragserve::engine
