// BlockCache (services/ctxcache/block_cache.h) with a fake, deterministic compute function: cached
// == recomputed, the disk tier survives a restart, corrupt disk entries are recomputed and never
// served, single-flight computes once, the RAM LRU stays within its byte budget, bad input is a
// clear error, metrics are exported.
#include "services/ctxcache/block_cache.h"

#include <rocksdb/env.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <random>
#include <thread>

#include "gtest/gtest.h"
#include "tests/support/full_disk_fs.h"

namespace ragserve::ctxcache {
namespace {

constexpr char kFp[] = "00c0ffee00c0ffee";

class TempDir {
 public:
  TempDir() {
    std::string t =
        (std::filesystem::temp_directory_path() / ("ctxcache_test_" + std::string(6, 'X')))
            .string();  // mkdtemp template
    path_ = ::mkdtemp(t.data()) != nullptr ? t : std::string();
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// The "model": a passage's KV is a deterministic function of its text.
StoredBlock FakeEncode(const std::string& text, int64_t tokens = 6) {
  std::mt19937 rng(static_cast<uint32_t>(HashBytes(text)));
  std::normal_distribution<float> nd;
  const int layers = 2, kv_heads = 2, head_dim = 8;
  std::vector<std::vector<float>> k(layers), v(layers);
  for (int l = 0; l < layers; ++l) {
    for (int64_t i = 0; i < tokens * kv_heads * head_dim; ++i) {
      k[l].push_back(nd(rng));
      v[l].push_back(nd(rng));
    }
  }
  return MakeStoredBlock(kv_heads, head_dim, tokens, k, v, kFp).value();
}

CacheKey Key(const std::string& text) { return CacheKey::Make(kFp, "prefix", text, "ape").value(); }

// A compute function that counts its calls.
BlockCache::ComputeFn Counting(const std::string& text, std::atomic<int>* calls) {
  return [text, calls]() -> StatusOr<StoredBlock> {
    ++*calls;
    return FakeEncode(text);
  };
}

BlockCache::ComputeFn MustNotRun() {
  return []() -> StatusOr<StoredBlock> {
    ADD_FAILURE() << "computed although the entry should be cached";
    return Internal("unexpected compute");
  };
}

std::unique_ptr<BlockCache> OpenCache(const std::string& disk_dir, MetricsRegistry* reg,
                                      int64_t ram_limit = 1 << 20, DType dtype = DType::kF32) {
  BlockCacheOptions o;
  o.disk_dir = disk_dir;
  o.ram_limit_bytes = ram_limit;
  o.store_dtype = dtype;
  o.metrics = reg;
  auto c = BlockCache::Open(o);
  EXPECT_TRUE(c.ok()) << c.status().ToString();
  return c.ok() ? std::move(c).value() : nullptr;
}

void ExpectBlocksEqual(const StoredBlock& a, const StoredBlock& b) {
  EXPECT_EQ(a.fingerprint, b.fingerprint);
  EXPECT_EQ(a.tokens, b.tokens);
  EXPECT_EQ(a.positions, b.positions);
  EXPECT_EQ(a.k, b.k);
  EXPECT_EQ(a.v, b.v);
}

TEST(BlockCacheTest, CachedBlockEqualsRecomputingIt) {
  TempDir dir;
  MetricsRegistry reg;
  auto cache = OpenCache(dir.path() + "/db", &reg);
  std::atomic<int> calls{0};
  CacheSource src;
  auto first = cache->GetOrCompute(Key("alpha"), Counting("alpha", &calls), &src);
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  EXPECT_EQ(src, CacheSource::kComputed);
  auto again = cache->GetOrCompute(Key("alpha"), MustNotRun(), &src);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(src, CacheSource::kRam);
  EXPECT_EQ(first->get(), again->get());  // the same shared block
  ExpectBlocksEqual(**again, FakeEncode("alpha"));
  EXPECT_EQ(calls.load(), 1);
  // Another passage is another entry.
  auto beta = cache->GetOrCompute(Key("beta"), Counting("beta", &calls));
  ASSERT_TRUE(beta.ok());
  EXPECT_NE((*beta)->k, (*again)->k);
  EXPECT_EQ(calls.load(), 2);
  // By id, as the gRPC Get does.
  auto by_id = cache->Get(Key("beta").id());
  ASSERT_TRUE(by_id.ok());
  ExpectBlocksEqual(**by_id, FakeEncode("beta"));
  EXPECT_TRUE(cache->Has(Key("alpha").id()));
  EXPECT_FALSE(cache->Has(Key("gamma").id()));
}

TEST(BlockCacheTest, F16StorageServesTheNarrowedBlockWithinRounding) {
  MetricsRegistry reg;
  auto cache = OpenCache("", &reg, 1 << 20, DType::kF16);
  auto b =
      cache->GetOrCompute(Key("alpha"), [] { return StatusOr<StoredBlock>(FakeEncode("alpha")); });
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  EXPECT_EQ((*b)->dtype, DType::kF16);
  const StoredBlock ref = FakeEncode("alpha");
  std::vector<float> x(ref.LayerElements()), y(ref.LayerElements());
  ref.LayerToF32(1, false, x.data());
  (*b)->LayerToF32(1, false, y.data());
  for (size_t i = 0; i < x.size(); ++i) {
    ASSERT_LE(std::fabs(x[i] - y[i]), std::fabs(x[i]) / 1024 + 1e-7f);
  }
  EXPECT_EQ((*b)->ByteSize() * 2 - ref.ByteSize(),
            static_cast<int64_t>(ref.fingerprint.size() + ref.positions.size() * 4));
}

TEST(BlockCacheTest, DiskTierSurvivesARestart) {
  TempDir dir;
  MetricsRegistry reg;
  std::atomic<int> calls{0};
  const std::vector<std::string> texts = {"one", "two", "three", "four", "five"};
  {
    auto cache = OpenCache(dir.path() + "/db", &reg);
    for (const auto& t : texts) ASSERT_TRUE(cache->GetOrCompute(Key(t), Counting(t, &calls)).ok());
  }
  EXPECT_EQ(calls.load(), 5);
  auto cache = OpenCache(dir.path() + "/db", &reg);
  EXPECT_EQ(cache->Stats().ram_entries, 0);
  for (const auto& t : texts) {
    CacheSource src;
    auto b = cache->GetOrCompute(Key(t), MustNotRun(), &src);
    ASSERT_TRUE(b.ok()) << b.status().ToString();
    EXPECT_EQ(src, CacheSource::kDisk);
    ExpectBlocksEqual(**b, FakeEncode(t));
  }
  const BlockCacheStats s = cache->Stats();
  EXPECT_EQ(s.hits_disk, 5);
  EXPECT_EQ(s.misses, 0);
  EXPECT_EQ(s.ram_entries, 5);
  EXPECT_GT(s.disk_bytes, 0);
  // Evicting from both tiers makes the next lookup compute again.
  EXPECT_EQ(cache->Evict(Key("one").id(), /*include_disk=*/true), 2);
  EXPECT_FALSE(cache->Has(Key("one").id()));
  EXPECT_EQ(cache->Get(Key("one").id()).status().code(), StatusCode::kNotFound);
  ASSERT_TRUE(cache->GetOrCompute(Key("one"), Counting("one", &calls)).ok());
  EXPECT_EQ(calls.load(), 6);
  // RAM-only eviction keeps the disk copy.
  EXPECT_EQ(cache->Evict(Key("two").id(), /*include_disk=*/false), 1);
  CacheSource src;
  ASSERT_TRUE(cache->GetOrCompute(Key("two"), MustNotRun(), &src).ok());
  EXPECT_EQ(src, CacheSource::kDisk);
}

// Rewrites the stored value of `id` in the database at `db` through `edit`.
void EditOnDisk(const std::string& db, const KeyId& id,
                const std::function<void(std::string*)>& edit) {
  auto store = RocksDiskStore::Open(db);
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  auto v = (*store)->Get(id.view());
  ASSERT_TRUE(v.ok() && v->has_value());
  std::string bytes = **v;
  edit(&bytes);
  ASSERT_TRUE((*store)->Put(id.view(), bytes).ok());
}

TEST(BlockCacheTest, AFlippedByteOnDiskIsDetectedAndRecomputedNeverServed) {
  TempDir dir;
  const std::string db = dir.path() + "/db";
  MetricsRegistry reg;
  std::atomic<int> calls{0};
  {
    auto cache = OpenCache(db, &reg);
    for (const char* t : {"a", "b", "c"})
      ASSERT_TRUE(cache->GetOrCompute(Key(t), Counting(t, &calls)).ok());
  }
  // A payload byte of "a", a header byte of "b", and "c" replaced by the entry of "a" (a valid
  // block stored under the wrong key).
  std::string a_bytes;
  EditOnDisk(db, Key("a").id(), [&](std::string* s) {
    a_bytes = *s;
    (*s)[s->size() / 2] ^= 0x10;
  });
  EditOnDisk(db, Key("b").id(), [](std::string* s) { (*s)[17] ^= 0x01; });
  EditOnDisk(db, Key("c").id(), [&](std::string* s) { *s = a_bytes; });

  auto cache = OpenCache(db, &reg);
  for (const char* t : {"a", "b", "c"}) {
    CacheSource src;
    auto b = cache->GetOrCompute(Key(t), Counting(t, &calls), &src);
    ASSERT_TRUE(b.ok()) << b.status().ToString();
    EXPECT_EQ(src, CacheSource::kComputed) << t;
    ExpectBlocksEqual(**b, FakeEncode(t));
  }
  EXPECT_EQ(calls.load(), 6);
  EXPECT_EQ(cache->Stats().corrupt, 3);
  EXPECT_NE(reg.RenderText().find("ragserve_ctxcache_corrupt_total 3"), std::string::npos);
  cache.reset();
  // The recomputed entries replaced the corrupt ones on disk.
  cache = OpenCache(db, &reg);
  for (const char* t : {"a", "b", "c"}) {
    CacheSource src;
    ASSERT_TRUE(cache->GetOrCompute(Key(t), MustNotRun(), &src).ok());
    EXPECT_EQ(src, CacheSource::kDisk);
  }
  // Get by id (no compute) of a corrupt entry: NotFound, and the entry is gone.
  cache.reset();
  EditOnDisk(db, Key("a").id(), [](std::string* s) { s->back() ^= 0x01; });
  cache = OpenCache(db, &reg);
  EXPECT_TRUE(cache->Has(Key("a").id()));  // Has does not read (or verify) the value
  auto got = cache->Get(Key("a").id());
  EXPECT_EQ(got.status().code(), StatusCode::kNotFound);
  EXPECT_FALSE(cache->Has(Key("a").id()));
}

TEST(BlockCacheTest, ConcurrentRequestsForOnePassageComputeOnce) {
  MetricsRegistry reg;
  auto cache = OpenCache("", &reg);
  constexpr int kThreads = 8;
  std::atomic<int> calls{0};
  // The computation does not finish until every other request is waiting on it, so without
  // single-flight the others would compute too.
  auto compute = [&]() -> StatusOr<StoredBlock> {
    ++calls;
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (cache->Stats().hits_inflight < kThreads - 1 &&
           std::chrono::steady_clock::now() < give_up) {
      std::this_thread::yield();
    }
    return FakeEncode("shared");
  };
  std::vector<std::shared_ptr<const StoredBlock>> got(kThreads);
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] {
      auto r = cache->GetOrCompute(Key("shared"), compute);
      EXPECT_TRUE(r.ok()) << r.status().ToString();
      if (r.ok()) got[i] = *r;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(calls.load(), 1);
  EXPECT_EQ(cache->Stats().hits_inflight, kThreads - 1);
  for (int i = 1; i < kThreads; ++i) EXPECT_EQ(got[i].get(), got[0].get());
}

TEST(BlockCacheTest, WaitersShareAnErrorAndTheNextCallComputesAgain) {
  MetricsRegistry reg;
  auto cache = OpenCache("", &reg);
  constexpr int kThreads = 4;
  std::atomic<int> calls{0};
  auto failing = [&]() -> StatusOr<StoredBlock> {
    ++calls;
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (cache->Stats().hits_inflight < kThreads - 1 &&
           std::chrono::steady_clock::now() < give_up) {
      std::this_thread::yield();
    }
    return ResourceExhausted("model busy");
  };
  std::vector<std::thread> threads;
  std::atomic<int> errors{0};
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&] {
      auto r = cache->GetOrCompute(Key("x"), failing);
      if (r.status().code() == StatusCode::kResourceExhausted &&
          r.status().message().find("model busy") != std::string::npos) {
        ++errors;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(calls.load(), 1);
  EXPECT_EQ(errors.load(), kThreads);
  auto ok = cache->GetOrCompute(Key("x"), Counting("x", &calls));
  EXPECT_TRUE(ok.ok());
  EXPECT_EQ(calls.load(), 2);
}

TEST(BlockCacheTest, RamTierStaysWithinItsByteBudgetInLruOrder) {
  const int64_t one = FakeEncode("a").ByteSize();
  MetricsRegistry reg;
  auto cache = OpenCache("", &reg, 3 * one + one / 2);
  std::atomic<int> calls{0};
  for (const char* t : {"a", "b", "c"})
    ASSERT_TRUE(cache->GetOrCompute(Key(t), Counting(t, &calls)).ok());
  auto held_b = cache->Get(Key("b").id());  // touch b, then a: c is least recently used
  auto held_a = cache->Get(Key("a").id());
  ASSERT_TRUE(held_b.ok() && held_a.ok());
  ASSERT_TRUE(cache->GetOrCompute(Key("d"), Counting("d", &calls)).ok());
  BlockCacheStats s = cache->Stats();
  EXPECT_EQ(s.ram_entries, 3);
  EXPECT_EQ(s.ram_bytes, 3 * one);
  EXPECT_EQ(s.evictions, 1);
  EXPECT_FALSE(cache->Has(Key("c").id()));
  EXPECT_TRUE(cache->Has(Key("a").id()));
  ASSERT_TRUE(cache->GetOrCompute(Key("e"), Counting("e", &calls)).ok());  // evicts b
  EXPECT_FALSE(cache->Has(Key("b").id()));
  // A reader's block outlives its eviction.
  ExpectBlocksEqual(**held_b, FakeEncode("b"));
  EXPECT_LE(cache->Stats().ram_bytes, cache->Stats().ram_limit_bytes);
  // A block bigger than the whole budget is served but not kept.
  auto big =
      cache->GetOrCompute(Key("big"), [] { return StatusOr<StoredBlock>(FakeEncode("big", 64)); });
  ASSERT_TRUE(big.ok());
  EXPECT_EQ((*big)->tokens, 64);
  EXPECT_FALSE(cache->Has(Key("big").id()));
  EXPECT_EQ(cache->EvictAll(false), 3);
  EXPECT_EQ(cache->Stats().ram_bytes, 0);
}

TEST(BlockCacheTest, BadInputIsAClearError) {
  MetricsRegistry reg;
  auto cache = OpenCache("", &reg);
  const KeyId unknown = Key("never").id();
  auto missing = cache->Get(unknown);
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find(unknown.Hex()), std::string::npos);
  // An empty passage has no KV: the block is rejected and nothing is cached.
  auto empty = cache->GetOrCompute(Key("e"), [] {
    StoredBlock b = FakeEncode("e");
    b.tokens = 0;
    b.positions.clear();
    for (auto& l : b.k) l.clear();
    for (auto& l : b.v) l.clear();
    return StatusOr<StoredBlock>(b);
  });
  EXPECT_EQ(empty.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(empty.status().message().find("empty passage"), std::string::npos)
      << empty.status().message();
  EXPECT_FALSE(cache->Has(Key("e").id()));
  // A block made by another model is refused.
  auto other = cache->GetOrCompute(Key("o"), [] {
    StoredBlock b = FakeEncode("o");
    b.fingerprint = "someothermodel00";
    return StatusOr<StoredBlock>(b);
  });
  EXPECT_EQ(other.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(other.status().message().find("someothermodel00"), std::string::npos);
  // A throwing compute function is an error, not a crash or a hang.
  auto threw = cache->GetOrCompute(
      Key("t"), []() -> StatusOr<StoredBlock> { throw std::runtime_error("boom"); });
  EXPECT_EQ(threw.status().code(), StatusCode::kInternal);
  EXPECT_NE(threw.status().message().find("boom"), std::string::npos);
  CacheKey no_fp = Key("x");
  no_fp.fingerprint.clear();
  EXPECT_EQ(cache->GetOrCompute(no_fp, MustNotRun()).status().code(), StatusCode::kInvalidArgument);
  BlockCacheOptions o;
  o.ram_limit_bytes = -1;
  o.metrics = &reg;
  auto bad = BlockCache::Open(o);
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("-1"), std::string::npos);
}

// A store whose writes fail and whose reads report corruption on demand.
class FaultyStore final : public DiskStore {
 public:
  bool fail_puts = false, corrupt_gets = false;
  std::map<std::string, std::string> data;
  std::map<std::string, std::string>* sink = nullptr;  // outlives the store: sees every Put
  // While `hold` is set, Put blocks (a slow disk) until Release().
  std::mutex mu;
  std::condition_variable cv;
  bool hold = false;
  int puts_started = 0;
  void Release() {
    std::lock_guard<std::mutex> l(mu);
    hold = false;
    cv.notify_all();
  }
  Status Put(std::string_view k, std::string_view v) override {
    {
      std::unique_lock<std::mutex> l(mu);
      ++puts_started;
      cv.notify_all();
      cv.wait(l, [&] { return !hold; });
    }
    if (fail_puts) return Internal("disk full");
    data[std::string(k)] = std::string(v);
    if (sink != nullptr) (*sink)[std::string(k)] = std::string(v);
    return OkStatus();
  }
  StatusOr<std::optional<std::string>> Get(std::string_view k) override {
    if (corrupt_gets) return DataLoss("block checksum mismatch");
    auto it = data.find(std::string(k));
    if (it == data.end()) return std::optional<std::string>();
    return std::optional<std::string>(it->second);
  }
  Status Delete(std::string_view k) override {
    data.erase(std::string(k));
    return OkStatus();
  }
  StatusOr<int64_t> DeleteAll() override {
    const int64_t n = static_cast<int64_t>(data.size());
    data.clear();
    return n;
  }
  int64_t ApproxEntries() const override { return static_cast<int64_t>(data.size()); }
  int64_t ApproxBytes() const override { return 0; }
};

TEST(BlockCacheTest, DiskFaultsDegradeToRecomputingNeverToWrongData) {
  MetricsRegistry reg;
  auto store = std::make_unique<FaultyStore>();
  FaultyStore* fs = store.get();
  BlockCacheOptions o;
  o.metrics = &reg;
  auto cache = BlockCache::Open(o, std::move(store));
  ASSERT_TRUE(cache.ok());
  std::atomic<int> calls{0};
  fs->fail_puts = true;
  auto a = (*cache)->GetOrCompute(Key("a"), Counting("a", &calls));
  ASSERT_TRUE(a.ok());  // a failed disk write still serves the block
  (*cache)->Flush();
  EXPECT_EQ((*cache)->Stats().disk_errors, 1);
  EXPECT_TRUE(fs->data.empty());
  fs->fail_puts = false;
  ASSERT_TRUE((*cache)->GetOrCompute(Key("b"), Counting("b", &calls)).ok());
  (*cache)->Flush();
  EXPECT_EQ(fs->data.size(), 1u);
  (*cache)->EvictAll(false);
  fs->corrupt_gets = true;  // the store itself reports corruption: recompute
  CacheSource src;
  auto b = (*cache)->GetOrCompute(Key("b"), Counting("b", &calls), &src);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(src, CacheSource::kComputed);
  EXPECT_EQ((*cache)->Stats().corrupt, 1);
  EXPECT_EQ(calls.load(), 3);
}

// Found by tools/chaos (diskfull:ctxcache, C6): RocksDiskStore on a full disk. Once a memtable
// cannot be flushed RocksDB refuses every write; they must fail with ResourceExhausted (not
// INTERNAL), reads keep working, and the first write once the disk has room again succeeds
// (the store reopens the database) instead of waiting for RocksDB's own 5 s poll or a restart.
TEST(RocksDiskStoreTest, AFullDiskIsResourceExhaustedAndTheNextPutOnceSpaceIsBackSucceeds) {
  TempDir dir;
  auto disk = std::make_shared<testing::FullDiskFs>(rocksdb::FileSystem::Default());
  disk->free_when_not_full = uint64_t{8} << 20;
  std::unique_ptr<rocksdb::Env> env = rocksdb::NewCompositeEnv(disk);
  auto store = RocksDiskStore::Open(dir.path() + "/db",
                                    {.write_buffer_bytes = int64_t{64} << 10, .env = env.get()})
                   .value();
  const std::string block(100 << 10, 'k');  // larger than the write buffer: each Put flushes
  ASSERT_TRUE(store->Put("a", block).ok());
  ASSERT_TRUE(store->Put("b", block).ok());
  disk->full = true;
  Status failed;
  for (int i = 0; i < 200 && failed.ok(); ++i) failed = store->Put(StrCat("full", i), block);
  ASSERT_FALSE(failed.ok()) << "no Put failed on the full disk";
  EXPECT_EQ(failed.code(), StatusCode::kResourceExhausted) << failed.ToString();
  auto a = store->Get("a");
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  ASSERT_TRUE(a->has_value());
  EXPECT_EQ(**a, block);
  disk->full = false;
  const Status again = store->Put("c", block);  // at once
  EXPECT_TRUE(again.ok()) << again.ToString();
  auto c = store->Get("c");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_TRUE(c->has_value());
  // Entries whose memtable could not be flushed may be gone (no WAL: a cache recomputes them);
  // reading them is not an error.
  EXPECT_TRUE(store->Get("b").ok());
}

TEST(BlockCacheTest, BlocksWaitingForASlowDiskAreServedAndWrittenBeforeShutdown) {
  MetricsRegistry reg;
  auto store = std::make_unique<FaultyStore>();
  FaultyStore* fs = store.get();
  std::map<std::string, std::string> written;
  fs->sink = &written;
  fs->hold = true;
  BlockCacheOptions o;
  o.metrics = &reg;
  o.ram_limit_bytes = 0;  // nothing stays in RAM: a lookup must find the pending write
  auto cache = BlockCache::Open(o, std::move(store));
  ASSERT_TRUE(cache.ok());
  std::atomic<int> calls{0};
  ASSERT_TRUE((*cache)->GetOrCompute(Key("a"), Counting("a", &calls)).ok());
  ASSERT_TRUE((*cache)->GetOrCompute(Key("b"), Counting("b", &calls)).ok());
  {
    std::unique_lock<std::mutex> l(fs->mu);  // the writer is stuck in the first Put
    fs->cv.wait(l, [&] { return fs->puts_started >= 1; });
  }
  EXPECT_EQ((*cache)->Stats().pending_writes, 2);
  CacheSource src;
  auto b = (*cache)->GetOrCompute(Key("b"), MustNotRun(), &src);
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  EXPECT_EQ(src, CacheSource::kDisk);
  ExpectBlocksEqual(**b, FakeEncode("b"));
  EXPECT_TRUE((*cache)->Get(Key("a").id()).ok());
  EXPECT_EQ(calls.load(), 2);
  fs->Release();
  cache->reset();  // the destructor drains the queue
  EXPECT_EQ(written.size(), 2u);
}

// An Evict that comes while its block is being written to disk waits for that write and then
// deletes the entry. It used to delete first and let the write land after it, so the evicted
// entry came back from disk (ctxcache_service_test's EvictAndBadInputGetClearErrors failed that
// way once on a fresh clone: Get found the evicted entry).
TEST(BlockCacheTest, EvictDuringTheBlocksDiskWriteRemovesItForGood) {
  MetricsRegistry reg;
  auto store = std::make_unique<FaultyStore>();
  FaultyStore* fs = store.get();
  fs->hold = true;
  BlockCacheOptions o;
  o.metrics = &reg;
  auto cache = BlockCache::Open(o, std::move(store));
  ASSERT_TRUE(cache.ok());
  std::atomic<int> calls{0};
  ASSERT_TRUE((*cache)->GetOrCompute(Key("a"), Counting("a", &calls)).ok());
  {
    std::unique_lock<std::mutex> l(fs->mu);  // the writer is inside Put("a")
    fs->cv.wait(l, [&] { return fs->puts_started >= 1; });
  }
  // The write goes on after a while (before the fix Evict had returned by then).
  std::thread disk([fs] {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    fs->Release();
  });
  EXPECT_GE((*cache)->Evict(Key("a").id(), /*include_disk=*/true), 1);
  disk.join();
  (*cache)->Flush();
  EXPECT_TRUE(fs->data.empty()) << "the evicted block was written back";
  EXPECT_FALSE((*cache)->Get(Key("a").id()).ok());
  EXPECT_EQ(calls.load(), 1);
}

TEST(BlockCacheTest, FlushWritesEveryPendingBlock) {
  MetricsRegistry reg;
  auto store = std::make_unique<FaultyStore>();
  FaultyStore* fs = store.get();
  BlockCacheOptions o;
  o.metrics = &reg;
  auto cache = BlockCache::Open(o, std::move(store));
  ASSERT_TRUE(cache.ok());
  std::atomic<int> calls{0};
  for (const char* t : {"a", "b", "c", "d"}) {
    ASSERT_TRUE((*cache)->GetOrCompute(Key(t), Counting(t, &calls)).ok());
  }
  (*cache)->Flush();
  EXPECT_EQ((*cache)->Stats().pending_writes, 0);
  ASSERT_EQ(fs->data.size(), 4u);
  auto stored =
      DeserializeStoredBlock(fs->data.at(std::string(Key("c").id().view())), Key("c").id().view());
  ASSERT_TRUE(stored.ok()) << stored.status().ToString();
  ExpectBlocksEqual(*stored, FakeEncode("c"));
}

TEST(BlockCacheTest, MetricsCountHitsMissesAndEvictionsByTier) {
  TempDir dir;
  MetricsRegistry reg;
  const int64_t one = FakeEncode("a").ByteSize();
  auto cache = OpenCache(dir.path() + "/db", &reg, one);
  std::atomic<int> calls{0};
  ASSERT_TRUE(cache->GetOrCompute(Key("a"), Counting("a", &calls)).ok());  // miss ram + disk
  ASSERT_TRUE(cache->GetOrCompute(Key("a"), Counting("a", &calls)).ok());  // hit ram
  ASSERT_TRUE(cache->GetOrCompute(Key("b"), Counting("b", &calls)).ok());  // evicts a
  ASSERT_TRUE(cache->GetOrCompute(Key("a"), Counting("a", &calls)).ok());  // hit disk, evicts b
  const std::string text = reg.RenderText();
  for (const char* line :
       {"ragserve_ctxcache_hits_total{tier=\"ram\"} 1",
        "ragserve_ctxcache_hits_total{tier=\"disk\"} 1",
        "ragserve_ctxcache_misses_total{tier=\"ram\"} 3",
        "ragserve_ctxcache_misses_total{tier=\"disk\"} 2",
        "ragserve_ctxcache_evictions_total{tier=\"ram\"} 2", "ragserve_ctxcache_computes_total 2",
        "ragserve_ctxcache_entries{tier=\"ram\"} 1"}) {
    EXPECT_NE(text.find(line), std::string::npos) << line << "\n" << text;
  }
  EXPECT_NE(text.find("ragserve_ctxcache_bytes{tier=\"ram\"} " + std::to_string(one)),
            std::string::npos)
      << text;
}

}  // namespace
}  // namespace ragserve::ctxcache
