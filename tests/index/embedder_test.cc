// HashingEmbedder: deterministic signed feature hashing (services/index/embedder.h).
#include "services/index/embedder.h"

#include <gtest/gtest.h>

#include <cmath>

namespace ragserve::collection {
namespace {

float Dot(const std::vector<float>& a, const std::vector<float>& b) {
  float s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

TEST(HashingEmbedderTest, WordsAreLowercasedAsciiRunsAndKeepUtf8Bytes) {
  EXPECT_EQ(HashingEmbedder::Words("Hello, WORLD!  x9-y"),
            (std::vector<std::string>{"hello", "world", "x9", "y"}));
  EXPECT_EQ(HashingEmbedder::Words("Grüße aus Köln"),
            (std::vector<std::string>{"grüße", "aus", "köln"}));
  EXPECT_TRUE(HashingEmbedder::Words(" ,.; ").empty());
}

TEST(HashingEmbedderTest, DeterministicUnitNormAndSimilarTextsAreCloser) {
  auto e = HashingEmbedder::Create(256).value();
  std::vector<float> v(4 * 256);
  ASSERT_TRUE(e->Embed({"the cat sat on the mat", "The cat sat on the MAT!", "a cat sat on a mat",
                        "stock markets fell sharply today"},
                       v.data())
                  .ok());
  std::vector<float> a(v.begin(), v.begin() + 256), b(v.begin() + 256, v.begin() + 512),
      c(v.begin() + 512, v.begin() + 768), d(v.begin() + 768, v.end());
  EXPECT_EQ(a, b);  // normalization makes these identical
  EXPECT_NEAR(Dot(a, a), 1.0f, 1e-5);
  EXPECT_GT(Dot(a, c), Dot(a, d) + 0.3f);
  // Sublinear tf: "x x x x" weighs 1 + ln 4 on one bucket (+ the bigram "x x" with 1 + ln 3).
  auto e2 = HashingEmbedder::Create(1 << 16).value();
  std::vector<float> w(1 << 16);
  ASSERT_TRUE(e2->Embed({"x x x x"}, w.data()).ok());
  std::vector<float> nz;
  for (float f : w) {
    if (f != 0) nz.push_back(std::fabs(f));
  }
  ASSERT_EQ(nz.size(), 2u);
  const float big = std::max(nz[0], nz[1]), small = std::min(nz[0], nz[1]);
  EXPECT_NEAR(big / small, (1 + std::log(4.0f)) / (1 + std::log(3.0f)), 1e-4);
  // Empty text embeds to zeros; bad dims are rejected.
  ASSERT_TRUE(e->Embed({""}, v.data()).ok());
  for (int j = 0; j < 256; ++j) EXPECT_EQ(v[j], 0.0f);
  EXPECT_EQ(HashingEmbedder::Create(0).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(MakeEmbedder("bert", 8).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace ragserve::collection
