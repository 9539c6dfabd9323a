#include "services/common/rocksdb_util.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>

#include "services/common/logging.h"

namespace ragserve {

RocksInfoLog::RocksInfoLog(std::string what)
    : rocksdb::Logger(rocksdb::InfoLogLevel::WARN_LEVEL), what_(std::move(what)) {}

void RocksInfoLog::Logv(const char* format, va_list ap) {
  char line[1024];
  std::vsnprintf(line, sizeof(line), format, ap);
  RS_LOG(warn, "{}: rocksdb: {}", what_, line);
}

Status ReopenAfterFailedWrite(const rocksdb::Options& options, const std::string& dir,
                              uint64_t need_bytes, std::string_view what,
                              RocksStatusMapper from_rocks, std::atomic<int64_t>* last_reopen_ms,
                              std::unique_ptr<rocksdb::DB>* db) {
  uint64_t free_bytes = 0;
  if (options.env->GetFreeSpace(dir, &free_bytes).ok() && free_bytes < need_bytes) {
    return ResourceExhausted(StrCat(what, ": disk full: ", free_bytes, " bytes free, ", need_bytes,
                                    " needed to take writes again"));
  }
  const int64_t now_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                             std::chrono::steady_clock::now().time_since_epoch())
                             .count();
  if (now_ms - last_reopen_ms->load() < 1000) {
    return ResourceExhausted(
        StrCat(what, ": writes failed again right after a reopen (disk full?)"));
  }
  last_reopen_ms->store(now_ms);
  RS_LOG(warn, "{}: a write failed earlier; reopening {} ({} bytes free)", what, dir, free_bytes);
  rocksdb::Status closed = (*db)->Close();
  if (!closed.ok()) RS_LOG(warn, "{}: close before reopen: {}", what, closed.ToString());
  db->reset();
  rocksdb::DB* raw = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(options, dir, &raw);
  if (s.ok()) {
    db->reset(raw);
    RS_LOG(warn, "{}: reopened {}; taking writes again", what, dir);
    return OkStatus();
  }
  // No room after all (the disk filled up again): serve reads from a read-only open (it writes
  // nothing) until the next write finds room.
  RS_LOG(error, "{}: reopening {} failed ({}); opening it read-only", what, dir, s.ToString());
  rocksdb::Status ro = rocksdb::DB::OpenForReadOnly(options, dir, &raw);
  if (!ro.ok()) {
    RS_LOG(critical, "{}: cannot open {} even read-only ({}); exiting", what, dir, ro.ToString());
    std::abort();
  }
  db->reset(raw);
  return from_rocks(s, StrCat(what, ": reopening after a failed write"));
}

}  // namespace ragserve
