#pragma once

// Typed field readers for Hugging Face config.json files (decoder and BERT checkpoints): a field
// that is missing takes its default (or is an error when required), one of the wrong type or out
// of range is INVALID_ARGUMENT naming the field, the range and the value.

#include <cstdint>

#include "nlohmann/json.hpp"
#include "services/common/status.h"

namespace ragserve::engine {

// An integer field in [min_value, max_value]. Sizes are capped well above any real checkpoint by
// the callers, so that a hostile config cannot make a loader allocate tables of absurd size
// before the weights are checked.
inline StatusOr<int> GetConfigInt(const nlohmann::json& j, const char* key, bool required, int def,
                                  int64_t min_value, int64_t max_value = int64_t{1} << 30) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    if (required) return InvalidArgument(StrCat("config.json: missing \"", key, "\""));
    return def;
  }
  if (!it->is_number_integer()) {
    return InvalidArgument(
        StrCat("config.json: \"", key, "\" must be an integer, got ", it->dump()));
  }
  // An unsigned value above INT64_MAX must not wrap to a negative one.
  const int64_t v = it->is_number_unsigned() && it->get<uint64_t>() > uint64_t{INT64_MAX}
                        ? INT64_MAX
                        : it->get<int64_t>();
  if (v < min_value || v > max_value) {
    return InvalidArgument(StrCat("config.json: \"", key, "\" out of range [", min_value, ", ",
                                  max_value, "]: ", it->dump()));
  }
  return static_cast<int>(v);
}

}  // namespace ragserve::engine
