#include "services/ctxcache/cache_key.h"

#include <xxhash.h>

#include <cstring>

namespace ragserve::ctxcache {

uint64_t HashBytes(std::string_view bytes) { return XXH3_64bits(bytes.data(), bytes.size()); }

std::string KeyId::Hex() const {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out(32, '0');
  for (size_t i = 0; i < bytes.size(); ++i) {
    out[2 * i] = kHex[bytes[i] >> 4];
    out[2 * i + 1] = kHex[bytes[i] & 15];
  }
  return out;
}

StatusOr<KeyId> KeyId::FromHex(std::string_view hex) {
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  RS_CHECK_ARG(hex.size() == 32, "cache key '", hex, "' must be 32 hex digits, got ", hex.size(),
               " characters");
  KeyId id;
  for (size_t i = 0; i < 16; ++i) {
    const int hi = nibble(hex[2 * i]), lo = nibble(hex[2 * i + 1]);
    RS_CHECK_ARG(hi >= 0 && lo >= 0, "cache key '", hex, "' has a non-hex digit at ",
                 hi < 0 ? 2 * i : 2 * i + 1);
    id.bytes[i] = static_cast<uint8_t>(hi * 16 + lo);
  }
  return id;
}

size_t KeyIdHash::operator()(const KeyId& k) const {
  uint64_t h;
  std::memcpy(&h, k.bytes.data(), sizeof(h));  // the id is already a hash
  return static_cast<size_t>(h);
}

StatusOr<CacheKey> CacheKey::Make(std::string_view fingerprint, std::string_view prefix,
                                  std::string_view passage, std::string_view settings) {
  RS_CHECK_ARG(!fingerprint.empty(), "cache key: the model fingerprint is empty");
  RS_CHECK_ARG(!passage.empty(), "cache key: the passage text is empty");
  CacheKey k;
  k.fingerprint = std::string(fingerprint);
  k.prefix_hash = HashBytes(prefix);
  k.content_hash = HashBytes(passage);
  k.settings_hash = HashBytes(settings);
  return k;
}

KeyId CacheKey::id() const {
  std::string buf;
  const uint64_t n = fingerprint.size();
  for (uint64_t v : {n}) buf.append(reinterpret_cast<const char*>(&v), 8);
  buf.append(fingerprint);
  for (uint64_t v : {prefix_hash, content_hash, settings_hash}) {
    buf.append(reinterpret_cast<const char*>(&v), 8);
  }
  const XXH128_hash_t h = XXH3_128bits(buf.data(), buf.size());
  KeyId id;
  XXH128_canonical_t c;
  XXH128_canonicalFromHash(&c, h);
  std::memcpy(id.bytes.data(), c.digest, 16);
  return id;
}

}  // namespace ragserve::ctxcache
