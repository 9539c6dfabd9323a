// Retrieval of a collection beyond the dense index: BM25, hybrid fusion, metadata filters,
// passages of longer documents, delete by document, and the BM25 index's durability
// (services/index/collection.h).
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <set>

#include "services/index/collection.h"
#include "tests/index/test_data.h"

namespace ragserve::collection {
namespace {

namespace fs = std::filesystem;

using index::testing::FreshDir;

std::vector<std::string> Ids(const std::vector<Hit>& hits) {
  std::vector<std::string> ids;
  for (const auto& h : hits) ids.push_back(h.id);
  return ids;
}

std::set<std::string> IdSet(const std::vector<Hit>& hits) {
  std::set<std::string> ids;
  for (const auto& h : hits) ids.insert(h.id);
  return ids;
}

// Eight passages; "zephyrine" occurs in one only, "the" in all.
std::vector<Document> Corpus() {
  std::vector<Document> d = {
      {"p0", "the ferry to the island leaves at nine", R"({"year": 1990, "topic": "travel"})"},
      {"p1", "the lighthouse keeper painted the tower violet", R"({"year": 1873, "topic": "sea"})"},
      {"p2", "the zephyrine orchid grows only on the north cliffs", R"({"year": 2001})"},
      {"p3", "the bridge over the river has six arches", R"({"year": 1920, "topic": "city"})"},
      {"p4", "the market opens at dawn in the old town", R"({"year": 1955, "topic": "city"})"},
      {"p5", "the river floods the valley every spring", R"({"year": 1999, "topic": "sea"})"},
      {"p6", "the keeper of the archive speaks four languages", R"({"topic": "city"})"},
      {"p7", "the island ferry carries cars and bicycles", R"({"year": "n/a"})"},
  };
  return d;
}

StatusOr<std::vector<Hit>> One(const Collection& c, Query q, SearchOptions o) {
  RS_ASSIGN_OR_RETURN(auto r, c.Search({std::move(q)}, o));
  return r[0];
}

TEST(CollectionRetrievalTest, HybridIsTheDefaultAndBm25FindsTheRareWord) {
  auto store = CollectionStore::Open(FreshDir("retr_modes")).value();
  auto c = store->Create({.name = "docs", .dim = 64}).value();
  EXPECT_EQ(c->spec().retrieval, "hybrid");
  ASSERT_TRUE(c->Upsert(Corpus()).ok());
  SearchOptions bm25{.k = 3, .retrieval = "bm25"};
  auto h = One(*c, {.text = "Zephyrine orchids?"}, bm25).value();
  ASSERT_EQ(h.size(), 1u);  // the other words ("orchids") occur nowhere
  EXPECT_EQ(h[0].id, "p2");
  EXPECT_EQ(h[0].text, Corpus()[2].text);
  EXPECT_EQ(h[0].document_id, "p2");                     // a document that is one passage
  h = One(*c, {.text = "zephyrine"}, {.k = 3}).value();  // hybrid
  ASSERT_FALSE(h.empty());
  EXPECT_EQ(h[0].id, "p2");
  EXPECT_EQ(c->Info().lexical_documents, 8);
  EXPECT_GT(c->Info().lexical_bytes, 0);
}

TEST(CollectionRetrievalTest, WeightedFusionAtTheExtremesIsEachSingleMethod) {
  auto store = CollectionStore::Open(FreshDir("retr_weighted")).value();
  auto c = store->Create({.name = "docs", .dim = 64}).value();
  ASSERT_TRUE(c->Upsert(Corpus()).ok());
  for (const char* q : {"the island ferry", "keeper of the tower", "river valley spring"}) {
    SearchOptions o{.k = 4};
    o.retrieval = "dense";
    const auto dense = Ids(One(*c, {.text = q}, o).value());
    o.retrieval = "bm25";
    const auto lex = Ids(One(*c, {.text = q}, o).value());
    o.retrieval = "hybrid";
    o.fusion = FusionSpec{.method = "weighted", .dense_weight = 1.0};
    auto only_dense = Ids(One(*c, {.text = q}, o).value());
    o.fusion->dense_weight = 0.0;
    auto only_lex = Ids(One(*c, {.text = q}, o).value());
    only_dense.resize(std::min(only_dense.size(), dense.size()));
    only_lex.resize(std::min(only_lex.size(), lex.size()));
    // The top of the fused list is each method's top (ties below may be filled by the other).
    EXPECT_EQ(only_dense[0], dense[0]) << q;
    EXPECT_EQ(only_lex[0], lex[0]) << q;
    o.fusion = FusionSpec{.method = "rrf"};
    const auto rrf = One(*c, {.text = q}, o).value();
    ASSERT_EQ(rrf.size(), 4u);
    for (size_t i = 1; i < rrf.size(); ++i) EXPECT_GE(rrf[i - 1].score, rrf[i].score);
  }
}

TEST(CollectionRetrievalTest, RangeAndAnyOfFiltersApplyToEveryMode) {
  auto store = CollectionStore::Open(FreshDir("retr_filters")).value();
  auto c = store->Create({.name = "docs", .dim = 64}).value();
  ASSERT_TRUE(c->Upsert(Corpus()).ok());
  for (const char* mode : {"dense", "bm25", "hybrid"}) {
    SearchOptions o{.k = 8, .retrieval = mode};
    o.filter_ranges["year"] = NumericRange{.gte = 1900, .lt = 2000};
    auto ids = IdSet(One(*c, {.text = "the"}, o).value());
    EXPECT_EQ(ids, (std::set<std::string>{"p0", "p3", "p4", "p5"})) << mode;  // "n/a" is no number
    o.filter_ranges.clear();
    o.filter_any_of["topic"] = {"\"sea\"", "\"travel\""};
    ids = IdSet(One(*c, {.text = "the"}, o).value());
    EXPECT_EQ(ids, (std::set<std::string>{"p0", "p1", "p5"})) << mode;
  }
  SearchOptions bad{.k = 3};
  bad.filter_ranges["year"] = NumericRange{};
  EXPECT_EQ(One(*c, {.text = "x"}, bad).status().code(), StatusCode::kInvalidArgument);
  bad.filter_ranges.clear();
  bad.filter_any_of["topic"] = {};
  EXPECT_EQ(One(*c, {.text = "x"}, bad).status().code(), StatusCode::kInvalidArgument);
  bad.filter_any_of["topic"] = {"not json"};
  EXPECT_EQ(One(*c, {.text = "x"}, bad).status().code(), StatusCode::kInvalidArgument);
}

TEST(CollectionRetrievalTest, BadQueriesAreInvalidArgument) {
  auto store = CollectionStore::Open(FreshDir("retr_bad")).value();
  auto c = store->Create({.name = "docs", .dim = 8}).value();
  ASSERT_TRUE(c->Upsert(Corpus()).ok());
  auto code = [&](Query q, SearchOptions o) { return One(*c, std::move(q), o).status().code(); };
  EXPECT_EQ(code({.text = "?!"}, {.k = 2}), StatusCode::kInvalidArgument);  // hybrid: no words
  EXPECT_EQ(code({.text = "?!"}, {.k = 2, .retrieval = "bm25"}), StatusCode::kInvalidArgument);
  EXPECT_EQ(code({.vector = std::vector<float>(8, 0.1f)}, {.k = 2, .retrieval = "bm25"}),
            StatusCode::kInvalidArgument);  // bm25 needs a text
  EXPECT_EQ(code({.text = "ferry"}, {.k = 2, .retrieval = "sparse"}), StatusCode::kInvalidArgument);
  SearchOptions o{.k = 2};
  o.fusion = FusionSpec{.method = "weighted", .dense_weight = 1.5};
  EXPECT_EQ(code({.text = "ferry"}, o), StatusCode::kInvalidArgument);
  const auto wrong = One(*c, {.vector = std::vector<float>(5, 0.1f)}, {.k = 2}).status();
  EXPECT_EQ(wrong.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(wrong.message().find("dimension 5"), std::string::npos) << wrong.message();
  EXPECT_NE(wrong.message().find("has 8"), std::string::npos) << wrong.message();
  // A vector query in hybrid mode is dense only (its score is the similarity).
  auto h = One(*c, {.vector = std::vector<float>(8, 0.1f)}, {.k = 2}).value();
  EXPECT_EQ(h.size(), 2u);
  CollectionSpec spec{.name = "bad", .dim = 8, .retrieval = "lexical"};
  EXPECT_EQ(store->Create(spec).status().code(), StatusCode::kInvalidArgument);
  spec.retrieval = "bm25";
  spec.bm25.b = 2;
  EXPECT_EQ(store->Create(spec).status().code(), StatusCode::kInvalidArgument);
}

TEST(CollectionRetrievalTest, PassagesCarryTheirDocumentAndDeleteByDocumentRemovesThemAll) {
  auto store = CollectionStore::Open(FreshDir("retr_passages")).value();
  auto c = store->Create({.name = "docs", .dim = 64}).value();
  std::vector<Document> docs = Corpus();
  for (int i = 0; i < 3; ++i) {
    Document d;
    d.id = "book#" + std::to_string(i);
    d.text = "chapter " + std::to_string(i) + " of the zephyrine saga";
    d.document_id = "book";
    d.chunk_index = i;
    d.offset = 1000 * i;
    docs.push_back(d);
  }
  docs.push_back({.id = "bad", .text = "x", .document_id = "book", .chunk_index = -1});
  EXPECT_EQ(c->Upsert(docs).status().code(), StatusCode::kInvalidArgument);
  docs.pop_back();
  ASSERT_TRUE(c->Upsert(docs).ok());
  auto h = One(*c, {.text = "chapter 2 saga"}, {.k = 1, .retrieval = "bm25"}).value();
  ASSERT_EQ(h.size(), 1u);
  EXPECT_EQ(h[0].id, "book#2");
  EXPECT_EQ(h[0].document_id, "book");
  EXPECT_EQ(h[0].chunk_index, 2);
  EXPECT_EQ(h[0].offset, 2000);
  SearchOptions by_doc{.k = 10, .retrieval = "bm25"};
  by_doc.filter_equals["_doc_id"] = "\"book\"";
  EXPECT_EQ(One(*c, {.text = "zephyrine"}, by_doc).value().size(), 3u);
  EXPECT_EQ(c->Delete({"p0"}, {"book", "unknown"}).value(), 4);
  EXPECT_TRUE(One(*c, {.text = "chapter saga"}, {.k = 5, .retrieval = "bm25"}).value().empty());
  EXPECT_EQ(c->Info().num_documents, 7);
  EXPECT_EQ(c->Info().lexical_documents, 7);
  EXPECT_EQ(c->Delete({}, {}).status().code(), StatusCode::kInvalidArgument);
}

TEST(CollectionRetrievalTest, Bm25SurvivesReopenCatchesUpAndRebuildsAMissingFile) {
  const auto dir = FreshDir("retr_durable");
  auto bm25_hits = [](const Collection& c, const std::string& q) {
    return One(c, {.text = q}, {.k = 8, .retrieval = "bm25"}).value();
  };
  std::vector<Hit> before;
  {
    auto store = CollectionStore::Open(dir).value();
    auto c = store->Create({.name = "docs", .dim = 16, .bm25 = {2.0, 0.3}}).value();
    ASSERT_TRUE(c->Upsert(Corpus()).ok());
    ASSERT_TRUE(c->Checkpoint().ok());
    // After the checkpoint: a replacement, a delete and a new document (caught up on open).
    ASSERT_TRUE(
        c->Upsert({{"p3", "the zephyrine bridge", "{}"}, {"p8", "zephyrine tea", "{}"}}).ok());
    ASSERT_EQ(c->Delete({"p2"}).value(), 1);
    before = bm25_hits(*c, "the zephyrine bridge river");
  }  // the destructor checkpoints; reopen from that checkpoint
  auto scores = [](const std::vector<Hit>& h) {
    std::vector<std::pair<std::string, float>> s;
    for (const auto& x : h) s.emplace_back(x.id, x.score);
    return s;
  };
  {
    auto store = CollectionStore::Open(dir).value();
    auto c = store->Get("docs").value();
    EXPECT_EQ(c->spec().bm25.k1, 2.0);
    EXPECT_EQ(c->spec().bm25.b, 0.3);
    EXPECT_EQ(scores(bm25_hits(*c, "the zephyrine bridge river")), scores(before));
    ASSERT_TRUE(c->Upsert({{"p9", "zephyrine river", "{}"}}).ok());
    before = bm25_hits(*c, "the zephyrine bridge river");
  }
  // Without the BM25 files the index is rebuilt from the store, with the same scores.
  for (const auto& e : fs::directory_iterator(dir + "/indexes")) {
    if (e.path().extension() == ".bm25") fs::remove(e.path());
  }
  auto store = CollectionStore::Open(dir).value();
  auto c = store->Get("docs").value();
  EXPECT_EQ(scores(bm25_hits(*c, "the zephyrine bridge river")), scores(before));
  EXPECT_EQ(c->Info().lexical_documents, 9);
}

}  // namespace
}  // namespace ragserve::collection
