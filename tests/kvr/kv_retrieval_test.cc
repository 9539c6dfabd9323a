// KvRetrieval (the library behind ragserve-kvr): GQA head mapping, streamed prefill-query
// subsampling independent of chunking, TTL release, config validation, key index memory in the
// byte accounting and the memory limit.
#include "services/kvr/kv_retrieval.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "tests/support/kvr_synthetic.h"

namespace ragserve::kvr {
namespace {

constexpr int kKv = 2, kHq = 8, kD = 16;
constexpr int64_t kN = 1200;

SequenceConfig Config(KeyIndexKind kind) {
  SequenceConfig c;
  c.kv = {.num_layers = 1, .num_kv_heads = kKv, .head_dim = kD};
  c.num_q_heads = kHq;
  c.sink_tokens = 8;
  c.window_tokens = 32;
  c.index_kind = static_cast<int>(kind);
  return c;
}

KvRetrievalOptions SmallBuild() {
  KvRetrievalOptions o;
  o.defaults.attention_aware.max_build_queries = 64;  // 16 tokens per kv head: forces thinning
  return o;
}

// Creates "s" with kN tokens, prefill queries streamed in chunks of `chunk` tokens.
void Fill(KvRetrieval* kvr, int64_t chunk, KeyIndexKind kind) {
  ASSERT_TRUE(kvr->Create("s", Config(kind)).ok());
  auto k = RandomNormal(kN * kKv * kD, 1), v = RandomNormal(kN * kKv * kD, 2);
  auto q = RandomNormal(kN * kHq * kD, 3);
  ASSERT_TRUE(kvr->AppendKv("s", 0, kN, k.data(), v.data()).ok());
  for (int64_t t = 0; t < kN; t += chunk) {
    const int64_t n = std::min(chunk, kN - t);
    ASSERT_TRUE(kvr->AddPrefillQueries("s", 0, n, q.data() + t * kHq * kD).ok());
  }
  ASSERT_TRUE(kvr->FinishPrefill("s").ok());
}

TEST(KvRetrievalTest, PrefillQuerySamplingDoesNotDependOnChunking) {
  KvRetrieval a(SmallBuild()), b(SmallBuild());
  Fill(&a, kN, KeyIndexKind::kAttentionAware);
  Fill(&b, 7, KeyIndexKind::kAttentionAware);
  auto q = RandomNormal(kHq * kD, 9);
  auto ra = a.Attend("s", 0, q.data(), q.size(), {.top_k = 20});
  auto rb = b.Attend("s", 0, q.data(), q.size(), {.top_k = 20});
  ASSERT_TRUE(ra.ok() && rb.ok()) << ra.status().ToString();
  EXPECT_EQ(ra->o, rb->o);
  EXPECT_EQ(ra->lse, rb->lse);
  EXPECT_EQ(ra->keys_scored, rb->keys_scored);
  EXPECT_GT(ra->keys_scored, 0);
  // After FinishPrefill more prefill queries are refused.
  EXPECT_EQ(a.AddPrefillQueries("s", 0, 1, q.data()).code(), StatusCode::kFailedPrecondition);
}

TEST(KvRetrievalTest, QueryHeadsUseTheirGqaKvHead) {
  // With top_k covering every key the result is full attention: query head i must attend kv head
  // i / 4 (checked by moving a query head's vector to another group and seeing it change).
  KvRetrieval kvr;
  Fill(&kvr, 100, KeyIndexKind::kExact);
  auto q = RandomNormal(kHq * kD, 11);
  auto r = kvr.Attend("s", 0, q.data(), q.size(), {.top_k = static_cast<int>(kN)});
  ASSERT_TRUE(r.ok());
  auto q2 = q;
  std::copy(q.begin(), q.begin() + kD, q2.begin() + 4 * kD);  // head 0's query as head 4
  auto r2 = kvr.Attend("s", 0, q2.data(), q2.size(), {.top_k = static_cast<int>(kN)});
  ASSERT_TRUE(r2.ok());
  double diff = 0;
  for (int i = 0; i < kD; ++i) diff += std::fabs(r->o[i] - r2->o[4 * kD + i]);
  EXPECT_GT(diff, 1e-3);  // same query, different kv head -> different output
  for (int h = 1; h < 4; ++h) {
    for (int i = 0; i < kD; ++i) EXPECT_EQ(r->o[h * kD + i], r2->o[h * kD + i]);
  }
  auto bad = kvr.Attend("s", 0, q.data(), q.size() - 1, {.top_k = 5});
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
}

TEST(KvRetrievalTest, IdleSequencesAreReleasedAfterTheirTtl) {
  int64_t now = 0;
  KvRetrievalOptions o;
  o.now_ms = [&now] { return now; };
  o.default_ttl_ms = 1000;
  KvRetrieval kvr(o);
  SequenceConfig c = Config(KeyIndexKind::kExact);
  ASSERT_TRUE(kvr.Create("default", c).ok());
  c.ttl_ms = 0;  // never expires
  ASSERT_TRUE(kvr.Create("forever", c).ok());
  now = 1500;
  EXPECT_EQ(kvr.ExpireIdle(), 1);
  EXPECT_EQ(kvr.NumTokens("default", 0).status().code(), StatusCode::kFailedPrecondition);
  EXPECT_TRUE(kvr.NumTokens("forever", 0).ok());
  EXPECT_EQ(kvr.Stats().sequences, 1);
}

TEST(KvRetrievalTest, BadConfigNamesTheField) {
  KvRetrieval kvr;
  SequenceConfig c = Config(KeyIndexKind::kExact);
  c.num_q_heads = 3;
  Status s = kvr.Create("s", c);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("num_q_heads 3"), std::string::npos) << s.message();
  c = Config(KeyIndexKind::kExact);
  c.index_kind = 9;
  EXPECT_EQ(kvr.Create("s", c).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(kvr.Stats().sequences, 0);
  EXPECT_EQ(kvr.Release("s").status().code(), StatusCode::kNotFound);
}

// kN tokens of K/V and prefill queries in sequence "s" (no FinishPrefill).
void FillNoBuild(KvRetrieval* kvr, KeyIndexKind kind) {
  ASSERT_TRUE(kvr->Create("s", Config(kind)).ok());
  auto k = RandomNormal(kN * kKv * kD, 1), v = RandomNormal(kN * kKv * kD, 2);
  auto q = RandomNormal(kN * kHq * kD, 3);
  ASSERT_TRUE(kvr->AppendKv("s", 0, kN, k.data(), v.data()).ok());
  ASSERT_TRUE(kvr->AddPrefillQueries("s", 0, kN, q.data()).ok());
}

TEST(KvRetrievalTest, KeyIndexMemoryIsChargedAndFreedWithTheSequence) {
  // K/V charge of t tokens: capacity in chunks of 256 tokens * 2 heads * 16 dims * 4 B * (K + V).
  auto kv_bytes = [](int64_t t) { return (t + 255) / 256 * 256 * kKv * kD * 4 * 2; };
  for (KeyIndexKind kind : {KeyIndexKind::kExact, KeyIndexKind::kHnsw, KeyIndexKind::kIvf,
                            KeyIndexKind::kAttentionAware}) {
    SCOPED_TRACE(KeyIndexKindName(kind));
    KvRetrieval kvr;
    ASSERT_NO_FATAL_FAILURE(FillNoBuild(&kvr, kind));
    ASSERT_EQ(kvr.SequenceBytes("s").value(), kv_bytes(kN));
    ASSERT_TRUE(kvr.FinishPrefill("s").ok());
    const int64_t index_bytes = kvr.SequenceBytes("s").value() - kv_bytes(kN);
    // Every kind holds at least its own copy of the middle keys (f32, both kv heads).
    EXPECT_GE(index_bytes, (kN - 8 - 32) * kD * 4 * kKv);
    EXPECT_EQ(kvr.Stats().bytes_used, kv_bytes(kN) + index_bytes);
    // Decoding pushes tokens out of the window into the index: its charge grows with it.
    const int64_t more = 1024;
    auto k = RandomNormal(more * kKv * kD, 4), v = RandomNormal(more * kKv * kD, 5);
    ASSERT_TRUE(kvr.AppendKv("s", 0, more, k.data(), v.data()).ok());
    auto q = RandomNormal(kHq * kD, 6);
    ASSERT_TRUE(kvr.Attend("s", 0, q.data(), q.size(), {.top_k = 10}).ok());
    const int64_t total = kvr.SequenceBytes("s").value();
    EXPECT_GT(total - kv_bytes(kN + more), index_bytes);
    EXPECT_EQ(kvr.Release("s").value(), total);
    EXPECT_EQ(kvr.Stats().bytes_used, 0);
  }
}

TEST(KvRetrievalTest, AnIndexBuildOverTheMemoryLimitFailsAndChangesNothing) {
  // K/V: 1280 tokens of capacity * 2 heads * 16 dims * 4 bytes * (K + V) = 327680 bytes; the
  // exact index's copy of the 1160 middle keys alone needs 148480 more.
  KvRetrievalOptions o;
  o.memory_limit_bytes = 400000;
  KvRetrieval kvr(o);
  ASSERT_NO_FATAL_FAILURE(FillNoBuild(&kvr, KeyIndexKind::kExact));
  const int64_t kv_bytes = kvr.Stats().bytes_used;
  EXPECT_EQ(kv_bytes, 327680);
  auto built = kvr.FinishPrefill("s");
  EXPECT_EQ(built.status().code(), StatusCode::kResourceExhausted);
  EXPECT_NE(built.status().message().find("key index"), std::string::npos)
      << built.status().message();
  EXPECT_EQ(kvr.Stats().bytes_used, kv_bytes);
  EXPECT_EQ(kvr.Release("s").value(), kv_bytes);
  EXPECT_EQ(kvr.Stats().bytes_used, 0);
}

}  // namespace
}  // namespace ragserve::kvr
