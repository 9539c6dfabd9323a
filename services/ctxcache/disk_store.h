// The disk tier's storage, behind a small interface so tests can inject faults (corrupt values,
// failing writes). RocksDiskStore keeps entries in a RocksDB database with large values in blob
// files; writes are not synced (a cache: a lost entry is recomputed). Layout: "v" + key -> value,
// "m" + key -> "" (a presence marker, so Contains does not read the value).
//
// A full disk: a write that cannot be flushed fails (ResourceExhausted) and RocksDB then refuses
// every write; the next Put reopens the database once the disk has room again (as the index's
// store does, docs/RELIABILITY.md C2/C6), so the tier resumes without a restart. Entries not yet
// flushed when the disk filled up are lost (recomputed on demand); reads keep working.
// Thread-safety: implementations are safe to call from any thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "services/common/mutex.h"
#include "services/common/status.h"

namespace rocksdb {
class DB;
class Env;
class WriteBatch;
}  // namespace rocksdb

namespace ragserve::ctxcache {

class DiskStore {
 public:
  virtual ~DiskStore() = default;
  // Stores `value` under `key` (replacing any previous value).
  virtual Status Put(std::string_view key, std::string_view value) = 0;
  // The value under `key`, nullopt when absent; DataLoss when the store itself detected
  // corruption of that entry (e.g. a block checksum), Internal for other I/O errors.
  virtual StatusOr<std::optional<std::string>> Get(std::string_view key) = 0;
  // Whether `key` has a value, without reading (or verifying) it. The default reads it.
  virtual StatusOr<bool> Contains(std::string_view key) {
    RS_ASSIGN_OR_RETURN(std::optional<std::string> v, Get(key));
    return v.has_value();
  }
  // Removes `key` (absent keys are fine).
  virtual Status Delete(std::string_view key) = 0;
  // Removes every entry; returns how many there were.
  virtual StatusOr<int64_t> DeleteAll() = 0;
  // Estimated entries and bytes on disk (for stats; may lag recent writes).
  virtual int64_t ApproxEntries() const = 0;
  virtual int64_t ApproxBytes() const = 0;
};

struct RocksDiskStoreOptions {
  // RocksDB's memtable: entries reach the disk when it fills (no WAL), and it is RAM on top of
  // the RAM tier. RocksDB's default is 64 MiB.
  int64_t write_buffer_bytes = int64_t{8} << 20;
  rocksdb::Env* env = nullptr;  // tests: a file system that fails on demand; null = default
};

class RocksDiskStore final : public DiskStore {
 public:
  // Opens (creating when missing) the database in directory `dir`. Internal with RocksDB's message
  // when it cannot (e.g. another process holds the lock).
  static StatusOr<std::unique_ptr<RocksDiskStore>> Open(const std::string& dir,
                                                        RocksDiskStoreOptions options = {});
  ~RocksDiskStore() override;

  Status Put(std::string_view key, std::string_view value) override;
  StatusOr<std::optional<std::string>> Get(std::string_view key) override;
  // ResourceExhausted when the disk is full (then, and after any failed write, the next Put
  // first reopens the database if the disk has room again).
  // Reads a small marker written with every value (values are MBs, in blob files).
  StatusOr<bool> Contains(std::string_view key) override;
  Status Delete(std::string_view key) override;
  StatusOr<int64_t> DeleteAll() override;
  int64_t ApproxEntries() const override;
  int64_t ApproxBytes() const override;

 private:
  RocksDiskStore(std::unique_ptr<rocksdb::DB> db, std::string dir, RocksDiskStoreOptions options);
  // Writes the batch; a failed write marks the database for a reopen.
  Status Write(bool no_wal, rocksdb::WriteBatch* batch, std::string_view what);
  // After a failed write: closes and reopens the database when the disk has room (1 MiB plus
  // one write buffer); ResourceExhausted while it has not, and within a second of the last
  // reopen.
  Status ReopenAfterWriteError();

  const std::string dir_;
  const RocksDiskStoreOptions options_;
  // Shared by every use of db_, exclusive to reopen it (no lock is held across a reopen's wait
  // for anything else).
  mutable SharedMutex db_mu_;
  std::unique_ptr<rocksdb::DB> db_ ABSL_GUARDED_BY(db_mu_);
  std::atomic<bool> needs_reopen_{false};
  // Reopens are at most one a second while the disk looks free but writes still fail.
  std::atomic<int64_t> last_reopen_ms_{0};
};

}  // namespace ragserve::ctxcache
