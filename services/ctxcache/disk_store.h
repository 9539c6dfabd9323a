// The disk tier's storage, behind a small interface so tests can inject faults (corrupt values,
// failing writes). RocksDiskStore keeps entries in a RocksDB database with large values in blob
// files; writes are not synced (a cache: a lost entry is recomputed). Layout: "v" + key -> value,
// "m" + key -> "" (a presence marker, so Contains does not read the value).
// Thread-safety: implementations are safe to call from any thread.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "services/common/status.h"

namespace rocksdb {
class DB;
}

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

class RocksDiskStore final : public DiskStore {
 public:
  // Opens (creating when missing) the database in directory `dir`. Internal with RocksDB's message
  // when it cannot (e.g. another process holds the lock).
  static StatusOr<std::unique_ptr<RocksDiskStore>> Open(const std::string& dir);
  ~RocksDiskStore() override;

  Status Put(std::string_view key, std::string_view value) override;
  StatusOr<std::optional<std::string>> Get(std::string_view key) override;
  // Reads a small marker written with every value (values are MBs, in blob files).
  StatusOr<bool> Contains(std::string_view key) override;
  Status Delete(std::string_view key) override;
  StatusOr<int64_t> DeleteAll() override;
  int64_t ApproxEntries() const override;
  int64_t ApproxBytes() const override;

 private:
  RocksDiskStore(std::unique_ptr<rocksdb::DB> db, std::string dir);
  std::unique_ptr<rocksdb::DB> db_;
  std::string dir_;
};

}  // namespace ragserve::ctxcache
