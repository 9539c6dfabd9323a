// Exact merge of partial attentions (the RetrievalAttention combination rule): attention split
// into disjoint key sets and merged from (o, lse) equals full attention.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/cpu/attention.h"

namespace ragserve::kvr {
namespace {

// Double-precision full attention for h heads.
void FullAttentionRef(const std::vector<float>& q, int h, const std::vector<float>& k,
                      const std::vector<float>& v, int64_t n, int d, float scale,
                      std::vector<double>* o, std::vector<double>* lse) {
  o->assign(static_cast<size_t>(h) * d, 0.0);
  lse->assign(h, 0.0);
  for (int hh = 0; hh < h; ++hh) {
    std::vector<double> s(n);
    double mx = -1e300;
    for (int64_t j = 0; j < n; ++j) {
      double dot = 0;
      for (int i = 0; i < d; ++i) dot += double(q[hh * d + i]) * k[j * d + i];
      s[j] = scale * dot;
      mx = std::max(mx, s[j]);
    }
    double sum = 0;
    for (int64_t j = 0; j < n; ++j) sum += std::exp(s[j] - mx);
    for (int64_t j = 0; j < n; ++j) {
      const double p = std::exp(s[j] - mx) / sum;
      for (int i = 0; i < d; ++i) (*o)[hh * d + i] += p * v[j * d + i];
    }
    (*lse)[hh] = mx + std::log(sum);
  }
}

TEST(MergeTest, ThreeWayRandomSplitEqualsFullAttentionWithin1e5) {
  for (uint64_t seed : {1, 2, 3}) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> n01;
    const int h = 4, d = 64;
    const int64_t n = 3000;
    std::vector<float> q(h * d), k(n * d), v(n * d);
    for (auto& x : q) x = 2.0f * n01(rng);  // peaked softmax
    for (auto& x : k) x = n01(rng);
    for (auto& x : v) x = n01(rng);
    const float scale = 1.0f / std::sqrt(static_cast<float>(d));
    // Disjoint split: a contiguous prefix, a random gathered subset, the rest gathered.
    std::vector<int64_t> perm(n - 500);
    std::iota(perm.begin(), perm.end(), 500);
    std::shuffle(perm.begin(), perm.end(), rng);
    std::vector<int64_t> a(perm.begin(), perm.begin() + 100), b(perm.begin() + 100, perm.end());
    std::vector<float> o(h * d), lse(h), o1(h * d), lse1(h);
    kernels::AttentionPartial(q.data(), h, k.data(), d, v.data(), d, 500, d, scale, o.data(),
                              lse.data());
    kernels::AttentionPartialGather(q.data(), h, k.data(), d, v.data(), d, a.data(), a.size(), d,
                                    scale, o1.data(), lse1.data());
    kernels::MergePartial(o.data(), lse.data(), o1.data(), lse1.data(), h, d);
    kernels::AttentionPartialGather(q.data(), h, k.data(), d, v.data(), d, b.data(), b.size(), d,
                                    scale, o1.data(), lse1.data());
    kernels::MergePartial(o.data(), lse.data(), o1.data(), lse1.data(), h, d);
    std::vector<double> oref, lref;
    FullAttentionRef(q, h, k, v, n, d, scale, &oref, &lref);
    for (int i = 0; i < h * d; ++i) ASSERT_NEAR(o[i], oref[i], 1e-5) << "seed " << seed;
    for (int i = 0; i < h; ++i) ASSERT_NEAR(lse[i], lref[i], 1e-5 * std::fabs(lref[i]) + 1e-5);
  }
}

TEST(MergeTest, MergingWithAnEmptyPartialIsIdentity) {
  const int h = 2, d = 8;
  std::vector<float> o(h * d, 0.5f), lse = {1.0f, -2.0f};
  std::vector<float> oe(h * d), le(h);
  kernels::AttentionPartial(nullptr, h, nullptr, d, nullptr, d, 0, d, 1.0f, oe.data(), le.data());
  EXPECT_TRUE(std::isinf(le[0]) && le[0] < 0);
  kernels::MergePartial(o.data(), lse.data(), oe.data(), le.data(), h, d);
  EXPECT_EQ(lse[0], 1.0f);
  EXPECT_EQ(lse[1], -2.0f);
  for (float x : o) EXPECT_EQ(x, 0.5f);
}

}  // namespace
}  // namespace ragserve::kvr
