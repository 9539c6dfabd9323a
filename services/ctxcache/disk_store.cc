#include "services/ctxcache/disk_store.h"

#include <rocksdb/db.h>
#include <rocksdb/env.h>
#include <rocksdb/options.h>

#include <filesystem>

#include "services/common/rocksdb_util.h"

namespace ragserve::ctxcache {
namespace {

Status FromRocks(const rocksdb::Status& s, std::string_view what) {
  if (s.ok()) return OkStatus();
  if (s.IsCorruption()) return DataLoss(StrCat(what, ": ", s.ToString()));
  if (s.IsNoSpace()) return ResourceExhausted(StrCat(what, ": disk full: ", s.ToString()));
  return Internal(StrCat(what, ": ", s.ToString()));
}

rocksdb::Slice ToSlice(std::string_view s) { return rocksdb::Slice(s.data(), s.size()); }

std::string ValueKey(std::string_view key) { return StrCat("v", key); }
std::string MarkerKey(std::string_view key) { return StrCat("m", key); }

rocksdb::Options DbOptions(const RocksDiskStoreOptions& options) {
  rocksdb::Options o;
  o.create_if_missing = true;
  o.compression = rocksdb::kNoCompression;  // KV floats do not compress; spare the CPU
  o.enable_blob_files = true;               // MB-sized values: keep them out of compactions
  o.min_blob_size = 4096;
  o.max_open_files = 256;
  o.write_buffer_size = static_cast<size_t>(options.write_buffer_bytes);
  o.info_log = std::make_shared<RocksInfoLog>("ctxcache disk tier");
  if (options.env != nullptr) o.env = options.env;
  return o;
}

// Room a reopen needs: a memtable's flush plus a new MANIFEST and OPTIONS file.
uint64_t ReopenNeedBytes(const RocksDiskStoreOptions& options) {
  return static_cast<uint64_t>(options.write_buffer_bytes) + (uint64_t{1} << 20);
}

}  // namespace

RocksDiskStore::RocksDiskStore(std::unique_ptr<rocksdb::DB> db, std::string dir,
                               RocksDiskStoreOptions options)
    : dir_(std::move(dir)), options_(options), db_(std::move(db)) {}

RocksDiskStore::~RocksDiskStore() {
  WriterMutexLock<SharedMutex> lock(db_mu_);
  if (db_ != nullptr) db_->Close().PermitUncheckedError();
}

StatusOr<std::unique_ptr<RocksDiskStore>> RocksDiskStore::Open(const std::string& dir,
                                                               RocksDiskStoreOptions options) {
  RS_CHECK_ARG(!dir.empty(), "ctxcache disk dir is empty");
  RS_CHECK_ARG(options.write_buffer_bytes >= (int64_t{64} << 10),
               "ctxcache disk write buffer must be >= 64 KiB, got ", options.write_buffer_bytes);
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return Internal(StrCat("cannot create ctxcache disk dir '", dir, "': ", ec.message()));
  rocksdb::DB* raw = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(DbOptions(options), dir, &raw);
  if (!s.ok())
    return Internal(StrCat("cannot open ctxcache disk tier '", dir, "': ", s.ToString()));
  return std::unique_ptr<RocksDiskStore>(
      new RocksDiskStore(std::unique_ptr<rocksdb::DB>(raw), dir, options));
}

Status RocksDiskStore::Write(bool no_wal, rocksdb::WriteBatch* batch, std::string_view what) {
  RS_RETURN_IF_ERROR(Annotate(ReopenAfterWriteError(), what));
  rocksdb::WriteOptions w;
  w.disableWAL = no_wal;
  rocksdb::Status s;
  {
    ReaderMutexLock<SharedMutex> lock(db_mu_);
    s = db_->Write(w, batch);
  }
  // RocksDB stops taking writes after a failed flush (a full disk) until it is resumed.
  if (s.IsIOError()) needs_reopen_ = true;
  return FromRocks(s, what);
}

Status RocksDiskStore::ReopenAfterWriteError() {
  if (!needs_reopen_) return OkStatus();
  WriterMutexLock<SharedMutex> lock(db_mu_);
  if (!needs_reopen_) return OkStatus();
  RS_RETURN_IF_ERROR(ReopenAfterFailedWrite(DbOptions(options_), dir_, ReopenNeedBytes(options_),
                                            "ctxcache disk tier", &FromRocks, &last_reopen_ms_,
                                            &db_));
  needs_reopen_ = false;
  return OkStatus();
}

Status RocksDiskStore::Put(std::string_view key, std::string_view value) {
  // No WAL: entries are written once and large; a crash loses the unflushed ones (recomputed on
  // demand), a clean Close flushes them (avoid_flush_during_shutdown is false).
  rocksdb::WriteBatch batch;
  batch.Put(ValueKey(key), ToSlice(value));
  batch.Put(MarkerKey(key), rocksdb::Slice());
  return Write(/*no_wal=*/true, &batch, "ctxcache disk put");
}

StatusOr<std::optional<std::string>> RocksDiskStore::Get(std::string_view key) {
  std::string value;
  rocksdb::ReadOptions ro;
  ro.verify_checksums = true;
  rocksdb::Status s;
  {
    ReaderMutexLock<SharedMutex> lock(db_mu_);
    s = db_->Get(ro, ValueKey(key), &value);
  }
  if (s.IsNotFound()) return std::optional<std::string>();
  RS_RETURN_IF_ERROR(FromRocks(s, "ctxcache disk get"));
  return std::optional<std::string>(std::move(value));
}

StatusOr<bool> RocksDiskStore::Contains(std::string_view key) {
  std::string unused;
  rocksdb::Status s;
  {
    ReaderMutexLock<SharedMutex> lock(db_mu_);
    s = db_->Get(rocksdb::ReadOptions(), MarkerKey(key), &unused);
  }
  if (s.IsNotFound()) return false;
  RS_RETURN_IF_ERROR(FromRocks(s, "ctxcache disk lookup"));
  return true;
}

Status RocksDiskStore::Delete(std::string_view key) {
  rocksdb::WriteBatch batch;
  batch.Delete(ValueKey(key));
  batch.Delete(MarkerKey(key));
  return Write(/*no_wal=*/false, &batch, "ctxcache disk delete");
}

StatusOr<int64_t> RocksDiskStore::DeleteAll() {
  int64_t n = 0;
  rocksdb::WriteBatch batch;
  {
    ReaderMutexLock<SharedMutex> lock(db_mu_);
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      batch.Delete(it->key());
      if (it->key().starts_with("m")) ++n;
    }
    RS_RETURN_IF_ERROR(FromRocks(it->status(), "ctxcache disk scan"));
  }
  RS_RETURN_IF_ERROR(Write(/*no_wal=*/false, &batch, "ctxcache disk clear"));
  return n;
}

int64_t RocksDiskStore::ApproxEntries() const {
  uint64_t n = 0;
  ReaderMutexLock<SharedMutex> lock(db_mu_);
  db_->GetIntProperty("rocksdb.estimate-num-keys", &n);
  return static_cast<int64_t>(n / 2);  // a value and a marker per entry
}

int64_t RocksDiskStore::ApproxBytes() const {
  uint64_t live = 0, mem = 0, blob = 0;
  ReaderMutexLock<SharedMutex> lock(db_mu_);
  db_->GetIntProperty("rocksdb.estimate-live-data-size", &live);
  db_->GetIntProperty("rocksdb.cur-size-all-mem-tables", &mem);
  db_->GetIntProperty("rocksdb.total-blob-file-size", &blob);
  return static_cast<int64_t>(live + mem + blob);
}

}  // namespace ragserve::ctxcache
