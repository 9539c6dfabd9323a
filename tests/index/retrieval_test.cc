// Fusion of ranked lists and metadata filters of collection searches (services/index/retrieval.h).
#include "services/index/retrieval.h"

#include <gtest/gtest.h>

#include <cmath>

namespace ragserve::collection {
namespace {

TEST(FuseTest, ReciprocalRankFusionSumsOneOverKPlusRank) {
  const RankedList dense = {{1, 0.9f}, {2, 0.8f}, {3, 0.7f}};
  const RankedList lexical = {{3, 12.0f}, {1, 3.0f}};
  const RankedList fused = Fuse(dense, lexical, true, FusionSpec{.method = "rrf", .rrf_k = 60}, 3);
  ASSERT_EQ(fused.size(), 3u);
  EXPECT_EQ(fused[0].first, 1);  // 1/61 + 1/62
  EXPECT_EQ(fused[1].first, 3);  // 1/63 + 1/61
  EXPECT_EQ(fused[2].first, 2);  // 1/62
  EXPECT_FLOAT_EQ(fused[0].second, static_cast<float>(1.0 / 61 + 1.0 / 62));
  EXPECT_FLOAT_EQ(fused[1].second, static_cast<float>(1.0 / 63 + 1.0 / 61));
  EXPECT_FLOAT_EQ(fused[2].second, static_cast<float>(1.0 / 62));
  EXPECT_EQ(Fuse(dense, lexical, true, {}, 1).size(), 1u);
  EXPECT_TRUE(Fuse({}, {}, true, {}, 5).empty());
}

TEST(FuseTest, WeightedFusionNormalisesEachListAndNegatesDistances) {
  // L2 distances: smaller is better, so label 7 (distance 1) is the best dense hit.
  const RankedList dense = {{7, 1.0f}, {8, 3.0f}, {9, 5.0f}};
  const RankedList lexical = {{9, 10.0f}, {8, 6.0f}, {7, 2.0f}};
  FusionSpec w{.method = "weighted", .dense_weight = 0.75};
  RankedList fused = Fuse(dense, lexical, false, w, 3);
  ASSERT_EQ(fused.size(), 3u);
  // dense normalised: 7 -> 1, 8 -> 0.5, 9 -> 0; lexical: 9 -> 1, 8 -> 0.5, 7 -> 0.
  EXPECT_EQ(fused[0].first, 7);
  EXPECT_FLOAT_EQ(fused[0].second, 0.75f);
  EXPECT_EQ(fused[1].first, 8);
  EXPECT_FLOAT_EQ(fused[1].second, 0.5f);
  EXPECT_EQ(fused[2].first, 9);
  EXPECT_FLOAT_EQ(fused[2].second, 0.25f);
  w.dense_weight = 0.25;
  EXPECT_EQ(Fuse(dense, lexical, false, w, 1)[0].first, 9);
}

TEST(MetadataFilterTest, EqualsRangesAndAnyOfMustAllHold) {
  SearchOptions o;
  o.filter_equals["lang"] = "\"en\"";
  o.filter_ranges["year"] = NumericRange{.gt = 1900, .lte = 2000};
  o.filter_any_of["topic"] = {"\"sea\"", "3"};
  const MetadataFilter f = MetadataFilter::Compile(o).value();
  auto m = [](const char* json) { return nlohmann::json::parse(json); };
  EXPECT_TRUE(f.Matches(m(R"({"lang": "en", "year": 2000, "topic": "sea"})")));
  EXPECT_TRUE(f.Matches(m(R"({"lang": "en", "year": 1900.5, "topic": 3})")));
  EXPECT_FALSE(f.Matches(m(R"({"lang": "en", "year": 1900, "topic": "sea"})")));    // gt
  EXPECT_FALSE(f.Matches(m(R"({"lang": "en", "year": "1950", "topic": "sea"})")));  // a string
  EXPECT_FALSE(f.Matches(m(R"({"lang": "de", "year": 1950, "topic": "sea"})")));
  EXPECT_FALSE(f.Matches(m(R"({"lang": "en", "year": 1950, "topic": "land"})")));
  EXPECT_FALSE(f.Matches(m(R"({"lang": "en", "topic": "sea"})")));
  EXPECT_TRUE(MetadataFilter::Compile(SearchOptions{}).value().empty());
  SearchOptions nan;
  nan.filter_ranges["x"] = NumericRange{.lt = std::nan("")};
  EXPECT_EQ(MetadataFilter::Compile(nan).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace ragserve::collection
