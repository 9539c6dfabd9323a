// BM25 lexical index (index/bm25.h) and its tokenizer (index/text_tokenizer.h). Exact scores are
// checked against an independent Python implementation in tests/reference/bm25_ref.py.
#include "index/bm25.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>

#include "index/text_tokenizer.h"

namespace ragserve::index {
namespace {

using Hits = std::vector<std::pair<int64_t, float>>;

Hits Search(const Bm25Index& idx, const std::string& q, int k,
            const std::function<bool(int64_t)>* filter = nullptr) {
  std::vector<float> s(k);
  std::vector<int64_t> l(k);
  EXPECT_TRUE(idx.Search(1, &q, k, s.data(), l.data(), filter).ok());
  Hits out;
  for (int j = 0; j < k && l[j] >= 0; ++j) out.emplace_back(l[j], s[j]);
  return out;
}

void Add(Bm25Index* idx, int64_t label, std::string_view text) { idx->Add(1, &label, &text); }

std::string RandomText(std::mt19937_64& rng) {
  static const char* kWords[] = {"ferry", "river", "bridge", "keeper", "the",  "of",
                                 "light", "stone", "north",  "violet", "1873", "a"};
  std::string t;
  const int n = 1 + static_cast<int>(rng() % 30);
  for (int i = 0; i < n; ++i) t += std::string(kWords[rng() % 12]) + " ";
  return t;
}

TEST(LexicalTermsTest, FoldsCaseAndCompatibilityFormsAndSplitsOnNonWords) {
  EXPECT_EQ(LexicalTerms("Café, CAFE\u0301 naïve-Ωmega 42x ﬁne"),
            (std::vector<std::string>{"café", "café", "naïve", "ωmega", "42x", "fine"}));
  EXPECT_EQ(LexicalTerms("Straße МОСКВА"), (std::vector<std::string>{"strasse", "москва"}));
  EXPECT_TRUE(LexicalTerms("... !!! --- «»").empty());
  // Invalid UTF-8 separates words instead of failing.
  EXPECT_EQ(LexicalTerms("ab\xff\xfe"
                         "cd"),
            (std::vector<std::string>{"ab", "cd"}));
  const auto long_word = LexicalTerms(std::string(300, 'z'));
  ASSERT_EQ(long_word.size(), 1u);
  EXPECT_EQ(long_word[0].size(), kMaxTermBytes);
}

TEST(LexicalTermsTest, AsciiFastPathAgreesWithTheUnicodePath) {
  // Every printable ASCII character, mixed case, plus a long word; the " é" suffix sends the same
  // text through utf8proc.
  std::string ascii;
  for (char c = 32; c < 127; ++c) ascii += std::string(1, c) + "Ab" + std::string(1, c) + "9 ";
  ascii += std::string(200, 'Q');
  auto fast = LexicalTerms(ascii);
  auto slow = LexicalTerms(ascii + " \u00e9");
  ASSERT_EQ(slow.size(), fast.size() + 1);
  slow.pop_back();
  EXPECT_EQ(fast, slow);
}

TEST(Bm25Test, RareTermOutweighsCommonTermsAndNonMatchingDocsAreAbsent) {
  auto idx = Bm25Index::Create({}).value();
  Add(idx.get(), 1, "the ferry leaves the harbour at nine");
  Add(idx.get(), 2, "the bridge of the river");
  Add(idx.get(), 3, "the lighthouse keeper and the ferry");
  Add(idx.get(), 4, "nothing relevant here");
  const Hits h = Search(*idx, "the lighthouse", 10);
  ASSERT_EQ(h.size(), 3u);   // doc 4 shares no term
  EXPECT_EQ(h[0].first, 3);  // the only "lighthouse"
  EXPECT_GT(h[0].second, 2 * h[1].second);
  EXPECT_TRUE(Search(*idx, "unknownword", 10).empty());
}

TEST(Bm25Test, RemoveAndReplaceScoreExactlyLikeAFreshIndex) {
  std::mt19937_64 rng(7);
  std::vector<std::string> texts(200);
  for (auto& t : texts) t = RandomText(rng);
  auto live = Bm25Index::Create({1.5, 0.6}).value();
  for (int64_t i = 0; i < 200; ++i) Add(live.get(), i, texts[i]);
  // Remove the even labels, replace the multiples of 3 (new text, same label).
  std::vector<int64_t> even;
  for (int64_t i = 0; i < 200; i += 2) even.push_back(i);
  EXPECT_EQ(live->Remove(static_cast<int64_t>(even.size()), even.data()), 100);
  EXPECT_EQ(live->Remove(1, even.data()), 0);
  for (int64_t i = 3; i < 200; i += 6) {
    texts[i] = RandomText(rng);
    Add(live.get(), i, texts[i]);
  }
  auto fresh = Bm25Index::Create({1.5, 0.6}).value();
  for (int64_t i = 1; i < 200; i += 2) Add(fresh.get(), i, texts[i]);
  EXPECT_EQ(live->size(), 100);
  for (const char* q : {"ferry keeper", "the of a", "violet 1873 north", "stone"}) {
    EXPECT_EQ(Search(*live, q, 20), Search(*fresh, q, 20)) << q;
  }
}

TEST(Bm25Test, CompactionAfterManyRemovalsKeepsScores) {
  std::mt19937_64 rng(11);
  std::vector<std::string> texts(3000);
  for (auto& t : texts) t = RandomText(rng);
  auto live = Bm25Index::Create({}).value();
  auto fresh = Bm25Index::Create({}).value();
  std::vector<int64_t> gone;
  for (int64_t i = 0; i < 3000; ++i) {
    Add(live.get(), i, texts[i]);
    if (i % 6 == 0) {
      Add(fresh.get(), i, texts[i]);
    } else {
      gone.push_back(i);
    }
  }
  const int64_t before = live->memory_bytes();
  EXPECT_EQ(live->Remove(static_cast<int64_t>(gone.size()), gone.data()), 2500);
  EXPECT_LT(live->memory_bytes(), before / 2);  // the dead postings were compacted away
  for (const char* q : {"ferry keeper", "river bridge light", "1873"}) {
    EXPECT_EQ(Search(*live, q, 50), Search(*fresh, q, 50)) << q;
  }
}

TEST(Bm25Test, FilterKeepsOnlyAcceptedLabels) {
  auto idx = Bm25Index::Create({}).value();
  for (int64_t i = 0; i < 20; ++i) Add(idx.get(), i, "ferry number " + std::to_string(i));
  std::function<bool(int64_t)> odd = [](int64_t l) { return l % 2 == 1; };
  const Hits h = Search(*idx, "ferry", 20, &odd);
  ASSERT_EQ(h.size(), 10u);
  for (const auto& [label, score] : h) EXPECT_EQ(label % 2, 1);
}

TEST(Bm25Test, SaveLoadRoundTripsAndCorruptionIsDetected) {
  const std::string path =
      (std::filesystem::temp_directory_path() / ("rs_bm25_" + std::to_string(getpid()) + ".bm25"))
          .string();
  std::mt19937_64 rng(3);
  auto idx = Bm25Index::Create({0.9, 0.4}).value();
  for (int64_t i = 0; i < 100; ++i) Add(idx.get(), i * 7, RandomText(rng));
  const int64_t drop[] = {0, 14, 700};
  idx->Remove(3, drop);
  ASSERT_TRUE(idx->Save(path).ok());
  auto loaded = Bm25Index::Load(path).value();
  EXPECT_EQ(loaded->size(), idx->size());
  EXPECT_EQ(loaded->params().k1, 0.9);
  EXPECT_EQ(loaded->params().b, 0.4);
  EXPECT_EQ(Search(*loaded, "ferry light north", 30), Search(*idx, "ferry light north", 30));
  {  // flip one payload byte
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(60);
    f.put('\x7f');
  }
  EXPECT_EQ(Bm25Index::Load(path).status().code(), StatusCode::kDataLoss);
  EXPECT_EQ(Bm25Index::Load(path + ".missing").status().code(), StatusCode::kNotFound);
  std::filesystem::remove(path);
}

TEST(Bm25Test, BadParamsAreRejected) {
  EXPECT_EQ(Bm25Index::Create({-1, 0.5}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(Bm25Index::Create({1.2, 1.5}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(Bm25Index::Create({std::nan(""), 0.5}).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace ragserve::index
