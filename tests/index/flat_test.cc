// FlatIndex, the exact twin every approximate index is measured against (and the KV retrieval
// store's exact key index): file round trip, argument checks, inner-product search with its cost.
#include "index/flat.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <numeric>
#include <random>
#include <utility>
#include <vector>

#include "tests/index/test_data.h"

namespace ragserve::index {
namespace {

using testing::ClusteredData;
using testing::Iota;

TEST(FlatTest, SaveLoadRoundTripAndBadArguments) {
  constexpr int64_t kN = 1000;
  constexpr int kDim = 12;
  const auto x = ClusteredData(kN, kDim, 5, 61);
  const auto ids = Iota(kN, 5);
  auto flat = FlatIndex::Create(kDim, Metric::kL2).value();
  ASSERT_TRUE(flat->add(kN, x.data(), ids.data()).ok());
  const auto path = (std::filesystem::temp_directory_path() / "rs_flat_rt.idx").string();
  ASSERT_TRUE(flat->save(path).ok());
  auto loaded = FlatIndex::Load(path).value();
  std::vector<float> d1(50), d2(50);
  std::vector<int64_t> i1(50), i2(50);
  ASSERT_TRUE(flat->search(5, x.data(), 10, d1.data(), i1.data()).ok());
  ASSERT_TRUE(loaded->search(5, x.data(), 10, d2.data(), i2.data()).ok());
  EXPECT_EQ(i1, i2);
  EXPECT_EQ(d1, d2);
  EXPECT_EQ(i1[0], 5);
  std::filesystem::remove(path);
  // Wrong arguments change nothing.
  std::vector<float> bad(2 * kDim, 1.0f);
  bad[kDim + 3] = INFINITY;
  const int64_t two[] = {100000, 100001};
  auto st = flat->add(2, bad.data(), two);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(flat->size(), kN);
  EXPECT_EQ(flat->search(1, x.data(), 0, d1.data(), i1.data()).code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(flat->search(-1, x.data(), 1, d1.data(), i1.data()).code(),
            StatusCode::kInvalidArgument);
  // An empty batch is fine (every index's rule) and touches nothing.
  EXPECT_TRUE(flat->search(0, nullptr, 1, nullptr, nullptr).ok());
  EXPECT_TRUE(flat->add(0, nullptr, nullptr).ok());
  EXPECT_EQ(flat->size(), kN);
}

TEST(FlatTest, InnerProductIsExactAfterReplaceAndRemoveAndScoresEveryRow) {
  std::mt19937_64 rng(3);
  std::normal_distribution<float> n01;
  const int d = 16, n = 500, k = 7;
  std::vector<float> x(n * d), q(5 * d);
  for (auto& v : x) v = n01(rng);
  for (auto& v : q) v = n01(rng);
  std::vector<int64_t> ids(n);
  std::iota(ids.begin(), ids.end(), 1000);
  auto idx = FlatIndex::Create(d, Metric::kInnerProduct).value();
  ASSERT_TRUE(idx->add(n, x.data(), ids.data()).ok());
  // Replace id 1005 with a new vector and remove ids 1000..1009 except 1005.
  for (int j = 0; j < d; ++j) x[5 * d + j] = 3.0f * q[j];
  ASSERT_TRUE(idx->add(1, x.data() + 5 * d, ids.data() + 5).ok());
  std::vector<int64_t> rm = {1000, 1001, 1002, 1003, 1004, 1006, 1007, 1008, 1009, 77};
  EXPECT_EQ(*idx->remove(rm.size(), rm.data()), 9);
  EXPECT_EQ(idx->size(), n - 9);
  std::vector<float> dist(5 * k);
  std::vector<int64_t> got(5 * k);
  SearchStats st;
  SearchParams sp;
  sp.stats = &st;
  ASSERT_TRUE(idx->search(5, q.data(), k, dist.data(), got.data(), sp).ok());
  EXPECT_EQ(st.scored, 5 * (n - 9));
  for (int i = 0; i < 5; ++i) {
    std::vector<std::pair<float, int64_t>> all;
    for (int r = 0; r < n; ++r) {
      if (r < 10 && r != 5) continue;
      float s = 0;
      for (int j = 0; j < d; ++j) s += q[i * d + j] * x[r * d + j];
      all.emplace_back(s, 1000 + r);
    }
    std::sort(all.rbegin(), all.rend());
    for (int j = 0; j < k; ++j) {
      EXPECT_EQ(got[i * k + j], all[j].second) << "query " << i << " rank " << j;
      EXPECT_NEAR(dist[i * k + j], all[j].first, 1e-4);
    }
  }
  EXPECT_EQ(got[0], 1005);  // the replaced vector is 3q: the best match of query 0
}

}  // namespace
}  // namespace ragserve::index
