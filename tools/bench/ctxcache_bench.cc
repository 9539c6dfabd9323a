// ctxcache_bench: cost of serving a passage's KV from each tier of the context cache.
//
// Blocks have a small-model shape (layers x kv_heads x head_dim x tokens, f32 or f16 storage).
// Rows: RAM hit; disk hit (RocksDB read + checksum + deserialize + RAM insert, RAM tier disabled);
// the baseline in the same run is a raw RocksDiskStore::Get of the same bytes with no verification
// and no parsing; and GetOrCompute of new keys (compute is a copy of a ready block): the request
// path alone (the disk write is queued to the background writer) and until Flush returns.
//   usage: ctxcache_bench [--entries 64] [--tokens 256] [--reps 3]
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "services/ctxcache/kv_cache.h"

namespace {

using namespace ragserve::ctxcache;  // NOLINT: a benchmark program
using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

std::string Machine() {
  std::ifstream f("/proc/cpuinfo");
  std::string line, model = "unknown cpu";
  int cpus = 0;
  while (std::getline(f, line)) {
    if (line.rfind("model name", 0) == 0) {
      model = line.substr(line.find(':') + 2);
      ++cpus;
    }
  }
  std::ifstream l("/proc/loadavg");
  std::string load;
  std::getline(l, load);
  return model + ", " + std::to_string(cpus) + " cpus, loadavg " + load.substr(0, 14);
}

KvBlock Block(int64_t tokens, uint32_t seed) {
  const int layers = 8, kv_heads = 4, head_dim = 64;
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-2, 2);
  std::vector<std::vector<float>> k(layers), v(layers);
  for (int l = 0; l < layers; ++l) {
    k[l].resize(tokens * kv_heads * head_dim);
    v[l].resize(tokens * kv_heads * head_dim);
    for (float& x : k[l]) x = u(rng);
    for (float& x : v[l]) x = u(rng);
  }
  return MakeKvBlock(kv_heads, head_dim, tokens, k, v, "benchfingerprint").value();
}

}  // namespace

int main(int argc, char** argv) {
  int entries = 64, reps = 3;
  int64_t tokens = 256;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--entries")) entries = std::max(1, std::atoi(argv[i + 1]));
    if (!std::strcmp(argv[i], "--tokens")) tokens = std::max(1, std::atoi(argv[i + 1]));
    if (!std::strcmp(argv[i], "--reps")) reps = std::max(1, std::atoi(argv[i + 1]));
  }
  std::string tmpl =
      (std::filesystem::temp_directory_path() / ("ctxcache_bench_" + std::string(6, 'X'))).string();
  if (::mkdtemp(tmpl.data()) == nullptr) return 1;
  const std::string dir = tmpl;

  std::printf("## ctxcache_bench\n\nmachine: %s\ncommand:", Machine().c_str());
  for (int i = 0; i < argc; ++i) std::printf(" %s", argv[i]);
  const KvBlock proto = Block(tokens, 1);
  std::printf(
      "\nblock: 8 layers x 4 kv heads x 64 dims x %lld tokens = %.2f MB f32; %d entries\n\n",
      static_cast<long long>(tokens), proto.ByteSize() / 1e6, entries);
  std::printf("| storage | path | MB/s | us/entry | vs raw RocksDB get |\n|---|---|---|---|---|\n");

  ragserve::MetricsRegistry reg;
  for (DType dtype : {DType::kF32, DType::kF16}) {
    const std::string db = dir + "/" + std::string(ragserve::kernels::DTypeName(dtype));
    std::vector<CacheKey> keys;
    for (int e = 0; e < entries; ++e) {
      keys.push_back(
          CacheKey::Make("benchfingerprint", "p", "passage " + std::to_string(e), "s").value());
    }
    double mb = 0, t_put = 0, t_flush = 0, t_ram = 1e9, t_disk = 1e9, t_raw = 1e9, t_nodisk = 0;
    for (int pass = 0; pass < 2; ++pass) {  // pass 0 warms the allocator (first-touch faults)
      KvCacheOptions o;  // no disk tier: the compute copy, narrowing and RAM insert alone
      o.ram_limit_bytes = int64_t{1} << 40;
      o.store_dtype = dtype;
      o.metrics = &reg;
      auto cache = KvCache::Open(o).value();
      auto t0 = Clock::now();
      for (const CacheKey& k : keys) {
        if (!cache->GetOrCompute(k, [&] { return ragserve::StatusOr<KvBlock>(proto); }).ok()) {
          return 1;
        }
      }
      t_nodisk = Seconds(t0, Clock::now());
    }
    {
      KvCacheOptions o;
      o.disk_dir = db;
      o.ram_limit_bytes = int64_t{1} << 40;
      o.store_dtype = dtype;
      o.metrics = &reg;
      auto cache = KvCache::Open(o).value();
      auto t0 = Clock::now();
      for (const CacheKey& k : keys) {
        auto b = cache->GetOrCompute(k, [&] { return ragserve::StatusOr<KvBlock>(proto); });
        if (!b.ok()) return 1;
        mb += (*b)->ByteSize() / 1e6;
      }
      t_put = Seconds(t0, Clock::now());
      cache->Flush();
      t_flush = Seconds(t0, Clock::now());
      for (int r = 0; r < reps; ++r) {
        t0 = Clock::now();
        for (const CacheKey& k : keys) {
          if (!cache
                   ->GetOrCompute(
                       k, [] { return ragserve::StatusOr<KvBlock>(ragserve::Internal("miss")); })
                   .ok()) {
            return 1;
          }
        }
        t_ram = std::min(t_ram, Seconds(t0, Clock::now()));
      }
    }
    for (int r = 0; r < reps; ++r) {
      KvCacheOptions o;
      o.disk_dir = db;
      o.ram_limit_bytes = 0;  // every lookup goes to disk
      o.metrics = &reg;
      auto cache = KvCache::Open(o).value();
      auto t0 = Clock::now();
      for (const CacheKey& k : keys) {
        if (!cache
                 ->GetOrCompute(
                     k, [] { return ragserve::StatusOr<KvBlock>(ragserve::Internal("miss")); })
                 .ok()) {
          return 1;
        }
      }
      t_disk = std::min(t_disk, Seconds(t0, Clock::now()));
    }
    for (int r = 0; r < reps; ++r) {
      auto store = RocksDiskStore::Open(db).value();
      size_t bytes = 0;
      auto t0 = Clock::now();
      for (const CacheKey& k : keys) {
        auto v = store->Get(k.id().view());
        if (!v.ok() || !v->has_value()) return 1;
        bytes += (*v)->size();
      }
      t_raw = std::min(t_raw, Seconds(t0, Clock::now()));
      if (bytes == 0) return 1;
    }
    const char* name = dtype == DType::kF32 ? "f32" : "f16";
    auto row = [&](const char* path, double t) {
      std::printf("| %s | %s | %.0f | %.1f | %.2fx |\n", name, path, mb / t, t / entries * 1e6,
                  t_raw / t);
    };
    row("compute miss, no disk tier", t_nodisk);
    row("compute miss, request path (disk write queued)", t_put);
    row("compute miss + Flush (serialize + RocksDB put done)", t_flush);
    row("RAM hit", t_ram);
    row("disk hit: get + xxh64 + parse + RAM insert", t_disk);
    row("raw RocksDB get (baseline)", t_raw);
  }
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  return 0;
}
