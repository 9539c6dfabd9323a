// APE's merge computed by hand for a small case (one layer, one head, head_dim 2): the context
// scores are divided by T, the contexts' LSE is multiplied by S*T, and the two parts are mixed by
// softmax([S*T*LSE_C, LSE_O]) (../shared/papers/ape.md).
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "services/engine/kv_source.h"

namespace ragserve::engine {
namespace {

KvBlock OneToken(float k0, float k1, float v0, float v1, int32_t pos) {
  KvBlock b;
  b.geometry = {1, 1, 1, 2};
  b.tokens = 1;
  b.positions = {pos};
  b.k = {{k0, k1}};
  b.v = {{v0, v1}};
  b.fingerprint = "test";
  return b;
}

struct Part {
  double lse;
  double o[2];
};

// Plain softmax attention of q over (k, v) pairs with scores q.k * scale / temp.
Part Attend(const double q[2], const std::vector<std::vector<double>>& kv, double scale,
            double temp) {
  std::vector<double> s;
  double mx = -1e300;
  for (const auto& e : kv) {
    s.push_back((q[0] * e[0] + q[1] * e[1]) * scale / temp);
    mx = std::max(mx, s.back());
  }
  double z = 0, o0 = 0, o1 = 0;
  for (size_t i = 0; i < kv.size(); ++i) {
    const double w = std::exp(s[i] - mx);
    z += w;
    o0 += w * kv[i][2];
    o1 += w * kv[i][3];
  }
  return {mx + std::log(z), {o0 / z, o1 / z}};
}

TEST(ApeFormulaTest, MergeMatchesThePaperFormulaComputedByHand) {
  const KvGeometry g{1, 1, 1, 2};
  const KvBlock prefix = OneToken(1, 0, 1, 2, 0);
  const KvBlock c1 = OneToken(0, 1, 3, 0, 1);
  const KvBlock c2 = OneToken(1, 1, 0, 4, 1);  // same position as c1: parallel encoding
  const double q[2] = {1, 2};
  const double scale = 1 / std::sqrt(2.0);
  for (auto [T, S] : {std::pair{1.0, 1.0}, {0.9, 0.9}, {0.5, 0.7}, {1.0, 0.5}}) {
    KvCache own(g);
    const float k[2] = {0.5f, 0.5f}, v[2] = {2, 2};
    const int32_t pos = 2;
    ASSERT_TRUE(own.Append(0, k, v, 1, &pos).ok());
    ApeKvSource ape(&prefix, {&c1, &c2}, &own, static_cast<float>(T), static_cast<float>(S));
    const float qf[2] = {1, 2};
    float o[2], lse;
    ASSERT_TRUE(ape.Attend(0, qf, 1, static_cast<float>(scale), o, &lse).ok());

    const Part po = Attend(q, {{1, 0, 1, 2}, {0.5, 0.5, 2, 2}}, scale, 1.0);  // prefix + own
    const Part pc = Attend(q, {{0, 1, 3, 0}, {1, 1, 0, 4}}, scale, T);        // contexts at T
    const double a = S * T * pc.lse, b = po.lse;
    const double m = std::max(a, b);
    const double wc = std::exp(a - m) / (std::exp(a - m) + std::exp(b - m));
    const double want0 = wc * pc.o[0] + (1 - wc) * po.o[0];
    const double want1 = wc * pc.o[1] + (1 - wc) * po.o[1];
    const double want_lse = m + std::log(std::exp(a - m) + std::exp(b - m));
    EXPECT_NEAR(o[0], want0, 1e-5) << "T=" << T << " S=" << S;
    EXPECT_NEAR(o[1], want1, 1e-5) << "T=" << T << " S=" << S;
    EXPECT_NEAR(lse, want_lse, 1e-5) << "T=" << T << " S=" << S;
  }
}

TEST(ApeFormulaTest, CorrectionsChangeTheOutputAndOnesAreTheConcatenation) {
  const KvGeometry g{1, 1, 1, 2};
  const KvBlock prefix = OneToken(1, 0, 1, 2, 0);
  const KvBlock c1 = OneToken(0, 1, 3, 0, 1);
  const float qf[2] = {1, 2};
  const float scale = 0.7f;
  auto run = [&](float T, float S, float* o) {
    KvCache own(g);
    const float k[2] = {0.5f, 0.5f}, v[2] = {2, 2};
    const int32_t pos = 2;
    EXPECT_TRUE(own.Append(0, k, v, 1, &pos).ok());
    ApeKvSource ape(&prefix, {&c1}, &own, T, S);
    float lse;
    EXPECT_TRUE(ape.Attend(0, qf, 1, scale, o, &lse).ok());
  };
  float plain[2], corrected[2];
  run(1, 1, plain);
  run(0.9f, 0.9f, corrected);
  EXPECT_GT(std::fabs(plain[0] - corrected[0]) + std::fabs(plain[1] - corrected[1]), 1e-3);
  // T = S = 1 is attention over the concatenation prefix, c1, own.
  const double q[2] = {1, 2};
  const Part all = Attend(q, {{1, 0, 1, 2}, {0, 1, 3, 0}, {0.5, 0.5, 2, 2}}, scale, 1.0);
  EXPECT_NEAR(plain[0], all.o[0], 1e-5);
  EXPECT_NEAR(plain[1], all.o[1], 1e-5);
}

}  // namespace
}  // namespace ragserve::engine
