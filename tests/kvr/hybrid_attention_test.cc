// HybridAttention: static sinks + window attended exactly, the middle through a key index,
// merged exactly from (o, lse).
#include "services/kvr/hybrid_attention.h"

#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>
#include <numeric>
#include <random>
#include <set>
#include <vector>

#include "index/index_factory.h"
#include "kernels/cpu/attention.h"
#include "tests/support/kvr_synthetic.h"

namespace ragserve::kvr {
namespace {

double MaxAbsDiff(const std::vector<float>& a, const std::vector<float>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(double(a[i]) - b[i]));
  return m;
}

// A sequence of n random tokens, 1 layer, `heads` kv heads.
void Fill(KvStore* store, const std::string& seq, int64_t n, int heads, int d, KvDtype dtype,
          uint64_t seed) {
  ASSERT_TRUE(store
                  ->CreateSequence(
                      seq, {.num_layers = 1, .num_kv_heads = heads, .head_dim = d, .dtype = dtype})
                  .ok());
  auto k = RandomNormal(n * heads * d, seed), v = RandomNormal(n * heads * d, seed + 1);
  ASSERT_TRUE(store->Append(seq, 0, n, k.data(), v.data()).ok());
}

TEST(HybridAttentionTest, TopKCoveringEveryKeyEqualsFullAttention) {
  for (KvDtype dtype : {KvDtype::kF32, KvDtype::kF16}) {
    for (KeyIndexKind kind : {KeyIndexKind::kExact, KeyIndexKind::kHnsw, KeyIndexKind::kIvf,
                              KeyIndexKind::kAttentionAware}) {
      KvStore store;
      const int d = 32, h = 4;
      const int64_t n = 700;
      Fill(&store, "s", n, 2, d, dtype, 11);
      HybridOptions opt;
      opt.sink_tokens = 16;
      opt.window_tokens = 64;
      opt.index_kind = kind;
      HybridAttention ha(&store, opt);
      auto pq = RandomNormal(n * h * d, 5);
      ASSERT_TRUE(ha.BuildIndex("s", 0, 1, n, h, pq.data()).ok());
      auto q = RandomNormal(h * d, 9, 0.5f);
      std::vector<float> o(h * d), lse(h), of(h * d), lf(h);
      AttendStats st;
      ASSERT_TRUE(ha.Attend("s", 0, 1, q.data(), h, d, {.top_k = static_cast<int>(n)}, o.data(),
                            lse.data(), &st)
                      .ok());
      ASSERT_TRUE(ha.AttendFull("s", 0, 1, q.data(), h, d, of.data(), lf.data()).ok());
      EXPECT_LT(MaxAbsDiff(o, of), 1e-5) << KeyIndexKindName(kind);
      EXPECT_LT(MaxAbsDiff(lse, lf), 1e-5);
      EXPECT_EQ(st.static_keys, 16 + 64);
      EXPECT_EQ(st.middle_keys, n - 80);
      EXPECT_EQ(st.retrieved_keys, n - 80);
    }
  }
}

// Reference: static set + the union of the exact per-head top-k of the middle, in double.
void ReferenceHybrid(const std::vector<float>& k, const std::vector<float>& v, int64_t n, int d,
                     const std::vector<float>& q, int h, int64_t S, int64_t W, int top_k,
                     std::vector<double>* o) {
  std::set<int64_t> keep;
  for (int64_t t = 0; t < n; ++t) {
    if (t < S || t >= n - W) keep.insert(t);
  }
  for (int hh = 0; hh < h; ++hh) {
    std::vector<std::pair<double, int64_t>> s;
    for (int64_t t = S; t < n - W; ++t) {
      double dot = 0;
      for (int i = 0; i < d; ++i) dot += double(q[hh * d + i]) * k[t * d + i];
      s.emplace_back(dot, t);
    }
    std::sort(s.rbegin(), s.rend());
    for (int i = 0; i < top_k; ++i) keep.insert(s[i].second);
  }
  o->assign(h * d, 0.0);
  const double scale = 1.0 / std::sqrt(double(d));
  for (int hh = 0; hh < h; ++hh) {
    double mx = -1e300;
    std::vector<double> sc;
    for (int64_t t : keep) {
      double dot = 0;
      for (int i = 0; i < d; ++i) dot += double(q[hh * d + i]) * k[t * d + i];
      sc.push_back(scale * dot);
      mx = std::max(mx, sc.back());
    }
    double sum = 0;
    for (double x : sc) sum += std::exp(x - mx);
    size_t j = 0;
    for (int64_t t : keep) {
      const double p = std::exp(sc[j++] - mx) / sum;
      for (int i = 0; i < d; ++i) (*o)[hh * d + i] += p * v[t * d + i];
    }
  }
}

TEST(HybridAttentionTest, ExactIndexTopKEqualsStaticPlusUnionOfPerHeadTopK) {
  KvStore store;
  const int d = 16, h = 3, top_k = 10;
  const int64_t n = 400, S = 8, W = 32;
  ASSERT_TRUE(store.CreateSequence("s", {.num_layers = 1, .num_kv_heads = 1, .head_dim = d}).ok());
  auto k = RandomNormal(n * d, 21), v = RandomNormal(n * d, 22);
  ASSERT_TRUE(store.Append("s", 0, n, k.data(), v.data()).ok());
  HybridAttention ha(&store,
                     {.sink_tokens = S, .window_tokens = W, .index_kind = KeyIndexKind::kExact});
  ASSERT_TRUE(ha.BuildIndex("s", 0, 0, 0, h, nullptr).ok());
  auto q = RandomNormal(h * d, 23);
  std::vector<float> o(h * d), lse(h);
  AttendStats st;
  ASSERT_TRUE(
      ha.Attend("s", 0, 0, q.data(), h, d, {.top_k = top_k}, o.data(), lse.data(), &st).ok());
  std::vector<double> ref;
  ReferenceHybrid(k, v, n, d, q, h, S, W, top_k, &ref);
  for (int i = 0; i < h * d; ++i) EXPECT_NEAR(o[i], ref[i], 1e-5);
  EXPECT_GE(st.retrieved_keys, top_k);
  EXPECT_LE(st.retrieved_keys, h * top_k);
  EXPECT_EQ(st.keys_scored, h * (n - S - W));
  // retrieved_only + the static part merged by the caller gives the same result.
  std::vector<float> o_r(h * d), l_r(h), o_s(h * d), l_s(h), o_w(h * d), l_w(h);
  ASSERT_TRUE(ha.Attend("s", 0, 0, q.data(), h, d, {.top_k = top_k, .retrieved_only = true},
                        o_r.data(), l_r.data())
                  .ok());
  const float scale = 1.0f / std::sqrt(float(d));
  kernels::AttentionPartial(q.data(), h, k.data(), d, v.data(), d, S, d, scale, o_s.data(),
                            l_s.data());
  kernels::AttentionPartial(q.data(), h, k.data() + (n - W) * d, d, v.data() + (n - W) * d, d, W, d,
                            scale, o_w.data(), l_w.data());
  kernels::MergePartial(o_r.data(), l_r.data(), o_s.data(), l_s.data(), h, d);
  kernels::MergePartial(o_r.data(), l_r.data(), o_w.data(), l_w.data(), h, d);
  EXPECT_LT(MaxAbsDiff(o_r, o), 1e-5);
  EXPECT_LT(MaxAbsDiff(l_r, lse), 1e-5);
}

TEST(HybridAttentionTest, AttentionAwareOutputWithinOnePercentOfFullOnOodWorkload) {
  SyntheticParams p;
  p.n_keys = 8192;
  p.n_topics = 4;
  p.n_decode = 8;
  p.seed = 3;
  auto w = GenerateWorkload(p).value();
  const int d = p.head_dim, h = p.group_size;
  KvStore store;
  ASSERT_TRUE(store.CreateSequence("s", {.num_layers = 1, .num_kv_heads = 1, .head_dim = d}).ok());
  ASSERT_TRUE(store.Append("s", 0, p.n_keys, w.keys.data(), w.values.data()).ok());
  HybridOptions opt;
  opt.attention_aware.max_build_queries = 4096;
  HybridAttention ha(&store, opt);
  ASSERT_TRUE(ha.BuildIndex("s", 0, 0, p.n_keys, h, w.prefill_queries.data()).ok());
  double worst = 0;
  AttendStats st;
  for (int64_t s = 0; s < p.n_decode; ++s) {
    const float* q = w.decode_queries.data() + s * h * d;
    std::vector<float> o(h * d), lse(h), of(h * d), lf(h);
    ASSERT_TRUE(ha.Attend("s", 0, 0, q, h, d, {.top_k = 100}, o.data(), lse.data(), &st).ok());
    ASSERT_TRUE(ha.AttendFull("s", 0, 0, q, h, d, of.data(), lf.data()).ok());
    for (int j = 0; j < h; ++j) {
      double num = 0, den = 0;
      for (int i = 0; i < d; ++i) {
        num += std::pow(o[j * d + i] - of[j * d + i], 2);
        den += std::pow(of[j * d + i], 2);
      }
      worst = std::max(worst, std::sqrt(num / den));
    }
  }
  EXPECT_LT(worst, 0.01);
  // Keys scored per query head, as a fraction of the middle.
  EXPECT_LT(static_cast<double>(st.keys_scored) / (st.middle_keys * h), 0.2);
}

TEST(HybridAttentionTest, TokensLeavingTheWindowAreInsertedAndRetrievable) {
  for (KeyIndexKind kind : {KeyIndexKind::kExact, KeyIndexKind::kHnsw, KeyIndexKind::kIvf,
                            KeyIndexKind::kAttentionAware}) {
    KvStore store;
    const int d = 16, h = 2;
    const int64_t n = 600, S = 4, W = 16;
    ASSERT_TRUE(
        store.CreateSequence("s", {.num_layers = 1, .num_kv_heads = 1, .head_dim = d}).ok());
    auto k = RandomNormal(n * d, 31), v = RandomNormal(n * d, 32);
    ASSERT_TRUE(store.Append("s", 0, n, k.data(), v.data()).ok());
    HybridAttention ha(&store, {.sink_tokens = S, .window_tokens = W, .index_kind = kind});
    auto pq = RandomNormal(n * h * d, 33);
    ASSERT_TRUE(ha.BuildIndex("s", 0, 0, n, h, pq.data()).ok());
    // Decode 40 tokens; token 610 has a key far larger than any other.
    for (int64_t t = n; t < n + 40; ++t) {
      auto kt = RandomNormal(d, 100 + t, t == 610 ? 30.0f : 1.0f), vt = RandomNormal(d, 200 + t);
      ASSERT_TRUE(store.Append("s", 0, 1, kt.data(), vt.data()).ok());
      std::vector<float> o(h * d), lse(h);
      auto q = RandomNormal(h * d, 300 + t);
      ASSERT_TRUE(ha.Attend("s", 0, 0, q.data(), h, d, {.top_k = 8}, o.data(), lse.data()).ok())
          << KeyIndexKindName(kind);
    }
    // 640 tokens: the middle is [4, 624), so token 610 has left the window and is indexed.
    auto big = RandomNormal(d, 100 + 610, 30.0f);
    std::vector<float> q(h * d);
    for (int j = 0; j < h; ++j) std::copy(big.begin(), big.end(), q.begin() + j * d);
    std::vector<int64_t> ids(h * 8);
    ASSERT_TRUE(ha.Retrieve("s", 0, 0, q.data(), h, d, {.top_k = 8}, ids.data()).ok());
    EXPECT_EQ(ids[0], 610) << KeyIndexKindName(kind);
    EXPECT_EQ(ids[8], 610) << KeyIndexKindName(kind);
    for (int64_t id : ids) EXPECT_TRUE(id == -1 || (id >= S && id < 640 - W)) << id;
  }
}

// Every key index kind the store builds (MakeKeyIndex) saves to one checksummed file that
// LoadIndex reads back: the same kind, size, results and search cost.
TEST(HybridAttentionTest, EveryKeyIndexKindSavesAndLoads) {
  SyntheticParams p;
  p.n_keys = 2048;
  p.n_topics = 2;
  p.n_decode = 4;
  p.seed = 5;
  auto w = GenerateWorkload(p).value();
  const int d = p.head_dim, h = p.group_size, k = 32;
  const int64_t nq = p.n_decode * h;
  std::vector<int64_t> ids(p.n_keys);
  std::iota(ids.begin(), ids.end(), 0);
  const std::string path = (std::filesystem::temp_directory_path() /
                            ("kvr_key_index_" + std::to_string(::getpid()) + ".idx"))
                               .string();
  auto search = [&](const index::VectorIndex& idx, std::vector<int64_t>* got) {
    index::SearchStats st;
    index::SearchParams sp;
    sp.stats = &st;
    std::vector<float> dist(nq * k);
    got->assign(nq * k, -2);
    EXPECT_TRUE(idx.search(nq, w.decode_queries.data(), k, dist.data(), got->data(), sp).ok());
    return st.scored;
  };
  for (KeyIndexKind kind : {KeyIndexKind::kExact, KeyIndexKind::kHnsw, KeyIndexKind::kIvf,
                            KeyIndexKind::kAttentionAware}) {
    SCOPED_TRACE(KeyIndexKindName(kind));
    HybridOptions opt;
    opt.index_kind = kind;
    auto built = MakeKeyIndex(opt, d, p.n_keys, w.keys.data(), ids.data(), p.n_keys * h,
                              w.prefill_queries.data());
    ASSERT_TRUE(built.ok()) << built.status().ToString();
    ASSERT_TRUE((*built)->save(path).ok());
    auto loaded = index::LoadIndex(path);
    ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
    EXPECT_EQ((*loaded)->kind(), (*built)->kind());
    EXPECT_EQ((*loaded)->metric(), index::Metric::kInnerProduct);
    EXPECT_EQ((*loaded)->size(), p.n_keys);
    std::vector<int64_t> a, b;
    const int64_t scored = search(**built, &a);
    EXPECT_GT(scored, 0);
    EXPECT_EQ(search(**loaded, &b), scored);
    EXPECT_EQ(a, b);
  }
  std::filesystem::remove(path);
}

TEST(HybridAttentionTest, BadInputIsAClearErrorAndChangesNothing) {
  KvStore store;
  const int d = 8, h = 2;
  Fill(&store, "s", 100, 1, d, KvDtype::kF32, 41);
  HybridAttention ha(
      &store, {.sink_tokens = 4, .window_tokens = 8, .index_kind = KeyIndexKind::kAttentionAware});
  auto q = RandomNormal(h * d, 42);
  std::vector<float> o(h * d), lse(h);
  auto attend = [&](const std::string& seq, int head_dim, int top_k, const float* qq) {
    return ha.Attend(seq, 0, 0, qq, h, head_dim, {.top_k = top_k}, o.data(), lse.data());
  };
  EXPECT_EQ(attend("nope", d, 5, q.data()).code(), StatusCode::kNotFound);
  Status s = attend("s", d + 1, 5, q.data());
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("head_dim 9"), std::string::npos) << s.message();
  EXPECT_EQ(attend("s", d, 0, q.data()).code(), StatusCode::kInvalidArgument);
  s = attend("s", d, 101, q.data());
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("101"), std::string::npos) << s.message();
  auto bad = q;
  bad[3] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(attend("s", d, 5, bad.data()).code(), StatusCode::kInvalidArgument);
  // Attention-aware without prefill queries: building is refused, attending needs an index.
  EXPECT_EQ(ha.BuildIndex("s", 0, 0, 0, h, nullptr).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(attend("s", d, 5, q.data()).code(), StatusCode::kFailedPrecondition);
  EXPECT_TRUE(attend("s", d, 100, q.data()).ok());  // top_k covers the middle: exact
  EXPECT_EQ(ha.Attend("s", 0, 3, q.data(), h, d, {.top_k = 5}, o.data(), lse.data()).code(),
            StatusCode::kInvalidArgument);
  // After release: FailedPrecondition, and the store's bytes are back to zero.
  auto pq = RandomNormal(100 * h * d, 43);
  ASSERT_TRUE(ha.BuildIndex("s", 0, 0, 100, h, pq.data()).ok());
  EXPECT_TRUE(attend("s", d, 5, q.data()).ok());
  ASSERT_TRUE(store.Release("s").ok());
  ha.Drop("s");
  EXPECT_FALSE(ha.HasIndex("s", 0, 0));
  EXPECT_EQ(attend("s", d, 5, q.data()).code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(store.bytes_used(), 0);
}

}  // namespace
}  // namespace ragserve::kvr
