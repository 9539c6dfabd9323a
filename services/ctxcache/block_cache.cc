#include "services/ctxcache/block_cache.h"

#include <exception>

#include "services/common/logging.h"

namespace ragserve::ctxcache {

BlockCache::BlockCache(const BlockCacheOptions& options, std::unique_ptr<DiskStore> disk)
    : options_(options), disk_(std::move(disk)) {
  MetricsRegistry& r = options_.metrics != nullptr ? *options_.metrics : MetricsRegistry::Default();
  auto counter = [&r](const char* name, const char* help, const char* tier) {
    return &r.GetCounter(name, help, tier != nullptr ? Labels{{"tier", tier}} : Labels{});
  };
  const char* kHits = "ragserve_ctxcache_hits_total";
  const char* kHitsHelp = "Cache lookups served without computing, by tier";
  const char* kMiss = "ragserve_ctxcache_misses_total";
  const char* kMissHelp = "Cache lookups that found nothing in the tier";
  const char* kEvict = "ragserve_ctxcache_evictions_total";
  const char* kEvictHelp = "Entries removed from the tier (LRU, explicit evictions, corruption)";
  m_.hits_ram = counter(kHits, kHitsHelp, "ram");
  m_.hits_disk = counter(kHits, kHitsHelp, "disk");
  m_.hits_inflight = counter(kHits, kHitsHelp, "inflight");
  m_.misses_ram = counter(kMiss, kMissHelp, "ram");
  m_.misses_disk = counter(kMiss, kMissHelp, "disk");
  m_.evict_ram = counter(kEvict, kEvictHelp, "ram");
  m_.evict_disk = counter(kEvict, kEvictHelp, "disk");
  m_.corrupt =
      counter("ragserve_ctxcache_corrupt_total",
              "Disk entries rejected (checksum, key tag, fingerprint) and recomputed", nullptr);
  m_.computes = counter("ragserve_ctxcache_computes_total", "Entries computed on a miss", nullptr);
  m_.disk_errors = counter("ragserve_ctxcache_disk_errors_total",
                           "Disk tier reads or writes that failed (not corruption)", nullptr);
  m_.ram_bytes =
      &r.GetGauge("ragserve_ctxcache_bytes", "Bytes held by the tier", {{"tier", "ram"}});
  m_.ram_entries =
      &r.GetGauge("ragserve_ctxcache_entries", "Entries held by the tier", {{"tier", "ram"}});
}

BlockCache::~BlockCache() {
  {
    MutexLock lock(wmu_);
    stop_ = true;
  }
  wcv_.notify_all();
  if (writer_.joinable()) writer_.join();  // drains the queue first
}

void BlockCache::WriteDisk(const KeyId& id, const StoredBlock& block) {
  if (Status s = disk_->Put(id.view(), SerializeStoredBlock(block, id.view())); !s.ok()) {
    ++disk_errors_;
    m_.disk_errors->Inc();
    RS_LOG(warn, "ctxcache: disk write of {} failed: {}", id.Hex(), s.ToString());
  }
}

void BlockCache::QueueWrite(const KeyId& id, std::shared_ptr<const StoredBlock> block) {
  const int64_t bytes = block->ByteSize();
  {
    MutexLock lock(wmu_);
    if (writer_.joinable() && pending_bytes_ + bytes <= options_.max_pending_write_bytes) {
      auto [it, fresh] = pending_.try_emplace(id, block);
      if (!fresh) {
        pending_bytes_ -= it->second->ByteSize();
        it->second = block;
      }
      pending_bytes_ += bytes;
      queue_.push_back(id);
      wcv_.notify_one();
      return;
    }
  }
  WriteDisk(id, *block);  // synchronous mode, or the queue is full: the caller pays
}

void BlockCache::WriterLoop() {
  MutexLock lock(wmu_);
  while (true) {
    lock.Wait(wcv_, [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(wmu_) { return stop_ || !queue_.empty(); });
    if (queue_.empty()) return;  // stop_ and drained
    const KeyId id = queue_.front();
    queue_.pop_front();
    auto it = pending_.find(id);
    if (it == pending_.end()) continue;  // evicted, or an older duplicate already written
    std::shared_ptr<const StoredBlock> block = it->second;
    writing_ = id;
    lock.Unlock();
    WriteDisk(id, *block);
    lock.Lock();
    writing_.reset();
    if (auto p = pending_.find(id); p != pending_.end() && p->second == block) {
      pending_bytes_ -= block->ByteSize();
      pending_.erase(p);
    }
    idle_cv_.notify_all();
  }
}

void BlockCache::Flush() {
  MutexLock lock(wmu_);
  lock.Wait(idle_cv_, [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(wmu_) {
    return queue_.empty() && !writing_.has_value();
  });
}

StatusOr<std::unique_ptr<BlockCache>> BlockCache::Open(const BlockCacheOptions& options,
                                                       std::unique_ptr<DiskStore> disk) {
  RS_CHECK_ARG(options.ram_limit_bytes >= 0, "ctxcache ram_limit_bytes ", options.ram_limit_bytes,
               " is negative");
  if (disk == nullptr && !options.disk_dir.empty()) {
    RS_ASSIGN_OR_RETURN(
        disk, RocksDiskStore::Open(options.disk_dir,
                                   {.write_buffer_bytes = options.disk_write_buffer_bytes}));
  }
  std::unique_ptr<BlockCache> cache(new BlockCache(options, std::move(disk)));
  if (cache->disk_ != nullptr && options.async_disk_writes) {
    cache->writer_ = std::thread([c = cache.get()] { c->WriterLoop(); });
  }
  MutexLock lock(cache->mu_);
  cache->UpdateGauges();
  return cache;
}

void BlockCache::UpdateGauges() {
  m_.ram_bytes->Set(static_cast<double>(ram_bytes_));
  m_.ram_entries->Set(static_cast<double>(ram_.size()));
}

void BlockCache::EvictOverBudget() {
  while (ram_bytes_ > options_.ram_limit_bytes && !lru_.empty()) {
    ram_bytes_ -= lru_.back().bytes;
    ram_.erase(lru_.back().id);
    lru_.pop_back();
    ++evictions_;
    m_.evict_ram->Inc();
  }
}

void BlockCache::InsertRam(const KeyId& id, std::shared_ptr<const StoredBlock> block) {
  const int64_t bytes = block->ByteSize();
  MutexLock lock(mu_);
  if (auto it = ram_.find(id); it != ram_.end()) {
    ram_bytes_ -= it->second->bytes;
    lru_.erase(it->second);
    ram_.erase(it);
  }
  if (bytes <= options_.ram_limit_bytes) {
    lru_.push_front(Entry{id, std::move(block), bytes});
    ram_[id] = lru_.begin();
    ram_bytes_ += bytes;
    EvictOverBudget();
  }
  UpdateGauges();
}

std::shared_ptr<const StoredBlock> BlockCache::ReadDisk(const KeyId& id,
                                                        std::string_view fingerprint) {
  if (disk_ == nullptr) return nullptr;
  {
    MutexLock lock(wmu_);
    if (auto it = pending_.find(id); it != pending_.end()) {
      if (fingerprint.empty() || it->second->fingerprint == fingerprint) return it->second;
    }
  }
  StatusOr<std::optional<std::string>> raw = disk_->Get(id.view());
  Status bad;
  if (!raw.ok()) {
    if (raw.status().code() != StatusCode::kDataLoss) {
      ++disk_errors_;
      m_.disk_errors->Inc();
      RS_LOG(warn, "ctxcache: disk read of {} failed: {}", id.Hex(), raw.status().ToString());
      return nullptr;
    }
    bad = raw.status();
  } else if (!raw->has_value()) {
    return nullptr;
  } else {
    StatusOr<StoredBlock> blk = DeserializeStoredBlock(**raw, id.view());
    if (blk.ok()) {
      if (Status v = blk->Validate(); !v.ok()) {
        bad = DataLoss(v.message());
      } else if (!fingerprint.empty() && blk->fingerprint != fingerprint) {
        bad = DataLoss(StrCat("fingerprint '", blk->fingerprint, "' != '", fingerprint, "'"));
      } else {
        return std::make_shared<const StoredBlock>(std::move(blk).value());
      }
    } else {
      bad = blk.status();
    }
  }
  ++corrupt_;
  m_.corrupt->Inc();
  m_.evict_disk->Inc();
  RS_LOG(warn, "ctxcache: dropping corrupt disk entry {}: {}", id.Hex(), bad.ToString());
  if (Status d = disk_->Delete(id.view()); !d.ok()) {
    ++disk_errors_;
    m_.disk_errors->Inc();
  }
  return nullptr;
}

BlockCache::Result BlockCache::Fill(const CacheKey& key, const KeyId& id, const ComputeFn& compute,
                                    CacheSource* source) {
  if (disk_ != nullptr) {
    if (std::shared_ptr<const StoredBlock> b = ReadDisk(id, key.fingerprint)) {
      ++hits_disk_;
      m_.hits_disk->Inc();
      InsertRam(id, b);
      if (source != nullptr) *source = CacheSource::kDisk;
      return b;
    }
    m_.misses_disk->Inc();
  }
  ++misses_;
  m_.computes->Inc();
  StatusOr<StoredBlock> computed = [&]() -> StatusOr<StoredBlock> {
    try {
      return compute();
    } catch (const std::exception& e) {
      return Internal(StrCat("compute threw: ", e.what()));
    } catch (...) {
      return Internal("compute threw a non-standard exception");
    }
  }();
  const std::string what = StrCat("ctxcache entry ", id.Hex());
  if (!computed.ok()) return Annotate(computed.status(), what);
  RS_RETURN_IF_ERROR(Annotate(computed->Validate(), what));
  if (computed->fingerprint != key.fingerprint) {
    return FailedPrecondition(StrCat(what, ": computed with model fingerprint '",
                                     computed->fingerprint, "' but the key is for '",
                                     key.fingerprint, "'"));
  }
  StoredBlock stored = computed->dtype == options_.store_dtype
                           ? std::move(computed).value()
                           : computed->ConvertTo(options_.store_dtype);
  auto block = std::make_shared<const StoredBlock>(std::move(stored));
  InsertRam(id, block);
  if (disk_ != nullptr) QueueWrite(id, block);
  if (source != nullptr) *source = CacheSource::kComputed;
  return block;
}

StatusOr<std::shared_ptr<const StoredBlock>> BlockCache::GetOrCompute(const CacheKey& key,
                                                                      ComputeFn compute,
                                                                      CacheSource* source) {
  RS_CHECK_ARG(!key.fingerprint.empty(), "ctxcache: the key's model fingerprint is empty");
  RS_CHECK_ARG(compute != nullptr, "ctxcache: no compute function");
  const KeyId id = key.id();
  std::promise<Result> promise;
  {
    MutexLock lock(mu_);
    if (auto it = ram_.find(id); it != ram_.end()) {
      lru_.splice(lru_.begin(), lru_, it->second);
      ++hits_ram_;
      m_.hits_ram->Inc();
      if (source != nullptr) *source = CacheSource::kRam;
      return it->second->block;
    }
    if (auto f = inflight_.find(id); f != inflight_.end()) {
      std::shared_future<Result> fut = f->second;
      lock.Unlock();
      ++hits_inflight_;
      m_.hits_inflight->Inc();
      if (source != nullptr) *source = CacheSource::kInflight;
      return fut.get();
    }
    inflight_.emplace(id, promise.get_future().share());
    m_.misses_ram->Inc();
  }
  Result r = Fill(key, id, compute, source);
  promise.set_value(r);
  MutexLock lock(mu_);
  inflight_.erase(id);  // after Fill put the block in RAM, so no caller computes it again
  return r;
}

StatusOr<std::shared_ptr<const StoredBlock>> BlockCache::Get(const KeyId& id) {
  {
    MutexLock lock(mu_);
    if (auto it = ram_.find(id); it != ram_.end()) {
      lru_.splice(lru_.begin(), lru_, it->second);
      ++hits_ram_;
      m_.hits_ram->Inc();
      return it->second->block;
    }
    if (auto f = inflight_.find(id); f != inflight_.end()) {
      std::shared_future<Result> fut = f->second;
      lock.Unlock();
      ++hits_inflight_;
      m_.hits_inflight->Inc();
      return fut.get();
    }
  }
  m_.misses_ram->Inc();
  if (std::shared_ptr<const StoredBlock> b = ReadDisk(id, {})) {
    ++hits_disk_;
    m_.hits_disk->Inc();
    InsertRam(id, b);
    return b;
  }
  if (disk_ != nullptr) m_.misses_disk->Inc();
  return NotFound(StrCat("ctxcache: key ", id.Hex(), " is not cached"));
}

bool BlockCache::Has(const KeyId& id) {
  {
    MutexLock lock(mu_);
    if (ram_.count(id) != 0) return true;
  }
  if (disk_ == nullptr) return false;
  {
    MutexLock lock(wmu_);
    if (pending_.count(id) != 0) return true;
  }
  StatusOr<bool> on_disk = disk_->Contains(id.view());
  return on_disk.ok() && *on_disk;
}

int BlockCache::Evict(const KeyId& id, bool include_disk) {
  int held = 0;
  {
    MutexLock lock(mu_);
    if (auto it = ram_.find(id); it != ram_.end()) {
      ram_bytes_ -= it->second->bytes;
      lru_.erase(it->second);
      ram_.erase(it);
      m_.evict_ram->Inc();
      UpdateGauges();
      ++held;
    }
  }
  if (include_disk && disk_ != nullptr) {
    bool was_pending = false;
    {
      MutexLock lock(wmu_);
      if (auto it = pending_.find(id); it != pending_.end()) {
        pending_bytes_ -= it->second->ByteSize();
        pending_.erase(it);
        was_pending = true;
      }
      // A write of this block already under way would land after the delete below and bring
      // the entry back: wait for it (the writer takes no other write of it once it left pending_).
      lock.Wait(idle_cv_, [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(wmu_) {
        return !(writing_.has_value() && *writing_ == id);
      });
    }
    StatusOr<bool> contains = disk_->Contains(id.view());
    const bool on_disk = !contains.ok() || *contains;  // when unsure, delete anyway
    if ((on_disk || was_pending) && disk_->Delete(id.view()).ok()) {
      m_.evict_disk->Inc();
      ++held;
    }
  }
  return held;
}

int64_t BlockCache::EvictAll(bool include_disk) {
  int64_t n = 0;
  {
    MutexLock lock(mu_);
    n = static_cast<int64_t>(ram_.size());
    m_.evict_ram->Inc(static_cast<double>(n));
    ram_.clear();
    lru_.clear();
    ram_bytes_ = 0;
    UpdateGauges();
  }
  if (include_disk && disk_ != nullptr) {
    {
      MutexLock lock(wmu_);
      pending_.clear();
      pending_bytes_ = 0;
    }
    Flush();  // a write in progress lands before the clear, not after it
    StatusOr<int64_t> d = disk_->DeleteAll();
    if (d.ok()) {
      n += *d;
      m_.evict_disk->Inc(static_cast<double>(*d));
    } else {
      ++disk_errors_;
      m_.disk_errors->Inc();
      RS_LOG(warn, "ctxcache: clearing the disk tier failed: {}", d.status().ToString());
    }
  }
  return n;
}

BlockCacheStats BlockCache::Stats() const {
  BlockCacheStats s;
  {
    MutexLock lock(mu_);
    s.ram_entries = static_cast<int64_t>(ram_.size());
    s.ram_bytes = ram_bytes_;
  }
  s.ram_limit_bytes = options_.ram_limit_bytes;
  if (disk_ != nullptr) {
    s.disk_entries = disk_->ApproxEntries();
    s.disk_bytes = disk_->ApproxBytes();
  }
  s.hits_ram = hits_ram_;
  s.hits_disk = hits_disk_;
  s.hits_inflight = hits_inflight_;
  s.misses = misses_;
  s.evictions = evictions_;
  s.corrupt = corrupt_;
  s.disk_errors = disk_errors_;
  {
    MutexLock lock(wmu_);
    s.pending_writes = static_cast<int64_t>(pending_.size());
  }
  return s;
}

}  // namespace ragserve::ctxcache
