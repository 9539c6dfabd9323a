#include "services/ctxcache/disk_store.h"

#include <rocksdb/db.h>
#include <rocksdb/options.h>

#include <filesystem>

namespace ragserve::ctxcache {
namespace {

Status FromRocks(const rocksdb::Status& s, std::string_view what) {
  if (s.ok()) return OkStatus();
  if (s.IsCorruption()) return DataLoss(StrCat(what, ": ", s.ToString()));
  return Internal(StrCat(what, ": ", s.ToString()));
}

rocksdb::Slice ToSlice(std::string_view s) { return rocksdb::Slice(s.data(), s.size()); }

std::string ValueKey(std::string_view key) { return StrCat("v", key); }
std::string MarkerKey(std::string_view key) { return StrCat("m", key); }

}  // namespace

RocksDiskStore::RocksDiskStore(std::unique_ptr<rocksdb::DB> db, std::string dir)
    : db_(std::move(db)), dir_(std::move(dir)) {}

RocksDiskStore::~RocksDiskStore() {
  if (db_ != nullptr) db_->Close().PermitUncheckedError();
}

StatusOr<std::unique_ptr<RocksDiskStore>> RocksDiskStore::Open(const std::string& dir) {
  RS_CHECK_ARG(!dir.empty(), "ctxcache disk dir is empty");
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return Internal(StrCat("cannot create ctxcache disk dir '", dir, "': ", ec.message()));
  rocksdb::Options o;
  o.create_if_missing = true;
  o.compression = rocksdb::kNoCompression;  // KV floats do not compress; spare the CPU
  o.enable_blob_files = true;               // MB-sized values: keep them out of compactions
  o.min_blob_size = 4096;
  o.max_open_files = 256;
  rocksdb::DB* raw = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(o, dir, &raw);
  if (!s.ok())
    return Internal(StrCat("cannot open ctxcache disk tier '", dir, "': ", s.ToString()));
  return std::unique_ptr<RocksDiskStore>(
      new RocksDiskStore(std::unique_ptr<rocksdb::DB>(raw), dir));
}

Status RocksDiskStore::Put(std::string_view key, std::string_view value) {
  // No WAL: entries are written once and large; a crash loses the unflushed ones (recomputed on
  // demand), a clean Close flushes them (avoid_flush_during_shutdown is false).
  rocksdb::WriteOptions w;
  w.disableWAL = true;
  rocksdb::WriteBatch batch;
  batch.Put(ValueKey(key), ToSlice(value));
  batch.Put(MarkerKey(key), rocksdb::Slice());
  return FromRocks(db_->Write(w, &batch), "ctxcache disk put");
}

StatusOr<std::optional<std::string>> RocksDiskStore::Get(std::string_view key) {
  std::string value;
  rocksdb::ReadOptions ro;
  ro.verify_checksums = true;
  rocksdb::Status s = db_->Get(ro, ValueKey(key), &value);
  if (s.IsNotFound()) return std::optional<std::string>();
  RS_RETURN_IF_ERROR(FromRocks(s, "ctxcache disk get"));
  return std::optional<std::string>(std::move(value));
}

StatusOr<bool> RocksDiskStore::Contains(std::string_view key) {
  std::string unused;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), MarkerKey(key), &unused);
  if (s.IsNotFound()) return false;
  RS_RETURN_IF_ERROR(FromRocks(s, "ctxcache disk lookup"));
  return true;
}

Status RocksDiskStore::Delete(std::string_view key) {
  rocksdb::WriteBatch batch;
  batch.Delete(ValueKey(key));
  batch.Delete(MarkerKey(key));
  return FromRocks(db_->Write(rocksdb::WriteOptions(), &batch), "ctxcache disk delete");
}

StatusOr<int64_t> RocksDiskStore::DeleteAll() {
  int64_t n = 0;
  rocksdb::WriteBatch batch;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    batch.Delete(it->key());
    if (it->key().starts_with("m")) ++n;
  }
  RS_RETURN_IF_ERROR(FromRocks(it->status(), "ctxcache disk scan"));
  RS_RETURN_IF_ERROR(FromRocks(db_->Write(rocksdb::WriteOptions(), &batch), "ctxcache disk clear"));
  return n;
}

int64_t RocksDiskStore::ApproxEntries() const {
  uint64_t n = 0;
  db_->GetIntProperty("rocksdb.estimate-num-keys", &n);
  return static_cast<int64_t>(n / 2);  // a value and a marker per entry
}

int64_t RocksDiskStore::ApproxBytes() const {
  uint64_t live = 0, mem = 0, blob = 0;
  db_->GetIntProperty("rocksdb.estimate-live-data-size", &live);
  db_->GetIntProperty("rocksdb.cur-size-all-mem-tables", &mem);
  db_->GetIntProperty("rocksdb.total-blob-file-size", &blob);
  return static_cast<int64_t>(live + mem + blob);
}

}  // namespace ragserve::ctxcache
