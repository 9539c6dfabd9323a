// Structured logging for every service (spdlog): one line per event,
// "2026-11-23T06:35:00.123Z level service message key=value ...".
#pragma once

#include <string>
#include <string_view>

#include "services/common/status.h"
#include "spdlog/spdlog.h"

namespace ragserve {

// Sets up the process-wide logger: `service` tags every line; `level` is one of trace, debug,
// info, warn, error, off. Logs go to stderr. InvalidArgument for an unknown level.
Status InitLogging(std::string_view service, std::string_view level);

}  // namespace ragserve

// RS_LOG(info, "listening on {}:{}", host, port) — fmt-style formatting.
#define RS_LOG(level, ...) ::spdlog::level(__VA_ARGS__)
