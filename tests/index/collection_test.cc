// Collections: durable documents in RocksDB with a derived ANN index (services/index/collection.h).
#include "services/index/collection.h"

#include <gtest/gtest.h>
#include <rocksdb/env.h>
#include <rocksdb/file_system.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "tests/index/test_data.h"
#include "tests/support/full_disk_fs.h"

namespace ragserve::collection {
namespace {

namespace fs = std::filesystem;
using index::Metric;

using index::testing::FreshDir;

std::vector<Document> VectorDocs(int64_t n, int dim, uint64_t seed, const std::string& prefix) {
  const auto x = index::testing::ClusteredData(n, dim, 8, seed);
  std::vector<Document> docs(n);
  for (int64_t i = 0; i < n; ++i) {
    docs[i].id = prefix + std::to_string(i);
    docs[i].text = "text of " + docs[i].id;
    docs[i].metadata_json =
        R"({"group": )" + std::to_string(i % 3) + R"(, "tag": "t)" + std::to_string(i % 2) + "\"}";
    docs[i].vector.assign(x.begin() + i * dim, x.begin() + (i + 1) * dim);
  }
  return docs;
}

TEST(CollectionTest, TextUpsertSearchReplaceDeleteAndFilter) {
  const auto dir = FreshDir("coll_text");
  auto store = CollectionStore::Open(dir).value();
  auto c = store->Create({.name = "docs", .dim = 64, .metric = Metric::kCosine}).value();
  std::vector<Document> docs = {
      {"a", "the quick brown fox jumps over the lazy dog", R"({"lang": "en", "n": 1})", {}},
      {"b", "quantum field theory and particle physics", R"({"lang": "en", "n": 2})", {}},
      {"c", "der schnelle braune fuchs springt", R"({"lang": "de", "n": 3})", {}},
  };
  EXPECT_EQ(c->Upsert(docs).value(), 3);
  auto r = c->Search({{.text = "quick brown fox"}}, {.k = 3}).value();
  ASSERT_EQ(r.size(), 1u);
  ASSERT_EQ(r[0].size(), 3u);
  EXPECT_EQ(r[0][0].id, "a");
  EXPECT_EQ(r[0][0].text, docs[0].text);
  EXPECT_NE(r[0][0].metadata_json.find("\"lang\":\"en\""), std::string::npos);
  EXPECT_GT(r[0][0].score, r[0][1].score);
  // Filter on metadata equality.
  SearchOptions f{.k = 3};
  f.filter_equals["lang"] = "\"de\"";
  r = c->Search({{.text = "quick brown fox"}}, f).value();
  ASSERT_EQ(r[0].size(), 1u);
  EXPECT_EQ(r[0][0].id, "c");
  f.filter_equals = {{"n", "2"}};
  r = c->Search({{.text = "fox"}}, f).value();
  ASSERT_EQ(r[0].size(), 1u);
  EXPECT_EQ(r[0][0].id, "b");
  // Replace "a" by a physics text: it moves.
  ASSERT_TRUE(c->Upsert({{"a", "particle physics of quantum fields", "{}", {}}}).ok());
  r = c->Search({{.text = "quick brown fox"}}, {.k = 3}).value();
  EXPECT_NE(r[0][0].id, "a");
  EXPECT_EQ(c->Info().num_documents, 3);
  EXPECT_EQ(c->Info().num_vectors, 3);
  // Delete removes from search and from Get.
  EXPECT_EQ(c->Delete({"b", "zzz"}).value(), 1);
  r = c->Search({{.text = "quantum physics"}}, {.k = 10}).value();
  for (const auto& h : r[0]) EXPECT_NE(h.id, "b");
  EXPECT_EQ(r[0].size(), 2u);
  std::vector<Document> found;
  std::vector<std::string> missing;
  ASSERT_TRUE(c->Get({"a", "b"}, &found, &missing).ok());
  ASSERT_EQ(found.size(), 1u);
  EXPECT_EQ(found[0].text, "particle physics of quantum fields");
  EXPECT_EQ(missing, std::vector<std::string>{"b"});
  store.reset();
  fs::remove_all(dir);
}

TEST(CollectionTest, BadInputIsRejectedAndChangesNothing) {
  const auto dir = FreshDir("coll_bad");
  auto store = CollectionStore::Open(dir).value();
  auto c =
      store->Create({.name = "v", .dim = 4, .metric = Metric::kL2, .index_kind = "flat"}).value();
  ASSERT_TRUE(c->Upsert({{"x", "", "{}", {1, 2, 3, 4}}}).ok());
  auto st = c->Upsert({{"y", "", "{}", {1, 2, 3}}}).status();
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("dimension 3"), std::string::npos) << st.message();
  st = c->Upsert({{"y", "", "{}", {1, 2, 3, 4}}, {"z", "", "{}", {1, NAN, 3, 4}}}).status();
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("'z'"), std::string::npos) << st.message();
  st = c->Upsert({{"y", "", "[1]", {1, 2, 3, 4}}}).status();
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(c->Upsert({}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(c->Info().num_documents, 1);  // nothing of the bad batches landed
  EXPECT_EQ(c->Search({{.vector = {1, 2, 3, 4}}}, {.k = 0}).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(c->Search({{.vector = {1, 2, INFINITY, 4}}}, {.k = 1}).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(c->Search({}, {.k = 1}).status().code(), StatusCode::kInvalidArgument);
  SearchOptions f{.k = 1};
  f.filter_equals["lang"] = "not json";
  EXPECT_EQ(c->Search({{.vector = {1, 2, 3, 4}}}, f).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(store->Get("nope").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(store->Drop("nope").code(), StatusCode::kNotFound);
  EXPECT_EQ(store->Create({.name = "v", .dim = 4}).status().code(), StatusCode::kAlreadyExists);
  st = store->Create({.name = "h", .dim = 4, .params_json = R"({"M": 0})"}).status();
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("'M'"), std::string::npos);
  EXPECT_EQ(store->Create({.name = "bad name!", .dim = 4}).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(store->Create({.name = "d0", .dim = 0}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(store->List().size(), 1u);
  store.reset();
  fs::remove_all(dir);
}

// A search of queries x k hits with texts, or a Get of many ids, could build an answer of
// gigabytes (1,024 queries x 10,000 hits x the texts) that the gRPC send limit then refuses: it
// is refused with ResourceExhausted as soon as it passes max_response_bytes, before it is built.
TEST(CollectionTest, AnswersOverTheResponseLimitAreResourceExhausted) {
  const auto dir = FreshDir("coll_answer_limit");
  StoreLimits limits;
  limits.max_response_bytes = 64 << 10;
  auto store = CollectionStore::Open(dir, limits).value();
  auto c =
      store->Create({.name = "big", .dim = 4, .metric = Metric::kL2, .index_kind = "flat"}).value();
  std::vector<Document> docs;
  std::vector<std::string> ids;
  for (int i = 0; i < 100; ++i) {
    std::string id = "d";
    id += std::to_string(i);
    docs.push_back({id,
                    std::string(2000, static_cast<char>('a' + i % 26)),
                    "{}",
                    {static_cast<float>(i), 1, 2, 3}});
    ids.push_back(docs.back().id);
  }
  ASSERT_EQ(c->Upsert(docs).value(), 100);
  // 100 hits x 2,000 bytes of text: over 64 KiB.
  auto st = c->Search({{.vector = {0, 1, 2, 3}}}, {.k = 100}).status();
  EXPECT_EQ(st.code(), StatusCode::kResourceExhausted) << st.message();
  EXPECT_NE(st.message().find("65536 bytes"), std::string::npos) << st.message();
  // The same hits without texts, or fewer of them, fit.
  EXPECT_EQ(c->Search({{.vector = {0, 1, 2, 3}}}, {.k = 100, .include_text = false})->at(0).size(),
            100u);
  EXPECT_EQ(c->Search({{.vector = {0, 1, 2, 3}}}, {.k = 10})->at(0).size(), 10u);
  std::vector<Document> found;
  std::vector<std::string> missing;
  EXPECT_EQ(c->Get(ids, &found, &missing).code(), StatusCode::kResourceExhausted);
  // Ids alone past the limit (as many as a 64 MiB request holds) are refused before any read.
  EXPECT_EQ(c->Get(std::vector<std::string>(5000, "nope"), &found, &missing).code(),
            StatusCode::kResourceExhausted);
  ASSERT_TRUE(c->Get({ids.begin(), ids.begin() + 10}, &found, &missing).ok());
  EXPECT_EQ(found.size(), 10u);
  store.reset();
  fs::remove_all(dir);
}

// Writes documents in a child process that then dies without any shutdown (no checkpoint,
// no destructors): everything the child saw acknowledged must be there after reopening.
TEST(CollectionTest, AcknowledgedWritesSurviveACrashAndACleanReopen) {
  const auto dir = FreshDir("coll_crash");
  constexpr int kDim = 16;
  {
    auto store = CollectionStore::Open(dir).value();
    auto c = store->Create({.name = "h", .dim = kDim, .metric = Metric::kL2}).value();
    ASSERT_TRUE(c->Upsert(VectorDocs(300, kDim, 1, "a")).ok());
  }  // clean close: checkpoint written
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    auto store = CollectionStore::Open(dir);
    if (!store.ok()) _exit(2);
    auto c = (*store)->Get("h");
    if (!c.ok()) _exit(3);
    if (!(*c)->Upsert(VectorDocs(200, kDim, 2, "b")).ok()) _exit(4);  // new after ckpt
    if (!(*c)->Delete({"a0", "a1", "a2"}).ok()) _exit(5);             // removals after ckpt
    auto re = VectorDocs(1, kDim, 3, "a");
    re[0].id = "a10";
    re[0].text = "replaced";
    if (!(*c)->Upsert(re).ok()) _exit(6);
    _exit(0);  // crash: no checkpoint, no RocksDB close
  }
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status));
  ASSERT_EQ(WEXITSTATUS(status), 0);
  for (int round = 0; round < 2; ++round) {  // after the crash, then after a clean reopen
    auto store = CollectionStore::Open(dir).value();
    auto c = store->Get("h").value();
    const auto info = c->Info();
    EXPECT_EQ(info.num_documents, 300 + 200 - 3) << round;
    EXPECT_EQ(info.num_vectors, 300 + 200 - 3) << round;
    const auto b = VectorDocs(200, kDim, 2, "b");
    for (int i = 0; i < 200; i += 37) {
      auto r = c->Search({{.vector = b[i].vector}}, {.k = 1}).value();
      ASSERT_EQ(r[0].size(), 1u);
      EXPECT_EQ(r[0][0].id, b[i].id);
      EXPECT_NEAR(r[0][0].score, 0.0f, 1e-4);
    }
    const auto a = VectorDocs(3, kDim, 1, "a");
    auto r = c->Search({{.vector = a[0].vector}}, {.k = 5}).value();
    for (const auto& h : r[0]) EXPECT_NE(h.id, "a0");
    std::vector<Document> found;
    std::vector<std::string> missing;
    ASSERT_TRUE(c->Get({"a10", "a1"}, &found, &missing).ok());
    ASSERT_EQ(found.size(), 1u);
    EXPECT_EQ(found[0].text, "replaced");
  }
  fs::remove_all(dir);
}

// Found by tools/chaos (diskfull:index): a full data disk made Upsert fail with INTERNAL (now
// RESOURCE_EXHAUSTED, C1); once there is room again the very next write succeeds, without a
// restart, whether the disk frees plenty (1 GiB) or only a little: 8 MiB is below RocksDB's own
// recovery threshold (its 64 MiB write buffer), where writes stayed refused until a restart (C2,
// docs/RELIABILITY.md). Searches and reads keep working throughout, on another thread, and every
// acknowledged write is there, before and after a reopen of the store.
class FullDiskTest : public ::testing::TestWithParam<uint64_t> {};

TEST_P(FullDiskTest, IsResourceExhaustedAndTheNextWriteOnceSpaceIsBackSucceeds) {
  const auto dir = FreshDir("coll_fulldisk");
  constexpr int kDim = 8;
  auto disk = std::make_shared<testing::FullDiskFs>(rocksdb::FileSystem::Default());
  disk->free_when_not_full = GetParam();
  std::unique_ptr<rocksdb::Env> env = rocksdb::NewCompositeEnv(disk);
  const std::vector<std::string> acked = {"a0", "a49", "c0", "c9", "d0", "d9"};
  {
    auto store = CollectionStore::Open(dir, {}, env.get()).value();
    auto c = store->Create({.name = "f", .dim = kDim, .metric = Metric::kL2}).value();
    ASSERT_TRUE(c->Upsert(VectorDocs(50, kDim, 1, "a")).ok());
    // Reads on another thread for the whole test: none may fail (nor crash on a reopened DB).
    std::atomic<bool> stop{false};
    std::atomic<int> reads{0}, read_errors{0};
    std::thread reader([&] {
      const auto a = VectorDocs(50, kDim, 1, "a");
      while (!stop) {
        std::vector<Document> found;
        std::vector<std::string> missing;
        auto r = c->Search({{.vector = a[7].vector}}, {.k = 3});
        if (!r.ok() || r->at(0).empty() || r->at(0)[0].id != "a7" ||
            !c->Get({"a0", "a49"}, &found, &missing).ok() || found.size() != 2) {
          ++read_errors;
        }
        ++reads;
      }
    });
    disk->full = true;
    for (int i = 0; i < 3; ++i) {
      auto r = c->Upsert(VectorDocs(10, kDim, 2, "b"));
      ASSERT_FALSE(r.ok());
      EXPECT_EQ(r.status().code(), StatusCode::kResourceExhausted) << r.status().ToString();
      EXPECT_NE(r.status().message().find("disk full"), std::string::npos) << r.status().ToString();
    }
    disk->full = false;
    auto ok = c->Upsert(VectorDocs(10, kDim, 3, "c"));  // at once: no waiting for RocksDB
    EXPECT_TRUE(ok.ok()) << ok.status().ToString();
    ok = c->Upsert(VectorDocs(10, kDim, 4, "d"));
    EXPECT_TRUE(ok.ok()) << ok.status().ToString();
    const int reads_before_stop = reads;
    while (reads < reads_before_stop + 2) std::this_thread::yield();  // reads after the reopen
    stop = true;
    reader.join();
    EXPECT_EQ(read_errors, 0);
    std::vector<Document> found;
    std::vector<std::string> missing;
    ASSERT_TRUE(c->Get(acked, &found, &missing).ok());
    EXPECT_EQ(found.size(), acked.size());
    EXPECT_TRUE(missing.empty());
    auto hits = c->Search({{.vector = VectorDocs(10, kDim, 4, "d")[3].vector}}, {.k = 1}).value();
    ASSERT_EQ(hits[0].size(), 1u);
    EXPECT_EQ(hits[0][0].id, "d3");
  }
  // Every acknowledged write is there after a reopen.
  auto store = CollectionStore::Open(dir, {}, env.get()).value();
  auto c = store->Get("f").value();
  std::vector<Document> found;
  std::vector<std::string> missing;
  ASSERT_TRUE(c->Get(acked, &found, &missing).ok());
  EXPECT_EQ(found.size(), acked.size());
  EXPECT_EQ(c->Info().num_documents, 50 + 10 + 10);
  store.reset();
  fs::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(FreeAfterwards, FullDiskTest,
                         ::testing::Values(uint64_t{8} << 20, uint64_t{1} << 30),
                         [](const auto& info) {
                           return info.param < (1u << 30) ? "8MiB" : "1GiB";
                         });

TEST(CollectionTest, CorruptIndexFileIsRebuiltFromTheStore) {
  const auto dir = FreshDir("coll_corrupt");
  constexpr int kDim = 8;
  {
    auto store = CollectionStore::Open(dir).value();
    auto c = store->Create({.name = "h", .dim = kDim, .metric = Metric::kL2}).value();
    ASSERT_TRUE(c->Upsert(VectorDocs(100, kDim, 4, "d")).ok());
  }
  int files = 0;
  for (const auto& e : fs::directory_iterator(dir + "/indexes")) {
    std::ofstream(e.path(), std::ios::binary | std::ios::trunc) << "garbage";
    ++files;
  }
  EXPECT_EQ(files, 2);  // the vector index and the BM25 index
  auto store = CollectionStore::Open(dir).value();
  auto c = store->Get("h").value();
  EXPECT_EQ(c->Info().num_vectors, 100);
  const auto d = VectorDocs(100, kDim, 4, "d");
  auto r = c->Search({{.vector = d[42].vector}}, {.k = 1}).value();
  EXPECT_EQ(r[0][0].id, "d42");
  store.reset();
  fs::remove_all(dir);
}

TEST(CollectionTest, IvfTrainsOnceEnoughVectorsAndRebuildKeepsSearchesWorking) {
  const auto dir = FreshDir("coll_ivf");
  constexpr int kDim = 16;
  auto store = CollectionStore::Open(dir).value();
  auto c = store
               ->Create({.name = "ivf",
                         .dim = kDim,
                         .metric = Metric::kL2,
                         .index_kind = "ivf_flat",
                         .params_json = R"({"nlist": 16, "nprobe": 16})"})
               .value();
  auto docs = VectorDocs(1500, kDim, 5, "v");
  ASSERT_TRUE(c->Upsert(std::vector<Document>(docs.begin(), docs.begin() + 500)).ok());
  EXPECT_EQ(c->Info().active_kind, "flat");  // below the training minimum: exact
  ASSERT_TRUE(c->Upsert(std::vector<Document>(docs.begin() + 500, docs.end())).ok());
  EXPECT_EQ(c->Info().active_kind, "ivf_flat");
  EXPECT_EQ(c->Info().num_vectors, 1500);
  // Rebuild to HNSW while another thread searches continuously.
  std::atomic<bool> done{false};
  std::atomic<int> bad{0}, searches{0};
  std::thread reader([&] {
    int i = 0;
    while (!done.load() || searches.load() < 5) {
      const auto& d = docs[(i++ * 7) % docs.size()];
      auto r = c->Search({{.vector = d.vector}}, {.k = 1, .include_text = false});
      if (!r.ok() || r->at(0).empty() || r->at(0)[0].id != d.id) ++bad;
      ++searches;
    }
  });
  ASSERT_TRUE(c->Rebuild("hnsw", R"({"M": 8})").ok());
  done = true;
  reader.join();
  EXPECT_EQ(bad.load(), 0);
  EXPECT_GT(searches.load(), 0);
  EXPECT_EQ(c->Info().active_kind, "hnsw");
  EXPECT_EQ(c->Info().spec.index_kind, "hnsw");
  EXPECT_EQ(c->Rebuild("hnsw", R"({"M": 0})").code(), StatusCode::kInvalidArgument);
  store.reset();
  // The new kind is what a reopen serves.
  store = CollectionStore::Open(dir).value();
  EXPECT_EQ(store->Get("ivf").value()->Info().active_kind, "hnsw");
  ASSERT_TRUE(store->Drop("ivf").ok());
  EXPECT_TRUE(store->List().empty());
  store.reset();
  store = CollectionStore::Open(dir).value();
  EXPECT_TRUE(store->List().empty());
  store.reset();
  fs::remove_all(dir);
}

TEST(CollectionTest, ConcurrentSearchAndUpsertSeeOnlyCompleteDocuments) {
  const auto dir = FreshDir("coll_conc");
  constexpr int kDim = 8;
  auto store = CollectionStore::Open(dir).value();
  auto c = store->Create({.name = "c", .dim = kDim, .metric = Metric::kL2}).value();
  auto docs = VectorDocs(600, kDim, 6, "k");
  ASSERT_TRUE(c->Upsert(std::vector<Document>(docs.begin(), docs.begin() + 200)).ok());
  std::atomic<bool> done{false};
  std::atomic<int> bad{0};
  std::vector<std::thread> readers;
  for (int t = 0; t < 2; ++t) {
    readers.emplace_back([&, t] {
      int i = t;
      while (!done.load()) {
        auto r = c->Search({{.vector = docs[(i++) % 200].vector}}, {.k = 5});
        if (!r.ok()) ++bad;
        for (const auto& h : r.value()[0]) {
          if (h.id.empty() || h.id[0] != 'k') ++bad;
        }
      }
    });
  }
  for (int b = 200; b < 600; b += 50) {
    ASSERT_TRUE(c->Upsert(std::vector<Document>(docs.begin() + b, docs.begin() + b + 50)).ok());
    ASSERT_TRUE(c->Delete({docs[b - 200].id}).ok());
  }
  done = true;
  for (auto& r : readers) r.join();
  EXPECT_EQ(bad.load(), 0);
  EXPECT_EQ(c->Info().num_documents, 600 - 8);
  store.reset();
  fs::remove_all(dir);
}

// Issue 17 #11: Drop waits for a running Rebuild of its collection; it used to wait holding the
// store lock, so every Get (every Search and Upsert) on every other collection stalled with it.
TEST(CollectionTest, DropDuringRebuildDoesNotBlockOtherCollections) {
  const auto dir = FreshDir("coll_droprebuild");
  auto store = CollectionStore::Open(dir).value();
  auto big = store->Create({.name = "big", .dim = 32, .index_kind = "flat"}).value();
  ASSERT_TRUE(big->Upsert(VectorDocs(10000, 32, 5, "b")).ok());  // 10000 per call at most
  ASSERT_TRUE(big->Upsert(VectorDocs(10000, 32, 6, "c")).ok());
  auto other = store->Create({.name = "other", .dim = 8, .index_kind = "flat"}).value();
  ASSERT_TRUE(other->Upsert(VectorDocs(10, 8, 6, "o")).ok());

  std::thread rebuild([&] { (void)big->Rebuild("hnsw", R"({"ef_construction": 400})"); });
  while (!big->Info().rebuilding) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  Status dropped = Internal("not run");
  std::thread drop([&] { dropped = store->Drop("big"); });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // Drop is now waiting

  const auto t0 = std::chrono::steady_clock::now();
  auto got = store->Get("other");
  ASSERT_TRUE(got.ok());
  EXPECT_TRUE((*got)->Upsert(VectorDocs(1, 8, 7, "new")).ok());
  EXPECT_TRUE((*got)->Search({{.text = "text of o1"}}, {.k = 3}).ok());
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const bool overlapped = big->Info().rebuilding;
  EXPECT_EQ(store->Get("big").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(store->Create({.name = "big", .dim = 4}).status().code(),
            StatusCode::kFailedPrecondition);
  rebuild.join();
  drop.join();
  EXPECT_TRUE(overlapped) << "the rebuild finished too soon to prove anything";
  EXPECT_LT(secs, 0.5) << "calls on another collection waited for the drop";
  EXPECT_TRUE(dropped.ok()) << dropped.ToString();
  EXPECT_EQ(store->Get("big").status().code(), StatusCode::kNotFound);
  EXPECT_TRUE(store->Create({.name = "big", .dim = 4}).ok());
  store.reset();
  fs::remove_all(dir);
}

}  // namespace
}  // namespace ragserve::collection
