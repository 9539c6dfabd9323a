// BlockCache: the context cache's storage of passage/prefix KV blocks (StoredBlock) keyed by
// CacheKey, in two tiers.
//
//   RAM tier   an LRU bounded in bytes (StoredBlock::ByteSize); entries are
//              shared_ptr<const StoredBlock>, so a reader keeps its block alive after an eviction.
//              A block larger than the whole budget is served and written to disk but not kept in
//              RAM.
//   disk tier  a DiskStore (RocksDB by default) that survives restarts; every entry is the
//              checksummed SerializeStoredBlock form tagged with its key id. A read that fails the
//              checksum, the tag or the fingerprint is deleted and recomputed, never served.
//   writes     computed blocks are written to disk by a background thread (serialize + put off
//              the request path); until written they are served from the pending set, and the
//              destructor (or Flush) waits for them. When more than max_pending_write_bytes are
//              waiting, the caller writes its block itself (backpressure).
//   compute    GetOrCompute runs the caller's function on a miss. Single-flight: concurrent calls
//              for one key run it once; the others wait and share the block or the error. An error
//              is not cached (the next call computes again).
// Optional f16/bf16 storage (Options::store_dtype): computed blocks are narrowed before they are
// stored, and what is served is the stored form.
// Metrics (Options::metrics): ragserve_ctxcache_hits_total{tier="ram"|"disk"|"inflight"},
// ragserve_ctxcache_misses_total{tier="ram"|"disk"}, ragserve_ctxcache_evictions_total{tier=
// "ram"|"disk"}, ragserve_ctxcache_corrupt_total, ragserve_ctxcache_computes_total,
// ragserve_ctxcache_disk_errors_total, gauges ragserve_ctxcache_bytes{tier="ram"} and
// ragserve_ctxcache_entries{tier="ram"}.
// Thread-safety: every method may be called from any thread. No lock is held while computing or
// doing disk I/O. An Evict that races with a computation of the same key may leave the freshly
// computed entry in place.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <future>
#include <list>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>

#include "services/common/metrics.h"
#include "services/common/mutex.h"
#include "services/common/status.h"
#include "services/ctxcache/cache_key.h"
#include "services/ctxcache/disk_store.h"
#include "services/ctxcache/stored_block.h"

namespace ragserve::ctxcache {

// Where GetOrCompute found a block. kRemote is never set by BlockCache: ApeEncoder reports it when
// its compute function fetched the block from a remote cache instead of computing it.
enum class CacheSource { kRam, kDisk, kInflight, kComputed, kRemote };

struct BlockCacheOptions {
  int64_t ram_limit_bytes = int64_t{1} << 30;  // RAM tier budget (>= 0; 0 keeps nothing in RAM)
  std::string disk_dir;                        // RocksDB directory; empty = no disk tier
  int64_t disk_write_buffer_bytes = int64_t{8} << 20;  // RocksDiskStoreOptions::write_buffer_bytes
  DType store_dtype = DType::kF32;                     // storage dtype of computed blocks
  MetricsRegistry* metrics = nullptr;                  // nullptr = MetricsRegistry::Default()
  bool async_disk_writes = true;  // false: GetOrCompute writes before returning
  int64_t max_pending_write_bytes = int64_t{256} << 20;
};

struct BlockCacheStats {
  int64_t ram_entries = 0, ram_bytes = 0, ram_limit_bytes = 0;
  int64_t disk_entries = 0, disk_bytes = 0;  // estimates from the store
  int64_t hits_ram = 0, hits_disk = 0, hits_inflight = 0;
  int64_t misses = 0;     // computations started (not in RAM, on disk or in flight)
  int64_t evictions = 0;  // RAM LRU evictions
  int64_t corrupt = 0;    // disk entries rejected (checksum, tag, fingerprint, store corruption)
  int64_t disk_errors = 0;
  int64_t pending_writes = 0;  // computed blocks not yet written to disk
};

class BlockCache {
 public:
  using ComputeFn = std::function<StatusOr<StoredBlock>()>;

  // Opens the tiers. `disk` overrides options.disk_dir (tests inject faulty stores); errors from
  // opening RocksDB are returned as they are. InvalidArgument for a negative RAM limit.
  static StatusOr<std::unique_ptr<BlockCache>> Open(const BlockCacheOptions& options,
                                                    std::unique_ptr<DiskStore> disk = nullptr);
  ~BlockCache();

  // The block for `key`: from RAM, else from disk (verified), else from `compute` (once per key
  // in flight). The computed block must be valid (StoredBlock::Validate: an empty passage gives
  // InvalidArgument) and carry key.fingerprint (else FailedPrecondition); it is converted to
  // store_dtype, kept in RAM and written to disk (a failed disk write is counted and logged, the
  // block is still returned). `source`, when given, says where the block came from.
  StatusOr<std::shared_ptr<const StoredBlock>> GetOrCompute(const CacheKey& key, ComputeFn compute,
                                                            CacheSource* source = nullptr);
  // The block for an id without computing: RAM, else disk (verified); NotFound naming the id when
  // it is in neither (or was corrupt on disk and has just been dropped).
  StatusOr<std::shared_ptr<const StoredBlock>> Get(const KeyId& id);
  // Whether the entry is in RAM, waiting to be written, or on disk. A disk entry is not read here
  // (blocks are MBs): if it turns out corrupt, Get drops it and returns NotFound.
  bool Has(const KeyId& id);
  // Drops the entry from RAM (and from disk when include_disk); returns how many tiers held it.
  int Evict(const KeyId& id, bool include_disk);
  // Drops every entry from RAM (and disk); returns the number of entries dropped.
  int64_t EvictAll(bool include_disk);
  // Waits until every pending disk write has been attempted.
  void Flush();
  BlockCacheStats Stats() const;
  const BlockCacheOptions& options() const { return options_; }

 private:
  struct Entry {
    KeyId id;
    std::shared_ptr<const StoredBlock> block;
    int64_t bytes;
  };
  using Result = StatusOr<std::shared_ptr<const StoredBlock>>;
  struct Metrics {
    Counter *hits_ram, *hits_disk, *hits_inflight, *misses_ram, *misses_disk, *evict_ram,
        *evict_disk, *corrupt, *computes, *disk_errors;
    Gauge *ram_bytes, *ram_entries;
  };

  BlockCache(const BlockCacheOptions& options, std::unique_ptr<DiskStore> disk);
  // Reads and verifies the disk entry of `id`; nullptr when absent or rejected (then deleted).
  std::shared_ptr<const StoredBlock> ReadDisk(const KeyId& id, std::string_view fingerprint);
  void InsertRam(const KeyId& id, std::shared_ptr<const StoredBlock> block)
      ABSL_LOCKS_EXCLUDED(mu_);
  void EvictOverBudget() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void UpdateGauges() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  Result Fill(const CacheKey& key, const KeyId& id, const ComputeFn& compute, CacheSource* source);
  void WriteDisk(const KeyId& id, const StoredBlock& block);  // serialize + put; counts failures
  void QueueWrite(const KeyId& id, std::shared_ptr<const StoredBlock> block);
  void WriterLoop();

  const BlockCacheOptions options_;
  const std::unique_ptr<DiskStore> disk_;  // nullptr: RAM only
  Metrics m_;

  mutable Mutex mu_;
  std::list<Entry> lru_ ABSL_GUARDED_BY(mu_);  // most recently used first
  std::unordered_map<KeyId, std::list<Entry>::iterator, KeyIdHash> ram_ ABSL_GUARDED_BY(mu_);
  std::unordered_map<KeyId, std::shared_future<Result>, KeyIdHash> inflight_ ABSL_GUARDED_BY(mu_);
  int64_t ram_bytes_ ABSL_GUARDED_BY(mu_) = 0;

  // Background disk writes. Lock order: never hold mu_ and wmu_ together.
  mutable Mutex wmu_;
  std::condition_variable wcv_;                    // signals the writer: work queued or stop
  std::condition_variable idle_cv_;                // signals Flush: a write finished
  std::deque<KeyId> queue_ ABSL_GUARDED_BY(wmu_);  // ids to write, oldest first
  std::unordered_map<KeyId, std::shared_ptr<const StoredBlock>, KeyIdHash> pending_
      ABSL_GUARDED_BY(wmu_);
  int64_t pending_bytes_ ABSL_GUARDED_BY(wmu_) = 0;
  // The block the writer (one thread) is writing now, outside wmu_.
  std::optional<KeyId> writing_ ABSL_GUARDED_BY(wmu_);
  bool stop_ ABSL_GUARDED_BY(wmu_) = false;
  std::thread writer_;

  std::atomic<int64_t> hits_ram_{0}, hits_disk_{0}, hits_inflight_{0}, misses_{0}, evictions_{0},
      corrupt_{0}, disk_errors_{0};
};

}  // namespace ragserve::ctxcache
