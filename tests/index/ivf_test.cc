// IvfIndex (IVF-Flat, IVF-PQ) against brute force and the exact FlatIndex twin; factory
// parameter validation.
#include "index/ivf.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <set>

#include "index/flat.h"
#include "index/index_factory.h"
#include "tests/index/test_data.h"

namespace ragserve::index {
namespace {

using testing::BruteForce;
using testing::ClusteredData;
using testing::Iota;
using testing::RecallAtK;

// Queries near the data: the first nq data points plus 0.3 * fresh noise.
std::vector<float> NearQueries(const std::vector<float>& x, int64_t nq, int dim, uint64_t seed) {
  const auto noise = ClusteredData(nq, dim, 1, seed, 1.0f);
  std::vector<float> q(x.begin(), x.begin() + nq * dim);
  for (size_t i = 0; i < q.size(); ++i) q[i] += 0.3f * noise[i];
  return q;
}

TEST(IvfTest, IvfFlatRecallAtTenAtDefaultNprobeIsAtLeast90PercentOn50kClustered) {
  constexpr int64_t kN = 50000, kQ = 300;
  constexpr int kDim = 128, kK = 10;
  const auto x = ClusteredData(kN, kDim, 100, 7);
  const auto ids = Iota(kN);
  const auto q = NearQueries(x, kQ, kDim, 8);
  auto flat = FlatIndex::Create(kDim, Metric::kL2).value();
  ASSERT_TRUE(flat->add(kN, x.data(), ids.data()).ok());
  auto ivf = IvfIndex::Create(kDim, Metric::kL2, /*pq=*/false).value();
  ASSERT_TRUE(ivf->needs_training());
  ASSERT_TRUE(ivf->train(kN, x.data()).ok());
  ASSERT_TRUE(ivf->add(kN, x.data(), ids.data()).ok());
  EXPECT_EQ(ivf->size(), kN);
  EXPECT_EQ(ivf->params().nlist, 894);  // round(4 * sqrt(50000))
  std::vector<float> dt(kQ * kK), da(kQ * kK);
  std::vector<int64_t> it(kQ * kK), ia(kQ * kK);
  ASSERT_TRUE(flat->search(kQ, q.data(), kK, dt.data(), it.data()).ok());
  ASSERT_TRUE(ivf->search(kQ, q.data(), kK, da.data(), ia.data()).ok());
  const double recall = RecallAtK(it, ia, kQ, kK, kK);
  RecordProperty("recall_at_10", std::to_string(recall));
  EXPECT_GE(recall, 0.90);
  // The flat index is exact: it agrees with the double-precision oracle.
  for (int64_t i = 0; i < 20; ++i) {
    auto truth = BruteForce(Metric::kL2, x, ids, kDim, q.data() + i * kDim, kK);
    std::set<int64_t> a(truth.begin(), truth.end()),
        b(it.begin() + i * kK, it.begin() + i * kK + kK);
    EXPECT_EQ(a, b) << "query " << i;
  }
}

TEST(IvfTest, FlatAndIvfRankInnerProductAndCosineLikeBruteForce) {
  constexpr int64_t kN = 3000, kQ = 30;
  constexpr int kDim = 16, kK = 10;
  auto x = ClusteredData(kN, kDim, 10, 31);
  for (int64_t i = 0; i < kN; ++i)
    for (int j = 0; j < kDim; ++j) x[i * kDim + j] *= 0.5f + (i % 5) * 0.3f;
  const auto q = ClusteredData(kQ, kDim, 10, 32);
  const auto ids = Iota(kN, 7);
  for (Metric m : {Metric::kInnerProduct, Metric::kCosine}) {
    std::vector<int64_t> truth;
    for (int64_t i = 0; i < kQ; ++i) {
      auto t = BruteForce(m, x, ids, kDim, q.data() + i * kDim, kK);
      truth.insert(truth.end(), t.begin(), t.end());
    }
    auto flat = FlatIndex::Create(kDim, m).value();
    ASSERT_TRUE(flat->add(kN, x.data(), ids.data()).ok());
    std::vector<float> d(kQ * kK);
    std::vector<int64_t> got(kQ * kK);
    ASSERT_TRUE(flat->search(kQ, q.data(), kK, d.data(), got.data()).ok());
    EXPECT_EQ(got, truth) << MetricName(m);
    auto ivf = IvfIndex::Create(kDim, m, false, {.nlist = 20}).value();
    ASSERT_TRUE(ivf->train(kN, x.data()).ok());
    ASSERT_TRUE(ivf->add(kN, x.data(), ids.data()).ok());
    SearchParams sp;
    sp.nprobe = 20;  // every list: exact
    ASSERT_TRUE(ivf->search(kQ, q.data(), kK, d.data(), got.data(), sp).ok());
    EXPECT_GE(RecallAtK(truth, got, kQ, kK, kK), 0.99) << MetricName(m);
    for (int64_t i = 0; i < kQ; ++i) {
      for (int j = 1; j < kK; ++j) EXPECT_GE(d[i * kK + j - 1], d[i * kK + j]);
    }
  }
}

TEST(IvfTest, TooFewTrainingVectorsIsAClearInvalidArgument) {
  auto ivf = IvfIndex::Create(8, Metric::kL2, false, {.nlist = 100}).value();
  const auto x = ClusteredData(50, 8, 2, 1);
  auto st = ivf->train(50, x.data());
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("nlist=100"), std::string::npos) << st.message();
  EXPECT_TRUE(ivf->needs_training());
  const auto ids = Iota(50);
  EXPECT_EQ(ivf->add(50, x.data(), ids.data()).code(), StatusCode::kFailedPrecondition);
  auto pq = IvfIndex::Create(8, Metric::kL2, true, {.nlist = 4, .pq_m = 2, .pq_nbits = 8}).value();
  st = pq->train(50, x.data());
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("256"), std::string::npos) << st.message();
  EXPECT_EQ(IvfIndex::Create(8, Metric::kL2, true, {.pq_m = 3}).status().code(),
            StatusCode::kInvalidArgument);
}

TEST(IvfTest, IvfPqSaveLoadRoundTripAndRemoveAndReplace) {
  constexpr int64_t kN = 2000, kQ = 20;
  constexpr int kDim = 32, kK = 10;
  const auto x = ClusteredData(kN, kDim, 20, 41);
  const auto ids = Iota(kN);
  auto ivf =
      IvfIndex::Create(kDim, Metric::kL2, true, {.nlist = 16, .pq_m = 8, .pq_nbits = 6}).value();
  ASSERT_TRUE(ivf->train(kN, x.data()).ok());
  ASSERT_TRUE(ivf->add(kN, x.data(), ids.data()).ok());
  const int64_t rm[] = {0, 1, 2, 99999};
  EXPECT_EQ(ivf->remove(4, rm).value(), 3);
  EXPECT_EQ(ivf->size(), kN - 3);
  // Replacing id 10 with id 500's vector moves it.
  ASSERT_TRUE(ivf->add(1, x.data() + 500 * kDim, &ids[10]).ok());
  EXPECT_EQ(ivf->size(), kN - 3);
  const auto path = (std::filesystem::temp_directory_path() / "rs_ivfpq_rt.idx").string();
  ASSERT_TRUE(ivf->save(path).ok());
  auto loaded = LoadIndex(path);
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  EXPECT_EQ((*loaded)->kind(), "ivf_pq");
  EXPECT_EQ((*loaded)->size(), ivf->size());
  std::vector<float> d1(kQ * kK), d2(kQ * kK);
  std::vector<int64_t> i1(kQ * kK), i2(kQ * kK);
  ASSERT_TRUE(ivf->search(kQ, x.data(), kK, d1.data(), i1.data()).ok());
  ASSERT_TRUE((*loaded)->search(kQ, x.data(), kK, d2.data(), i2.data()).ok());
  EXPECT_EQ(i1, i2);
  EXPECT_EQ(d1, d2);
  for (int64_t id : i1) EXPECT_TRUE(id > 2 || id == -1);
  // Corrupting one byte is detected.
  {
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(100);
    f.put('\x5a');
  }
  EXPECT_EQ(LoadIndex(path).status().code(), StatusCode::kDataLoss);
  std::filesystem::remove(path);
  EXPECT_EQ(LoadIndex(path).status().code(), StatusCode::kNotFound);
}

TEST(IvfTest, FilteredSearchWidensUntilKAllowedHits) {
  constexpr int64_t kN = 4000;
  constexpr int kDim = 8, kK = 5;
  const auto x = ClusteredData(kN, kDim, 16, 51);
  const auto ids = Iota(kN);
  auto ivf = IvfIndex::Create(kDim, Metric::kL2, false, {.nlist = 64, .nprobe = 1}).value();
  ASSERT_TRUE(ivf->train(kN, x.data()).ok());
  ASSERT_TRUE(ivf->add(kN, x.data(), ids.data()).ok());
  std::function<bool(int64_t)> rare = [](int64_t id) { return id % 800 == 3; };  // 5 ids
  SearchParams sp;
  sp.filter = &rare;
  std::vector<float> d(kK);
  std::vector<int64_t> got(kK);
  ASSERT_TRUE(ivf->search(1, x.data(), kK, d.data(), got.data(), sp).ok());
  std::set<int64_t> seen(got.begin(), got.end());
  EXPECT_EQ(seen, (std::set<int64_t>{3, 803, 1603, 2403, 3203}));
}

TEST(FactoryTest, BadParamsNameTheProblem) {
  auto s = MakeIndexSpec("hnsw", Metric::kL2, 8, R"({"M": 0})");
  EXPECT_EQ(s.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.status().message().find("'M'"), std::string::npos) << s.status().message();
  s = MakeIndexSpec("annoy", Metric::kL2, 8, "");
  EXPECT_NE(s.status().message().find("annoy"), std::string::npos);
  s = MakeIndexSpec("ivf_flat", Metric::kL2, 8, R"({"M": 16})");
  EXPECT_EQ(s.status().code(), StatusCode::kInvalidArgument);
  // nlist larger than the data: BuildIndex fails with the counts.
  auto spec = MakeIndexSpec("ivf_flat", Metric::kL2, 8, R"({"nlist": 100})").value();
  const auto x = ClusteredData(20, 8, 2, 3);
  const auto ids = Iota(20);
  auto built = BuildIndex(spec, 20, x.data(), ids.data());
  EXPECT_EQ(built.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(built.status().message().find("nlist=100"), std::string::npos);
  auto ok = MakeIndexSpec("ivf_pq", Metric::kCosine, 8, R"({"nlist": 4, "pq_m": 2})").value();
  EXPECT_EQ(IndexParamsJson(ok).find("\"pq_m\":2") != std::string::npos, true)
      << IndexParamsJson(ok);
}

}  // namespace
}  // namespace ragserve::index
