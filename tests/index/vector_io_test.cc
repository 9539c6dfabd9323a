// Vector file readers/writers and the JSONL parser (index/vector_io.h).
#include "index/vector_io.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

namespace ragserve::index {
namespace {

std::string TmpPath(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("rs_vio_" + name)).string();
}

std::string Fvecs(const std::vector<std::vector<float>>& rows) {
  std::string s;
  for (const auto& r : rows) {
    const int32_t d = static_cast<int32_t>(r.size());
    s.append(reinterpret_cast<const char*>(&d), 4);
    s.append(reinterpret_cast<const char*>(r.data()), r.size() * 4);
  }
  return s;
}

TEST(VectorIoTest, RoundTripsFvecsIvecsAndNpy) {
  const std::vector<float> x = {1, 2, 3, 4, 5, 6.5f};
  ASSERT_TRUE(WriteFvecs(TmpPath("a.fvecs"), 2, 3, x.data()).ok());
  auto m = ReadVectorFile(TmpPath("a.fvecs")).value();
  EXPECT_EQ(m.n, 2);
  EXPECT_EQ(m.dim, 3);
  EXPECT_EQ(m.values, x);
  ASSERT_TRUE(WriteNpy(TmpPath("a.npy"), 3, 2, x.data()).ok());
  m = ReadVectorFile(TmpPath("a.npy")).value();
  EXPECT_EQ(m.n, 3);
  EXPECT_EQ(m.dim, 2);
  EXPECT_EQ(m.values, x);
  const std::vector<int32_t> g = {7, 8, 9, 10};
  ASSERT_TRUE(WriteIvecs(TmpPath("a.ivecs"), 2, 2, g.data()).ok());
  auto gi = ReadIvecsFile(TmpPath("a.ivecs")).value();
  EXPECT_EQ(gi.values, g);
  std::string b;
  const int32_t d = 2;
  b.append(reinterpret_cast<const char*>(&d), 4);
  b += std::string("\x01\xff", 2);
  auto bm = ParseBvecs(b, "b.bvecs").value();
  EXPECT_EQ(bm.values, (std::vector<float>{1.0f, 255.0f}));
  for (const char* f : {"a.fvecs", "a.npy", "a.ivecs"}) std::filesystem::remove(TmpPath(f));
}

TEST(VectorIoTest, MalformedFilesAreInvalidArgumentNamingTheProblem) {
  const std::string good = Fvecs({{1, 2, 3}, {4, 5, 6}});
  auto st = ParseFvecs(good.substr(0, good.size() - 2), "t.fvecs").status();
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("truncated"), std::string::npos) << st.message();
  EXPECT_NE(st.message().find("t.fvecs"), std::string::npos) << st.message();
  st = ParseFvecs(Fvecs({{1, 2, 3}, {4, 5}, {1}}), "mixed.fvecs").status();
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  st = ParseFvecs(Fvecs({{1, 2}, {3, 4, 5, 6, 7}}), "dims.fvecs").status();
  EXPECT_NE(st.message().find("vector 1"), std::string::npos) << st.message();
  st = ParseFvecs(Fvecs({{1, NAN}}), "nan.fvecs").status();
  EXPECT_NE(st.message().find("not finite"), std::string::npos) << st.message();
  std::string neg(4, '\xff');
  EXPECT_NE(ParseFvecs(neg, "neg.fvecs").status().message().find("dimension header"),
            std::string::npos);
  EXPECT_EQ(ParseFvecs("", "e.fvecs").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseNpy("\x93NUMPY\x01\x00", "h.npy").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseNpy("not a numpy file at all", "x.npy").status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(ReadVectorFile(TmpPath("missing.fvecs")).status().code(), StatusCode::kNotFound);
  std::ofstream(TmpPath("x.csv")) << "1,2,3\n";
  st = ReadVectorFile(TmpPath("x.csv")).status();
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("extension"), std::string::npos) << st.message();
  std::filesystem::remove(TmpPath("x.csv"));
}

TEST(VectorIoTest, JsonlLinesReportTheirLineNumber) {
  auto d = ParseJsonlLine(R"({"id": 42, "text": "hi", "metadata": {"a": [1]}})", 1).value();
  EXPECT_EQ(d.id, "42");
  EXPECT_EQ(d.text, "hi");
  EXPECT_EQ(d.metadata_json, R"({"a":[1]})");
  for (const char* bad : {R"({"text": "no id"})", R"({"id": "x"})", "[1, 2]", "{oops",
                          R"({"id": "x", "text": "t", "metadata": 5})"}) {
    auto st = ParseJsonlLine(bad, 17).status();
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(st.message().find("line 17"), std::string::npos) << st.message();
  }
  const auto path = TmpPath("d.jsonl");
  {
    std::ofstream f(path);
    f << R"({"id": "a", "text": "x"})"
      << "\n\n"
      << R"({"id": "b"})"
      << "\n";
  }
  int seen = 0;
  auto st = ReadJsonl(path, [&](int64_t, JsonlDocument&&) {
    ++seen;
    return OkStatus();
  });
  EXPECT_EQ(seen, 1);
  EXPECT_NE(st.message().find("line 3"), std::string::npos) << st.message();
  std::filesystem::remove(path);
}

}  // namespace
}  // namespace ragserve::index
