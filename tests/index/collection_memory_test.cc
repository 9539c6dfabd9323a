// The index's memory limit (StoreLimits::max_memory_bytes, --memory-limit-mb): the collections'
// memory estimate (Collection::MemoryBytes, from the sizes of their structures), the admission of
// Upserts against it, and how close the estimate is to the heap the collections really hold.
#include <gtest/gtest.h>
#include <malloc.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "index/bm25.h"
#include "index/index_factory.h"
#include "index/text_tokenizer.h"
#include "services/index/collection.h"
#include "tests/index/test_data.h"

namespace ragserve::collection {
namespace {

using index::Metric;
using index::testing::FreshDir;

// n documents "<prefix><i>" of dim-dimensional vectors, ~`words` words of text drawn from a
// vocabulary of 5000 made-up words (Zipf-like: low ranks are frequent), passage metadata.
std::vector<Document> MemDocs(int64_t n, int dim, uint64_t seed, const std::string& prefix,
                              int words = 60) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  std::vector<Document> docs(n);
  for (int64_t i = 0; i < n; ++i) {
    Document& d = docs[i];
    d.id = prefix + std::to_string(i);
    for (int w = 0; w < words; ++w) {
      const auto rank = static_cast<int>(std::pow(5000.0, u(rng)));  // 1..5000, skewed low
      d.text += "w" + std::to_string(rank * 7919 % 100003) + (w + 1 < words ? " " : ".");
    }
    d.metadata_json = R"({"source": "synthetic corpus", "year": )" + std::to_string(2000 + i % 25) +
                      R"(, "tags": ["a", "b"]})";
    d.document_id = prefix + "doc" + std::to_string(i / 4);
    d.chunk_index = static_cast<int32_t>(i % 4);
    d.offset = (i % 4) * 512;
    d.vector.resize(dim);
    for (float& v : d.vector) v = g(rng);
  }
  return docs;
}

// mallinfo2 counts glibc malloc's allocations; a sanitizer's allocator replaces it.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool kMemGlibcMalloc = false;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) || \
    __has_feature(memory_sanitizer)
constexpr bool kMemGlibcMalloc = false;
#else
constexpr bool kMemGlibcMalloc = true;
#endif
#else
constexpr bool kMemGlibcMalloc = true;
#endif

// Bytes malloc has handed out and not taken back (arena + mmapped chunks).
int64_t MemHeapBytes() {
  const struct mallinfo2 mi = mallinfo2();
  return static_cast<int64_t>(mi.uordblks + mi.hblkhd);
}

int64_t MemRssBytes() {
  std::ifstream f("/proc/self/status");
  for (std::string line; std::getline(f, line);) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
  }
  return 0;
}

TEST(CollectionMemoryTest,
     UpsertPastTheLimitIsResourceExhaustedWithNothingAppliedAndDeletesGiveRoomBack) {
  const auto dir = FreshDir("coll_mem_limit");
  StoreLimits limits;
  limits.max_memory_bytes = int64_t{1} << 20;  // 1 MiB
  auto store = CollectionStore::Open(dir, limits).value();
  auto c =
      store->Create({.name = "m", .dim = 32, .metric = Metric::kL2, .index_kind = "flat"}).value();
  const int64_t empty = store->MemoryBytes();
  EXPECT_GE(empty, 0);
  // Fill in batches of 100 until a batch is refused.
  int batches = 0;
  Status refused;
  std::vector<Document> last;
  for (; batches < 1000; ++batches) {
    last = MemDocs(100, 32, 1000 + batches, "b" + std::to_string(batches) + "-", 8);
    auto r = c->Upsert(last);
    if (!r.ok()) {
      refused = r.status();
      break;
    }
    EXPECT_LE(store->MemoryBytes(), limits.max_memory_bytes);
  }
  ASSERT_GE(batches, 3) << "the first batches fit in 1 MiB";
  ASSERT_EQ(refused.code(), StatusCode::kResourceExhausted) << refused.ToString();
  EXPECT_NE(refused.message().find("--memory-limit-mb"), std::string::npos) << refused.message();
  // Nothing of the refused message was applied: no document of it, the same count and bytes.
  const int64_t held = store->MemoryBytes();
  EXPECT_LE(held, limits.max_memory_bytes);
  EXPECT_EQ(c->Info().num_documents, 100 * batches);
  EXPECT_EQ(c->Info().num_vectors, 100 * batches);
  std::vector<Document> found;
  std::vector<std::string> missing;
  ASSERT_TRUE(c->Get({last.front().id, last.back().id}, &found, &missing).ok());
  EXPECT_TRUE(found.empty());
  EXPECT_EQ(missing.size(), 2u);
  auto again = c->Upsert(last);
  EXPECT_EQ(again.status().code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(store->MemoryBytes(), held);
  // A replacement of documents already held also needs room (its new entries come first).
  // Deleting the first half gives their bytes back: the refused message fits now.
  std::vector<std::string> ids;
  for (int b = 0; b < batches / 2; ++b) {
    for (int i = 0; i < 100; ++i) ids.push_back("b" + std::to_string(b) + "-" + std::to_string(i));
  }
  ASSERT_EQ(c->Delete(ids).value(), static_cast<int64_t>(ids.size()));
  EXPECT_LT(store->MemoryBytes(), held);
  ASSERT_TRUE(c->Upsert(last).ok()) << "room came back after the delete";
  EXPECT_LE(store->MemoryBytes(), limits.max_memory_bytes);
  const int64_t docs_now = c->Info().num_documents;
  const int64_t before_restart = store->MemoryBytes();
  // A restart recomputes the estimate from what it loads: the acknowledged documents are there,
  // and the estimate is the same size (the loaded arrays are sized to their contents, so it may
  // only be smaller).
  c.reset();
  store.reset();
  store = CollectionStore::Open(dir, limits).value();
  c = store->Get("m").value();
  EXPECT_EQ(c->Info().num_documents, docs_now);
  EXPECT_GT(store->MemoryBytes(), before_restart / 2);
  EXPECT_LE(store->MemoryBytes(), before_restart);
  // Dropping the collection gives everything back.
  ASSERT_TRUE(store->Drop("m").ok());
  EXPECT_EQ(store->MemoryBytes(), 0);
}

TEST(CollectionMemoryTest, HnswKeepsDeletedNodesCountedUntilARebuildFreesThem) {
  const auto dir = FreshDir("coll_mem_hnsw");
  StoreLimits limits;
  limits.max_memory_bytes = int64_t{2} << 20;
  auto store = CollectionStore::Open(dir, limits).value();
  // Vectors of 256 floats and texts of 4 words: the graph is most of the collection.
  const std::string params = R"({"ef_construction": 40, "initial_capacity": 64})";
  auto c = store
               ->Create({.name = "h",
                         .dim = 256,
                         .metric = Metric::kL2,
                         .index_kind = "hnsw",
                         .params_json = params})
               .value();
  int batches = 0;
  std::vector<Document> last;
  for (; batches < 1000; ++batches) {
    last = MemDocs(100, 256, 2000 + batches, "h" + std::to_string(batches) + "-", 4);
    if (!c->Upsert(last).ok()) break;
  }
  ASSERT_GE(batches, 3);
  const int64_t full = store->MemoryBytes();
  // Delete all but the first batch: the maps and BM25 give their bytes back at once, the graph
  // nodes stay (hnswlib only marks them deleted).
  std::vector<std::string> ids;
  for (int b = 1; b < batches; ++b) {
    for (int i = 0; i < 100; ++i) ids.push_back("h" + std::to_string(b) + "-" + std::to_string(i));
  }
  ASSERT_TRUE(c->Delete(ids).ok());
  const int64_t after_delete = store->MemoryBytes();
  EXPECT_LT(after_delete, full);
  const int64_t index_bytes = c->Info().index_bytes;
  EXPECT_GT(index_bytes, after_delete / 2) << "the deleted nodes are still counted";
  // A rebuild builds the graph of the live documents only.
  ASSERT_TRUE(c->Rebuild("", params).ok());
  EXPECT_LT(store->MemoryBytes(), after_delete);
  EXPECT_LT(c->Info().index_bytes, index_bytes / 2);
  EXPECT_TRUE(c->Upsert(last).ok());
}

TEST(CollectionMemoryTest, EachIndexKindsGrowthEstimateBoundsItsRealGrowth) {
  const int dim = 24;
  for (const char* kind : {"flat", "hnsw", "ivf_flat", "ivf_pq"}) {
    SCOPED_TRACE(kind);
    const std::string params = std::string(kind) == "ivf_pq"     ? R"({"nlist": 16, "pq_nbits": 4})"
                               : std::string(kind) == "ivf_flat" ? R"({"nlist": 16})"
                               : std::string(kind) == "hnsw"     ? R"({"ef_construction": 40})"
                                                                 : "{}";
    auto spec = index::MakeIndexSpec(kind, Metric::kL2, dim, params).value();
    auto idx = index::CreateIndex(spec).value();
    const auto x = index::testing::ClusteredData(2000, dim, 8, 7);
    if (idx->needs_training()) ASSERT_TRUE(idx->train(1000, x.data()).ok());
    int64_t next = 0;
    for (int64_t n : {1, 7, 100, 500, 1392}) {
      const int64_t before = idx->memory_bytes();
      const int64_t bound = idx->memory_bytes_to_add(n);
      const auto ids = index::testing::Iota(n, next);
      ASSERT_TRUE(idx->add(n, x.data() + next * dim, ids.data()).ok());
      next += n;
      EXPECT_LE(idx->memory_bytes() - before, bound) << n << " vectors after " << next - n;
    }
  }
}

TEST(CollectionMemoryTest, Bm25AddBytesBoundsItsGrowthAndMemoryBytesSurvivesSaveAndLoad) {
  auto bm = index::Bm25Index::Create({}).value();
  const auto docs = MemDocs(3000, 1, 5, "t", 40);
  int64_t label = 0;
  for (int64_t n : {1, 10, 300, 1000, 1689}) {
    std::vector<std::vector<std::string>> terms(n);
    std::vector<int64_t> labels(n);
    for (int64_t i = 0; i < n; ++i) {
      terms[i] = index::LexicalTerms(docs[label + i].text);
      labels[i] = label + i;
    }
    const int64_t before = bm->memory_bytes();
    const int64_t bound = bm->AddBytes(n, terms.data());
    bm->AddTerms(n, labels.data(), terms.data());
    label += n;
    EXPECT_LE(bm->memory_bytes() - before, bound) << n << " documents after " << label - n;
    EXPECT_GT(bm->memory_bytes() - before, bound / 4) << "the bound is not far off";
  }
  // Removing documents lowers the estimate; a save and load gives about the same one.
  std::vector<int64_t> gone = index::testing::Iota(1500);
  const int64_t full = bm->memory_bytes();
  EXPECT_EQ(bm->Remove(1500, gone.data()), 1500);
  EXPECT_LT(bm->memory_bytes(), full);
  const std::string path = FreshDir("bm25_mem") + ".bm25";
  ASSERT_TRUE(bm->Save(path).ok());
  auto loaded = index::Bm25Index::Load(path).value();
  std::remove(path.c_str());
  // The loaded one holds no postings of removed documents, but its slots' term lists grew by
  // appending (capacity up to twice the size).
  EXPECT_LT(loaded->memory_bytes(), bm->memory_bytes() * 5 / 4);
  EXPECT_GT(loaded->memory_bytes(), bm->memory_bytes() / 2);
}

// Documents built to cost the most memory per message byte: every word new to the vocabulary
// (5-letter random words) and metadata of 40 members holding short strings.
std::vector<Document> MemAbusiveDocs(int64_t n, int dim, uint64_t seed, const std::string& prefix) {
  std::vector<Document> docs = MemDocs(n, dim, seed, prefix, 1);
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> letter('a', 'z');
  for (Document& d : docs) {
    d.text.clear();
    for (int w = 0; w < 80; ++w) {
      for (int j = 0; j < 5; ++j) d.text += static_cast<char>(letter(rng));
      d.text += ' ';
    }
    d.metadata_json = "{";
    for (int k = 0; k < 40; ++k) {
      d.metadata_json +=
          (k ? ",\"k" : "\"k") + std::to_string(k) + "\":\"v" + std::to_string(k) + "\"";
    }
    d.metadata_json += "}";
  }
  return docs;
}

// The estimate against the heap the collections really take, measured twice: across the
// upserts (a fresh store; RocksDB's memtables and block cache, which its own estimates give,
// are taken off) and across a reopen (the index files are loaded, RocksDB replays and flushes
// its log, the maps are rebuilt). malloc's counters (mallinfo2: bytes in use) are read, not
// VmRSS, which also holds freed pages the allocator kept; VmRSS is printed beside them.
void MemMeasure(const char* what, bool abusive, double factor) {
  if (!kMemGlibcMalloc) GTEST_SKIP() << "a sanitizer's allocator: mallinfo2 does not see it";
  const auto dir = FreshDir(std::string("coll_mem_") + what);
  const int64_t n = abusive ? 2000 : 6000;
  auto docs = [&](int64_t count, int dim, uint64_t seed, const std::string& prefix) {
    return abusive ? MemAbusiveDocs(count, dim, seed, prefix) : MemDocs(count, dim, seed, prefix);
  };
  malloc_trim(0);
  int64_t heap0 = MemHeapBytes(), rss0 = MemRssBytes();
  int64_t heap_live = 0, rss_live = 0, estimate_live = 0, rocks_live = 0;
  {
    auto store = CollectionStore::Open(dir).value();
    auto h = store
                 ->Create({.name = "h",
                           .dim = 128,
                           .metric = Metric::kCosine,
                           .index_kind = "hnsw",
                           .params_json = R"({"ef_construction": 40})"})
                 .value();
    auto f = store->Create({.name = "f", .dim = 128, .metric = Metric::kL2, .index_kind = "flat"})
                 .value();
    for (int64_t b = 0; b < n; b += 1000) {  // 1000 per message
      ASSERT_TRUE(h->Upsert(docs(1000, 128, 40 + b, "h" + std::to_string(b) + "-")).ok());
      ASSERT_TRUE(f->Upsert(docs(1000, 128, 90 + b, "f" + std::to_string(b) + "-")).ok());
    }
    malloc_trim(0);
    rocks_live = store->DbMemoryBytes();
    heap_live = MemHeapBytes() - heap0 - rocks_live;
    rss_live = MemRssBytes() - rss0;
    estimate_live = store->MemoryBytes();
  }
  malloc_trim(0);
  heap0 = MemHeapBytes();
  rss0 = MemRssBytes();
  auto store = CollectionStore::Open(dir).value();
  malloc_trim(0);
  const int64_t rocks = store->DbMemoryBytes();
  const int64_t heap = MemHeapBytes() - heap0 - rocks, rss = MemRssBytes() - rss0;
  const int64_t estimate = store->MemoryBytes();
  auto info = [&](const char* name) { return store->Get(name).value()->Info(); };
  constexpr double kMiB = 1 << 20;
  std::printf(
      "%s: 2 x %lld documents, dim 128 (hnsw + flat).\n"
      "  after the upserts: estimate %.1f MiB, heap %.1f MiB besides RocksDB's %.1f MiB "
      "(VmRSS +%.1f MiB in all): estimate / heap = %.2f\n"
      "  after a reopen:    estimate %.1f MiB (hnsw %.1f, flat %.1f; indexes %.1f + %.1f, bm25 "
      "%.1f + %.1f), heap %.1f MiB besides RocksDB's %.1f MiB (VmRSS +%.1f MiB in all): "
      "estimate / heap = %.2f\n",
      what, static_cast<long long>(n), estimate_live / kMiB, heap_live / kMiB, rocks_live / kMiB,
      rss_live / kMiB, static_cast<double>(estimate_live) / static_cast<double>(heap_live),
      estimate / kMiB, info("h").memory_bytes / kMiB, info("f").memory_bytes / kMiB,
      info("h").index_bytes / kMiB, info("f").index_bytes / kMiB, info("h").lexical_bytes / kMiB,
      info("f").lexical_bytes / kMiB, heap / kMiB, rocks / kMiB, rss / kMiB,
      static_cast<double>(estimate) / static_cast<double>(heap));
  EXPECT_GT(estimate_live, heap_live / factor);
  EXPECT_LT(estimate_live, heap_live * factor);
  EXPECT_GT(estimate, heap / factor);
  EXPECT_LT(estimate, heap * factor);
}

TEST(CollectionMemoryTest, EstimateIsWithinAFactorOfOnePointFiveOfTheHeapForTypicalDocuments) {
  MemMeasure("typical: ~60 words from a 5000-word vocabulary, passage metadata", false, 1.5);
}

TEST(CollectionMemoryTest, EstimateIsWithinAFactorOfOnePointFiveOfTheHeapForAbusiveDocuments) {
  MemMeasure("abusive: 80 new words each, 40 metadata members", true, 1.5);
}

}  // namespace
}  // namespace ragserve::collection
