// ragserve-index-build: the real binary on small .fvecs and JSONL inputs, and on bad inputs.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "index/vector_io.h"
#include "services/index/collection.h"
#include "tests/index/test_data.h"
#include "tests/support/process.h"

namespace ragserve::collection {
namespace {

using ragserve::testing::BinPath;
using ragserve::testing::MakeTempDir;
using ragserve::testing::RunCommand;

std::string Build(const std::string& args, int* code) {
  std::string out;
  *code = RunCommand(BinPath("ragserve-index-build") + " " + args + " 2>&1", &out);
  return out;
}

TEST(IndexBuildTest, FvecsBuildsAServableCollectionAndReportsRecall) {
  const std::string dir = MakeTempDir("rs_ib_fvecs");
  const auto x = index::testing::ClusteredData(2000, 16, 10, 5);
  ASSERT_TRUE(index::WriteFvecs(dir + "/base.fvecs", 2000, 16, x.data()).ok());
  int code = -1;
  const std::string out = Build("--input " + dir + "/base.fvecs --out " + dir +
                                    "/coll --collection base --kind ivf_flat --metric l2",
                                &code);
  ASSERT_EQ(code, 0) << out;
  const auto pos = out.find("recall@10 = ");
  ASSERT_NE(pos, std::string::npos) << out;
  EXPECT_GE(std::stod(out.substr(pos + 12)), 0.8) << out;
  auto store = CollectionStore::Open(dir + "/coll").value();
  auto c = store->Get("base").value();
  EXPECT_EQ(c->Info().num_documents, 2000);
  EXPECT_EQ(c->Info().active_kind, "ivf_flat");
  auto r = c->Search({{.vector = std::vector<float>(x.begin() + 17 * 16, x.begin() + 18 * 16)}},
                     {.k = 1})
               .value();
  EXPECT_EQ(r[0][0].id, "17");
  store.reset();
  // Building the same collection again is refused.
  Build("--input " + dir + "/base.fvecs --out " + dir + "/coll --collection base", &code);
  EXPECT_NE(code, 0);
  std::filesystem::remove_all(dir);
}

TEST(IndexBuildTest, JsonlIsEmbeddedAndBadInputsNameTheProblem) {
  const std::string dir = MakeTempDir("rs_ib_jsonl");
  {
    std::ofstream f(dir + "/docs.jsonl");
    f << R"({"id": "a", "text": "the quick brown fox", "metadata": {"k": 1}})"
      << "\n\n"
      << R"({"id": 7, "text": "quantum physics lecture notes"})"
      << "\n";
  }
  int code = -1;
  std::string out = Build("--input " + dir + "/docs.jsonl --out " + dir +
                              "/coll --collection docs --metric cosine --dim 64 --kind flat",
                          &code);
  ASSERT_EQ(code, 0) << out;
  {
    auto store = CollectionStore::Open(dir + "/coll").value();
    auto c = store->Get("docs").value();
    EXPECT_EQ(c->Info().num_documents, 2);
    auto r = c->Search({{.text = "brown fox"}}, {.k = 2}).value();
    EXPECT_EQ(r[0][0].id, "a");
    EXPECT_EQ(r[0][0].metadata_json, R"({"k":1})");
  }
  // A malformed third line: the line number is reported and nothing is created.
  {
    std::ofstream f(dir + "/bad.jsonl");
    f << R"({"id": "a", "text": "x"})"
      << "\n"
      << R"({"id": "b", "text": "y"})"
      << "\n"
      << R"({"id": "c", "text": )"
      << "\n";
  }
  out = Build("--input " + dir + "/bad.jsonl --out " + dir + "/bad --collection bad", &code);
  EXPECT_NE(code, 0);
  EXPECT_NE(out.find("line 3"), std::string::npos) << out;
  EXPECT_FALSE(std::filesystem::exists(dir + "/bad"));
  // A truncated .fvecs file.
  const auto x = index::testing::ClusteredData(10, 8, 2, 1);
  ASSERT_TRUE(index::WriteFvecs(dir + "/t.fvecs", 10, 8, x.data()).ok());
  std::filesystem::resize_file(dir + "/t.fvecs", 10 * 36 - 5);
  out = Build("--input " + dir + "/t.fvecs --out " + dir + "/bad --collection t", &code);
  EXPECT_NE(code, 0);
  EXPECT_NE(out.find("truncated"), std::string::npos) << out;
  // Bad index params: named, nothing created.
  out = Build("--input " + dir + "/docs.jsonl --out " + dir +
                  "/bad --collection d --kind hnsw --params '{\"M\": 0}'",
              &code);
  EXPECT_NE(code, 0);
  EXPECT_NE(out.find("'M'"), std::string::npos) << out;
  EXPECT_FALSE(std::filesystem::exists(dir + "/bad"));
  out = Build("--input " + dir + "/missing.fvecs --out " + dir + "/bad --collection t", &code);
  EXPECT_NE(code, 0);
  EXPECT_NE(out.find("NOT_FOUND"), std::string::npos) << out;
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace ragserve::collection
