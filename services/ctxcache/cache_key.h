// Keys of the context cache: (model fingerprint, prefix hash, passage content hash, encoding
// settings hash) -> a 128-bit id, written as 32 lowercase hex digits on the wire (CacheKey.hex).
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

#include "services/common/status.h"

namespace ragserve::ctxcache {

// 64-bit content hash (XXH3) used for prefix text, passage text and serialized settings.
uint64_t HashBytes(std::string_view bytes);

// The 128-bit id of a cache entry.
struct KeyId {
  std::array<uint8_t, 16> bytes{};

  // 32 lowercase hex digits.
  std::string Hex() const;
  // Parses 32 hex digits (either case); InvalidArgument naming the value otherwise.
  static StatusOr<KeyId> FromHex(std::string_view hex);
  std::string_view view() const {
    return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
  }
  bool operator==(const KeyId& o) const { return bytes == o.bytes; }
};

struct KeyIdHash {
  size_t operator()(const KeyId& k) const;
};

struct CacheKey {
  std::string fingerprint;     // model fingerprint (hex); blocks made by another model never match
  uint64_t prefix_hash = 0;    // HashBytes(prefix text or its token ids)
  uint64_t content_hash = 0;   // HashBytes(passage text)
  uint64_t settings_hash = 0;  // HashBytes(serialized encoding settings)

  // Validates the texts (a non-empty fingerprint and passage; the prefix may be empty) and hashes
  // them; InvalidArgument naming what was empty.
  static StatusOr<CacheKey> Make(std::string_view fingerprint, std::string_view prefix,
                                 std::string_view passage, std::string_view settings);
  // Deterministic id of all four fields (XXH3-128 of a length-prefixed encoding).
  KeyId id() const;
};

}  // namespace ragserve::ctxcache
