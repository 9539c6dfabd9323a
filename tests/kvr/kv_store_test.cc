#include "services/kvr/kv_store.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "tests/support/kvr_synthetic.h"

namespace ragserve::kvr {
namespace {

// Reads (layer, head) back as f32 k and v rows.
void ReadHead(const KvStore& store, const std::string& seq, int layer, int head,
              std::vector<float>* k, std::vector<float>* v) {
  ASSERT_TRUE(store
                  .WithHead(seq, layer, head,
                            [&](const HeadView& view) {
                              k->resize(static_cast<size_t>(view.n) * view.d);
                              v->resize(static_cast<size_t>(view.n) * view.d);
                              CopyRows(view, 0, view.n, k->data(), v->data());
                            })
                  .ok());
}

TEST(KvStoreTest, AppendedChunksReadBackPerHeadInOrder) {
  KvStore store;
  SequenceSpec spec{.num_layers = 2, .num_kv_heads = 3, .head_dim = 8};
  ASSERT_TRUE(store.CreateSequence("s", spec).ok());
  const int H = 3, d = 8;
  std::vector<float> all_k, all_v;
  int64_t total = 0;
  for (int chunk : {5, 1, 300}) {
    auto k = RandomNormal(static_cast<size_t>(chunk) * H * d, 10 + chunk);
    auto v = RandomNormal(static_cast<size_t>(chunk) * H * d, 20 + chunk);
    ASSERT_TRUE(store.Append("s", 1, chunk, k.data(), v.data()).ok());
    all_k.insert(all_k.end(), k.begin(), k.end());
    all_v.insert(all_v.end(), v.begin(), v.end());
    total += chunk;
  }
  EXPECT_EQ(*store.NumTokens("s", 1), total);
  EXPECT_EQ(*store.NumTokens("s", 0), 0);
  for (int head = 0; head < H; ++head) {
    std::vector<float> k, v;
    ReadHead(store, "s", 1, head, &k, &v);
    ASSERT_EQ(static_cast<int64_t>(k.size()), total * d);
    for (int64_t t = 0; t < total; ++t) {
      for (int j = 0; j < d; ++j) {
        ASSERT_EQ(k[t * d + j], all_k[(t * H + head) * d + j]) << "t=" << t << " head=" << head;
        ASSERT_EQ(v[t * d + j], all_v[(t * H + head) * d + j]);
      }
    }
  }
}

TEST(KvStoreTest, F16StorageRoundsWithinHalfPrecisionAndHalvesBytes) {
  KvStoreOptions opt;
  opt.chunk_tokens = 16;
  KvStore store(opt);
  const int d = 16, n = 40;
  ASSERT_TRUE(
      store
          .CreateSequence(
              "a", {.num_layers = 1, .num_kv_heads = 1, .head_dim = d, .dtype = KvDtype::kF16})
          .ok());
  ASSERT_TRUE(store.CreateSequence("b", {.num_layers = 1, .num_kv_heads = 1, .head_dim = d}).ok());
  auto k = RandomNormal(n * d, 1), v = RandomNormal(n * d, 2);
  ASSERT_TRUE(store.Append("a", 0, n, k.data(), v.data()).ok());
  const int64_t bytes_a = store.bytes_used();
  ASSERT_TRUE(store.Append("b", 0, n, k.data(), v.data()).ok());
  const int64_t bytes_b = store.bytes_used() - bytes_a;
  // Capacity rounds up to whole chunks: 48 tokens x d x (K+V) x element size.
  EXPECT_EQ(bytes_a, 48 * d * 2 * 2);
  EXPECT_EQ(bytes_b, 48 * d * 2 * 4);
  std::vector<float> kr, vr;
  ReadHead(store, "a", 0, 0, &kr, &vr);
  for (int i = 0; i < n * d; ++i) {
    EXPECT_NEAR(kr[i], k[i], std::fabs(k[i]) * 1e-3f + 1e-4f);
    EXPECT_NEAR(vr[i], v[i], std::fabs(v[i]) * 1e-3f + 1e-4f);
  }
  EXPECT_EQ(HalfToFloat(FloatToHalf(1.5f)), 1.5f);
  EXPECT_EQ(HalfToFloat(FloatToHalf(-65504.0f)), -65504.0f);
}

TEST(KvStoreTest, OverMemoryLimitIsResourceExhaustedAndStoresNothing) {
  KvStoreOptions opt;
  opt.chunk_tokens = 8;
  opt.memory_limit_bytes = 8 * 4 * 2 * 4 * 3;  // three chunks of 8 tokens, d=4, f32, K+V
  KvStore store(opt);
  ASSERT_TRUE(store.CreateSequence("s", {.num_layers = 1, .num_kv_heads = 1, .head_dim = 4}).ok());
  auto k = RandomNormal(100 * 4, 3), v = RandomNormal(100 * 4, 4);
  ASSERT_TRUE(store.Append("s", 0, 20, k.data(), v.data()).ok());
  const int64_t before = store.bytes_used();
  const Status s = store.Append("s", 0, 10, k.data(), v.data());
  EXPECT_EQ(s.code(), StatusCode::kResourceExhausted) << s.message();
  EXPECT_NE(s.message().find("memory limit"), std::string::npos) << s.message();
  EXPECT_EQ(*store.NumTokens("s", 0), 20);
  EXPECT_EQ(store.bytes_used(), before);
  // Within the last allocated chunk an append still fits.
  ASSERT_TRUE(store.Append("s", 0, 4, k.data(), v.data()).ok());
  EXPECT_EQ(*store.NumTokens("s", 0), 24);
  std::vector<float> kr, vr;
  ReadHead(store, "s", 0, 0, &kr, &vr);
  for (int i = 0; i < 20 * 4; ++i) ASSERT_EQ(kr[i], k[i]);
  for (int i = 0; i < 4 * 4; ++i) ASSERT_EQ(kr[80 + i], k[i]);
}

TEST(KvStoreTest, NonFiniteAppendIsRejectedAndStoresNothing) {
  KvStore store;
  ASSERT_TRUE(store.CreateSequence("s", {.num_layers = 1, .num_kv_heads = 2, .head_dim = 4}).ok());
  auto k = RandomNormal(3 * 2 * 4, 5), v = RandomNormal(3 * 2 * 4, 6);
  k[13] = std::numeric_limits<float>::quiet_NaN();
  Status s = store.Append("s", 0, 3, k.data(), v.data());
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("element 13"), std::string::npos) << s.message();
  k[13] = 0;
  v[2] = std::numeric_limits<float>::infinity();
  EXPECT_EQ(store.Append("s", 0, 3, k.data(), v.data()).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(*store.NumTokens("s", 0), 0);
  EXPECT_EQ(store.bytes_used(), 0);
}

TEST(KvStoreTest, BadArgumentsNameTheValue) {
  KvStore store;
  EXPECT_EQ(store.CreateSequence("", {}).code(), StatusCode::kInvalidArgument);
  Status s = store.CreateSequence("x", {.num_layers = 1, .num_kv_heads = 1, .head_dim = 0});
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("head_dim"), std::string::npos);
  ASSERT_TRUE(store.CreateSequence("s", {.num_layers = 2, .num_kv_heads = 1, .head_dim = 4}).ok());
  EXPECT_EQ(store.CreateSequence("s", {}).code(), StatusCode::kAlreadyExists);
  std::vector<float> k(8, 1.0f), v(8, 1.0f);
  s = store.Append("s", 2, 2, k.data(), v.data());
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("layer 2"), std::string::npos) << s.message();
  EXPECT_EQ(store.Append("s", 0, 0, k.data(), v.data()).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(store.WithHead("s", 0, 1, [](const HeadView&) {}).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(store.Append("nope", 0, 2, k.data(), v.data()).code(), StatusCode::kNotFound);
  EXPECT_EQ(store.NumTokens("nope", 0).status().code(), StatusCode::kNotFound);
}

TEST(KvStoreTest, ReleaseFreesBytesAndLaterUseIsFailedPrecondition) {
  KvStore store;
  ASSERT_TRUE(store.CreateSequence("s", {.num_layers = 1, .num_kv_heads = 1, .head_dim = 4}).ok());
  ASSERT_TRUE(store.CreateSequence("t", {.num_layers = 1, .num_kv_heads = 1, .head_dim = 4}).ok());
  std::vector<float> k(40, 1.0f), v(40, 2.0f);
  ASSERT_TRUE(store.Append("s", 0, 10, k.data(), v.data()).ok());
  ASSERT_TRUE(store.Append("t", 0, 10, k.data(), v.data()).ok());
  const int64_t t_bytes = *store.SequenceBytes("t");
  EXPECT_GT(t_bytes, 0);
  ASSERT_TRUE(store.Release("s").ok());
  EXPECT_EQ(store.bytes_used(), t_bytes);
  EXPECT_EQ(store.num_sequences(), 1);
  EXPECT_EQ(store.Append("s", 0, 10, k.data(), v.data()).code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(store.WithHead("s", 0, 0, [](const HeadView&) {}).code(),
            StatusCode::kFailedPrecondition);
  EXPECT_EQ(store.Release("s").code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(store.Release("never").code(), StatusCode::kNotFound);
  EXPECT_EQ(*store.NumTokens("t", 0), 10);  // the other sequence is untouched
  // A released id can be created again, empty.
  ASSERT_TRUE(store.CreateSequence("s", {.num_layers = 1, .num_kv_heads = 1, .head_dim = 4}).ok());
  EXPECT_EQ(*store.NumTokens("s", 0), 0);
}

TEST(KvStoreTest, IdleSequencesExpireAfterTtl) {
  int64_t now = 1000;
  KvStoreOptions opt;
  opt.ttl_ms = 500;
  opt.now_ms = [&now] { return now; };
  KvStore store(opt);
  ASSERT_TRUE(
      store.CreateSequence("old", {.num_layers = 1, .num_kv_heads = 1, .head_dim = 4}).ok());
  ASSERT_TRUE(
      store.CreateSequence("busy", {.num_layers = 1, .num_kv_heads = 1, .head_dim = 4}).ok());
  std::vector<float> k(4, 1.0f), v(4, 1.0f);
  ASSERT_TRUE(store.Append("old", 0, 1, k.data(), v.data()).ok());
  now = 1400;
  ASSERT_TRUE(store.Append("busy", 0, 1, k.data(), v.data()).ok());
  now = 1600;
  EXPECT_EQ(store.ExpireIdle(), 1);
  EXPECT_EQ(store.NumTokens("old", 0).status().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(*store.NumTokens("busy", 0), 1);
  now = 2000;  // the NumTokens read above does not refresh; WithHead does
  ASSERT_TRUE(store.WithHead("busy", 0, 0, [](const HeadView&) {}).ok());
  now = 2400;
  EXPECT_EQ(store.ExpireIdle(), 0);
  now = 2600;
  EXPECT_EQ(store.ExpireIdle(), 1);
  EXPECT_EQ(store.bytes_used(), 0);
}

}  // namespace
}  // namespace ragserve::kvr
