// What the services that keep data in RocksDB (the index store, the context cache's disk tier)
// share: RocksDB's info log sent to ours, and the recovery from a failed write (a full disk)
// without a restart. Library ragserve_rocksdb (links RocksDB; ragserve_common does not).
#pragma once

#include <rocksdb/db.h>
#include <rocksdb/env.h>
#include <rocksdb/options.h>

#include <atomic>
#include <cstdarg>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "services/common/status.h"

namespace ragserve {

// RocksDB's info log sent to ours (warnings and errors) instead of a LOG file on the data disk:
// on a full disk the LOG file's writer fails too, and the next line logged to it aborts the
// process (an assertion of Debian's RocksDB build after a failed write; found by tools/chaos, C3).
class RocksInfoLog : public rocksdb::Logger {
 public:
  // `what` starts every line ("index store", "ctxcache disk tier").
  explicit RocksInfoLog(std::string what);
  using rocksdb::Logger::Logv;
  void Logv(const char* format, va_list ap) override;

 private:
  const std::string what_;
};

// Maps a RocksDB status to ours, `what` naming the operation.
using RocksStatusMapper = Status (*)(const rocksdb::Status& s, std::string_view what);

// The recovery after a failed write. RocksDB stops taking writes after a failed WAL write or
// flush (a full disk) and, on its own, resumes only once the free space reaches its reserve (up
// to the 64 MiB write buffer, polled every 5 s); DB::Resume asserts in Debian's build
// (docs/RELIABILITY.md C2/C3). So, when `dir` has `need_bytes` free (asked of options.env) and
// the last reopen (`*last_reopen_ms`, steady clock) is over a second ago: closes *db and opens it
// again with `options`, as a restart would (the WAL is replayed). OK when it reopened;
// ResourceExhausted (prefixed with `what`) while the disk is still too full or within the second;
// when the open fails, *db is opened read-only (reads go on; the next write tries again) and the
// open's error is returned through `from_rocks`; when even that fails the process aborts (nothing
// could serve a call; a restart retries the open). The caller holds *db exclusively.
Status ReopenAfterFailedWrite(const rocksdb::Options& options, const std::string& dir,
                              uint64_t need_bytes, std::string_view what,
                              RocksStatusMapper from_rocks, std::atomic<int64_t>* last_reopen_ms,
                              std::unique_ptr<rocksdb::DB>* db);

}  // namespace ragserve
