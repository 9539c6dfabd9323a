#include "services/common/logging.h"

#include <memory>

#include "spdlog/sinks/stdout_color_sinks.h"

namespace ragserve {

Status InitLogging(std::string_view service, std::string_view level) {
  const spdlog::level::level_enum lvl = spdlog::level::from_str(std::string(level));
  // from_str maps anything unknown to "off"; only accept "off" when asked for explicitly.
  if (lvl == spdlog::level::off && level != "off") {
    return InvalidArgument(StrCat("unknown log level '", level,
                                  "' (expected trace, debug, info, warn, error or off)"));
  }
  auto logger = spdlog::stderr_color_mt(std::string(service));
  logger->set_pattern("%Y-%m-%dT%H:%M:%S.%eZ %l %n %v", spdlog::pattern_time_type::utc);
  logger->set_level(lvl);
  spdlog::set_default_logger(std::move(logger));
  return OkStatus();
}

}  // namespace ragserve
