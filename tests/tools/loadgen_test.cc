#include "tools/loadgen/loadgen.h"

#include <gtest/gtest.h>

#include <fstream>

#include "tests/support/process.h"

namespace ragserve::loadgen {
namespace {

TEST(LoadgenTest, PercentilesUseNearestRank) {
  std::vector<double> v;
  for (int i = 100; i >= 1; --i) v.push_back(i);  // unsorted on purpose
  Percentiles p = ComputePercentiles(v);
  EXPECT_EQ(p.p50, 50);
  EXPECT_EQ(p.p90, 90);
  EXPECT_EQ(p.p99, 99);
  EXPECT_EQ(p.max, 100);
  EXPECT_DOUBLE_EQ(p.mean, 50.5);
  EXPECT_EQ(ComputePercentiles({7}).p99, 7);
  EXPECT_EQ(ComputePercentiles({}).p50, 0);
}

TEST(LoadgenTest, ReadsJsonlAndPlainQuestionsAndReportsBadLines) {
  const std::string dir = testing::MakeTempDir("loadgen");
  std::ofstream(dir + "/q.jsonl") << "{\"question\": \"a?\"}\n\nplain question\n";
  auto q = ReadQuestions(dir + "/q.jsonl");
  ASSERT_TRUE(q.ok()) << q.status().ToString();
  EXPECT_EQ(*q, (std::vector<std::string>{"a?", "plain question"}));
  std::ofstream(dir + "/bad.jsonl") << "{\"question\": \"a?\"}\n{\"q\": 1}\n";
  auto bad = ReadQuestions(dir + "/bad.jsonl");
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find(":2:"), std::string::npos) << bad.status().message();
  EXPECT_EQ(ReadQuestions(dir + "/missing").status().code(), StatusCode::kNotFound);
}

TEST(LoadgenTest, UnreachableRouterCountsErrorsNotCrashes) {
  LoadOptions o;
  o.addr = "127.0.0.1:" + std::to_string(testing::FreePort());
  o.questions = {"q"};
  o.requests = 3;
  o.timeout_s = 5;
  auto r = RunLoad(o);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->ok, 0);
  EXPECT_EQ(r->errors["UNAVAILABLE"], 3);
}

}  // namespace
}  // namespace ragserve::loadgen
