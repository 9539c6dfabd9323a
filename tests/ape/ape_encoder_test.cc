// APE encoding on the tiny model: cached passage KV equals recomputing it (RAM and disk tiers),
// one passage joined after the prefix equals sequential encoding, several passages differ from
// sequential and the corrections change the output, bad input is rejected.
#include "services/ctxcache/ape_encoder.h"

#include <gtest/gtest.h>

#include <cmath>
#include <functional>

#include "services/common/rag_template.h"
#include "tests/support/process.h"

namespace ragserve::ctxcache {
namespace {

class ApeEncoderTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(testing::MakeTempDir("ape"));
    std::string error;
    ASSERT_FALSE(testing::MakeTinyModel(*dir_, &error).empty()) << error;
  }
  static void TearDownTestSuite() { delete dir_; }

  void SetUp() override {
    auto m = engine::Model::Load(*dir_ + "/model");
    ASSERT_TRUE(m.ok()) << m.status().ToString();
    model_ = std::move(*m);
    auto t = engine::Tokenizer::FromFile(*dir_ + "/model/tokenizer.json");
    ASSERT_TRUE(t.ok());
    tok_ = std::move(*t);
  }

  std::unique_ptr<ApeEncoder> Encoder(BlockCache* cache, int max_tokens = 2048) {
    ApeSettings s;
    s.prefix = "Answer the question using the passages.\n\n";
    s.max_passage_tokens = max_tokens;
    auto e = ApeEncoder::Create(model_.get(), tok_.get(), cache, s);
    EXPECT_TRUE(e.ok()) << e.status().ToString();
    return e.ok() ? std::move(*e) : nullptr;
  }

  static std::unique_ptr<BlockCache> RamCache(const std::string& disk = "") {
    BlockCacheOptions o;
    o.disk_dir = disk;
    o.async_disk_writes = false;
    auto c = BlockCache::Open(o);
    EXPECT_TRUE(c.ok()) << c.status().ToString();
    return std::move(*c);
  }

  // Last-token logits of `question` after the prefix and `passages` joined by APE.
  std::vector<float> ApeLogits(ApeEncoder* enc, const std::vector<std::string>& passages,
                               const std::string& question, float T, float S) {
    std::vector<std::shared_ptr<const engine::KvBlock>> blocks;
    std::vector<const engine::KvBlock*> raw;
    int64_t longest = 0;
    for (const auto& p : passages) {
      auto e = enc->Encode(p);
      EXPECT_TRUE(e.ok()) << e.status().ToString();
      longest = std::max(longest, e->kv->tokens);
      blocks.push_back(e->kv);
      raw.push_back(e->kv.get());
    }
    auto own = model_->NewKvCache();
    engine::ApeKvSource src(enc->prefix_kv().get(), raw, own.get(), T, S);
    std::vector<float> logits;
    const auto qt = tok_->Encode(question);
    EXPECT_TRUE(
        model_->Prefill(qt, enc->passage_start() + static_cast<int32_t>(longest), &src, 0, &logits)
            .ok());
    return logits;
  }

  // The same tokens prefilled one after another in one causal cache.
  std::vector<float> SequentialLogits(ApeEncoder* enc, const std::vector<std::string>& passages,
                                      const std::string& question) {
    std::vector<int32_t> all = enc->prefix_tokens();
    for (const auto& p : passages) {
      auto t = tok_->Encode(RagPassageText(p));
      all.insert(all.end(), t.begin(), t.end());
    }
    const auto qt = tok_->Encode(question);
    all.insert(all.end(), qt.begin(), qt.end());
    auto cache = model_->NewKvCache();
    std::vector<float> logits;
    EXPECT_TRUE(model_->Prefill(all, 0, cache.get(), 0, &logits).ok());
    return logits;
  }

  static float MaxAbsDiff(const std::vector<float>& a, const std::vector<float>& b) {
    EXPECT_EQ(a.size(), b.size());
    float m = 0;
    for (size_t i = 0; i < a.size() && i < b.size(); ++i) m = std::max(m, std::fabs(a[i] - b[i]));
    return m;
  }

  static std::string* dir_;
  std::unique_ptr<engine::Model> model_;
  std::unique_ptr<engine::Tokenizer> tok_;
};

std::string* ApeEncoderTest::dir_ = nullptr;

const char kP1[] =
    "The lighthouse on Varnholm Island is painted a deep teal and was built in 1871.";
const char kP2[] = "The Nawerk River rises in a ring of low hills and is 1434 kilometres long.";

TEST_F(ApeEncoderTest, CachedPassageKvEqualsRecomputingIt) {
  auto cache = RamCache();
  auto enc = Encoder(cache.get());
  auto first = enc->Encode(kP1);
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  EXPECT_EQ(first->source, CacheSource::kComputed);
  auto again = enc->Encode(kP1);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->source, CacheSource::kRam);
  auto fresh_cache = RamCache();
  auto fresh = Encoder(fresh_cache.get())->Encode(kP1);
  ASSERT_TRUE(fresh.ok());
  EXPECT_EQ(fresh->source, CacheSource::kComputed);
  EXPECT_EQ(first->key, fresh->key);
  for (int l = 0; l < model_->config().num_layers; ++l) {
    EXPECT_EQ(again->kv->k[l], fresh->kv->k[l]) << "layer " << l;
    EXPECT_EQ(again->kv->v[l], fresh->kv->v[l]) << "layer " << l;
  }
  // Positions: right after the prefix, whatever else is served with it.
  EXPECT_EQ(first->kv->positions.front(), enc->passage_start());
}

TEST_F(ApeEncoderTest, DiskTierServesTheSameKvAfterARestart) {
  const std::string disk = testing::MakeTempDir("ape-disk");
  std::vector<float> k0;
  {
    auto cache = RamCache(disk);
    auto e = Encoder(cache.get())->Encode(kP2);
    ASSERT_TRUE(e.ok());
    k0 = e->kv->k[0];
    cache->Flush();
  }
  auto cache = RamCache(disk);
  auto e = Encoder(cache.get())->Encode(kP2);
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->source, CacheSource::kDisk);
  EXPECT_EQ(e->kv->k[0], k0);
}

TEST_F(ApeEncoderTest, OnePassageJoinedAfterThePrefixEqualsSequentialEncoding) {
  auto cache = RamCache();
  auto enc = Encoder(cache.get());
  const std::string q = "Question: What colour is the lighthouse?\nAnswer:";
  const auto ape = ApeLogits(enc.get(), {kP1}, q, 1.0f, 1.0f);
  const auto seq = SequentialLogits(enc.get(), {kP1}, q);
  EXPECT_LT(MaxAbsDiff(ape, seq), 1e-4);
}

TEST_F(ApeEncoderTest, SeveralPassagesDifferFromSequentialAndCorrectionsMatter) {
  auto cache = RamCache();
  auto enc = Encoder(cache.get());
  const std::string q = "Question: How long is the river?\nAnswer:";
  const auto plain = ApeLogits(enc.get(), {kP1, kP2}, q, 1.0f, 1.0f);
  const auto corrected = ApeLogits(enc.get(), {kP1, kP2}, q, 0.9f, 0.9f);
  const auto seq = SequentialLogits(enc.get(), {kP1, kP2}, q);
  EXPECT_GT(MaxAbsDiff(plain, seq), 1e-3);        // passages no longer see each other
  EXPECT_GT(MaxAbsDiff(plain, corrected), 1e-3);  // T and S change the attention
  // Order does not matter in parallel encoding: the passages share positions.
  const auto swapped = ApeLogits(enc.get(), {kP2, kP1}, q, 0.9f, 0.9f);
  EXPECT_LT(MaxAbsDiff(corrected, swapped), 1e-4);
}

TEST_F(ApeEncoderTest, BadPassagesAreRejected) {
  auto cache = RamCache();
  auto enc = Encoder(cache.get(), /*max_tokens=*/8);
  EXPECT_EQ(enc->Encode("").status().code(), StatusCode::kInvalidArgument);
  auto long_one = enc->Encode(std::string(kP1) + " " + kP2);
  EXPECT_EQ(long_one.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(long_one.status().message().find("limit"), std::string::npos)
      << long_one.status().message();
  auto missing = enc->Lookup(KeyId{});
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
}

// A remote lookup (the context-cache service for decoders) stands in for computing a passage only
// when its block is exactly this model's encoding of this passage; anything else is recomputed.
TEST_F(ApeEncoderTest, RemoteBlocksAreUsedOnlyWhenTheyMatchAndFailuresMeanLocalCompute) {
  // The "remote": another encoder's cache holding kP1.
  auto remote_cache = RamCache();
  auto remote_enc = Encoder(remote_cache.get());
  auto ref = remote_enc->Encode(kP1);
  ASSERT_TRUE(ref.ok());
  auto stored = remote_cache->Get(ref->key);
  ASSERT_TRUE(stored.ok());
  ASSERT_EQ(static_cast<int64_t>((*stored)->token_ids.size()), (*stored)->tokens);

  MetricsRegistry reg;
  int calls = 0;
  std::function<StatusOr<StoredBlock>(const StoredBlock&)> serve;
  auto make = [&](BlockCache* cache) {
    auto enc = Encoder(cache);
    enc->SetRemote(
        [&](const KeyId& key, const RemoteExpect& e) -> StatusOr<StoredBlock> {
          ++calls;
          EXPECT_EQ(e.fingerprint, model_->fingerprint());
          EXPECT_EQ(e.layers, model_->config().num_layers);
          auto b = remote_cache->Get(key);
          if (!b.ok()) return b.status();
          return serve(**b);
        },
        &reg);
    return enc;
  };
  auto rejected = [&] {
    return reg.GetCounter("ragserve_ctxcache_remote_rejected_total", "").Value();
  };

  // A matching block is used as it is: source kRemote, the same KV as computing it.
  serve = [](const StoredBlock& b) { return StatusOr<StoredBlock>(b); };
  auto c1 = RamCache();
  auto e1 = make(c1.get());
  auto got = e1->Encode(kP1);
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(got->source, CacheSource::kRemote);
  EXPECT_EQ(calls, 1);
  for (int l = 0; l < model_->config().num_layers; ++l) {
    EXPECT_EQ(got->kv->k[l], ref->kv->k[l]);
    EXPECT_EQ(got->kv->v[l], ref->kv->v[l]);
  }
  // Now local: the remote is not asked again.
  EXPECT_EQ(e1->Encode(kP1)->source, CacheSource::kRam);
  EXPECT_EQ(calls, 1);
  // Absent remotely: computed.
  EXPECT_EQ(e1->Encode(kP2)->source, CacheSource::kComputed);
  EXPECT_EQ(calls, 2);
  EXPECT_EQ(rejected(), 0);

  // Mismatches are rejected and recomputed (each in a fresh local cache).
  const std::vector<std::function<void(StoredBlock*)>> breaks = {
      [](StoredBlock* b) { b->token_ids[0] ^= 1; },               // another tokenization
      [](StoredBlock* b) { b->positions[0] += 1; },               // other positions
      [](StoredBlock* b) { b->fingerprint = "someothermodel"; },  // another model
      [](StoredBlock* b) {                                        // one token short
        b->tokens -= 1;
        b->positions.pop_back();
        b->token_ids.pop_back();
        const size_t row = static_cast<size_t>(b->kv_heads * b->head_dim * 4);
        for (auto& x : b->k) x.resize(x.size() - row);
        for (auto& x : b->v) x.resize(x.size() - row);
      },
  };
  for (size_t i = 0; i < breaks.size(); ++i) {
    serve = [&, i](const StoredBlock& b) {
      StoredBlock copy = b;
      breaks[i](&copy);
      return StatusOr<StoredBlock>(copy);
    };
    auto c = RamCache();
    auto got2 = make(c.get())->Encode(kP1);
    ASSERT_TRUE(got2.ok()) << got2.status().ToString();
    EXPECT_EQ(got2->source, CacheSource::kComputed) << "break " << i;
    EXPECT_EQ(got2->kv->k[0], ref->kv->k[0]);
    EXPECT_EQ(rejected(), static_cast<double>(i + 1));
  }
  // A failing remote: computed, never an error.
  serve = [](const StoredBlock&) {
    return StatusOr<StoredBlock>(Unavailable("connection refused"));
  };
  auto c3 = RamCache();
  auto got3 = make(c3.get())->Encode(kP1);
  ASSERT_TRUE(got3.ok()) << got3.status().ToString();
  EXPECT_EQ(got3->source, CacheSource::kComputed);
}

}  // namespace
}  // namespace ragserve::ctxcache
