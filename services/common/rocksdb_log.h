// RocksDB's info log sent to ours (warnings and errors) instead of a LOG file on the data disk:
// on a full disk the LOG file's writer fails too, and the next line logged to it aborts the
// process (an assertion of Debian's RocksDB build after a failed write; found by tools/chaos,
// C3). Header-only: used by the services that link RocksDB (index store, context cache disk tier).
#pragma once

#include <rocksdb/env.h>

#include <cstdarg>
#include <cstdio>
#include <string>
#include <utility>

#include "services/common/logging.h"

namespace ragserve {

class RocksInfoLog : public rocksdb::Logger {
 public:
  // `what` starts every line ("index store", "ctxcache disk tier").
  explicit RocksInfoLog(std::string what)
      : rocksdb::Logger(rocksdb::InfoLogLevel::WARN_LEVEL), what_(std::move(what)) {}
  using rocksdb::Logger::Logv;
  void Logv(const char* format, va_list ap) override {
    char line[1024];
    std::vsnprintf(line, sizeof(line), format, ap);
    RS_LOG(warn, "{}: rocksdb: {}", what_, line);
  }

 private:
  const std::string what_;
};

}  // namespace ragserve
