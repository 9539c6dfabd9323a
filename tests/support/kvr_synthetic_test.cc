// The synthetic RetrievalAttention workload has the properties the benchmark relies on.
#include "tests/support/kvr_synthetic.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace ragserve::kvr {
namespace {

SyntheticParams Small(uint64_t seed) {
  SyntheticParams p;
  p.n_keys = 4096;
  p.n_topics = 2;  // ~100 salient keys per topic, as at the benchmark's sizes
  p.n_decode = 16;
  p.seed = seed;
  return p;
}

TEST(SyntheticTest, DeterminedBySeed) {
  auto a = GenerateWorkload(Small(5)).value();
  auto b = GenerateWorkload(Small(5)).value();
  auto c = GenerateWorkload(Small(6)).value();
  EXPECT_EQ(a.keys, b.keys);
  EXPECT_EQ(a.decode_queries, b.decode_queries);
  EXPECT_NE(a.keys, c.keys);
  EXPECT_EQ(a.keys.size(), 4096u * 128);
  EXPECT_EQ(a.prefill_queries.size(), 4096u * 4 * 128);
  EXPECT_EQ(a.decode_queries.size(), 16u * 4 * 128);
}

TEST(SyntheticTest, QueriesAreFarOutOfTheKeyDistribution) {
  // Mahalanobis distance under a diagonal fit of the keys: queries are far further from the
  // keys' distribution than held-out keys are (the paper reports > 10x).
  auto w = GenerateWorkload(Small(7)).value();
  const int d = w.head_dim;
  const int64_t n = w.n_keys;
  std::vector<double> mean(d, 0), var(d, 0);
  for (int64_t t = 0; t < n / 2; ++t) {
    for (int i = 0; i < d; ++i) mean[i] += w.keys[t * d + i] / (n / 2.0);
  }
  for (int64_t t = 0; t < n / 2; ++t) {
    for (int i = 0; i < d; ++i) var[i] += std::pow(w.keys[t * d + i] - mean[i], 2) / (n / 2.0);
  }
  auto maha = [&](const float* x) {
    double s = 0;
    for (int i = 0; i < d; ++i) s += std::pow(x[i] - mean[i], 2) / var[i];
    return std::sqrt(s);
  };
  double key_m = 0, query_m = 0;
  for (int64_t t = n / 2; t < n; ++t) key_m += maha(w.keys.data() + t * d) / (n / 2.0);
  const int64_t nq = w.n_decode * w.group_size;
  for (int64_t i = 0; i < nq; ++i) query_m += maha(w.decode_queries.data() + i * d) / nq;
  EXPECT_GT(query_m, 10 * key_m) << "query " << query_m << " key " << key_m;
}

TEST(SyntheticTest, AttentionIsConcentratedOnTheTopHundredKeys) {
  auto w = GenerateWorkload(Small(8)).value();
  const int d = w.head_dim;
  const double scale = 1.0 / std::sqrt(double(d));
  const int64_t nq = w.n_decode * w.group_size;
  double mass = 0;
  for (int64_t i = 0; i < nq; ++i) {
    std::vector<double> s(w.n_keys);
    for (int64_t t = 0; t < w.n_keys; ++t) {
      double dot = 0;
      for (int j = 0; j < d; ++j) dot += double(w.decode_queries[i * d + j]) * w.keys[t * d + j];
      s[t] = scale * dot;
    }
    const double mx = *std::max_element(s.begin(), s.end());
    std::vector<double> p(w.n_keys);
    double sum = 0;
    for (int64_t t = 0; t < w.n_keys; ++t) sum += p[t] = std::exp(s[t] - mx);
    std::sort(p.rbegin(), p.rend());
    double top = 0;
    for (int j = 0; j < 100; ++j) top += p[j];
    mass += top / sum / nq;
  }
  EXPECT_GT(mass, 0.99);  // top-100 of 4096 keys carry > 99% of the softmax mass on average
}

TEST(SyntheticTest, BadParametersAreInvalidArgument) {
  SyntheticParams p;
  p.head_dim = 7;
  EXPECT_EQ(GenerateWorkload(p).status().code(), StatusCode::kInvalidArgument);
  p = {};
  p.n_keys = 0;
  EXPECT_EQ(GenerateWorkload(p).status().code(), StatusCode::kInvalidArgument);
  p = {};
  p.salient_fraction = 1.5;
  EXPECT_EQ(GenerateWorkload(p).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace ragserve::kvr
