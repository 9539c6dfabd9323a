// StoredBlock serialization (services/ctxcache/stored_block.h) and cache keys (cache_key.h): exact
// round trips, every flipped bit and every truncation detected, hostile headers rejected without
// allocating, f16 storage within rounding, keys that change with every field.
#include "services/ctxcache/stored_block.h"

#include <xxhash.h>

#include <cmath>
#include <cstring>
#include <random>

#include "gtest/gtest.h"
#include "services/ctxcache/cache_key.h"

namespace ragserve::ctxcache {
namespace {

StoredBlock RandomBlock(uint32_t seed, int layers = 2, int kv_heads = 2, int head_dim = 4,
                        int64_t tokens = 3, bool with_ids = true) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd;
  std::vector<std::vector<float>> k(layers), v(layers);
  for (int l = 0; l < layers; ++l) {
    for (int64_t i = 0; i < tokens * kv_heads * head_dim; ++i) {
      k[l].push_back(nd(rng));
      v[l].push_back(nd(rng));
    }
  }
  std::vector<int32_t> pos;
  for (int64_t i = 0; i < tokens; ++i) pos.push_back(static_cast<int32_t>(10 + i));
  auto b = MakeStoredBlock(kv_heads, head_dim, tokens, k, v, "fp0123456789abcd", DType::kF32, pos);
  EXPECT_TRUE(b.ok()) << b.status().ToString();
  if (with_ids) {
    for (int64_t i = 0; i < tokens; ++i) b->token_ids.push_back(static_cast<int32_t>(100 + i));
  }
  return *b;
}

void ExpectSame(const StoredBlock& a, const StoredBlock& b) {
  EXPECT_EQ(a.layers, b.layers);
  EXPECT_EQ(a.kv_heads, b.kv_heads);
  EXPECT_EQ(a.head_dim, b.head_dim);
  EXPECT_EQ(a.tokens, b.tokens);
  EXPECT_EQ(a.dtype, b.dtype);
  EXPECT_EQ(a.fingerprint, b.fingerprint);
  EXPECT_EQ(a.positions, b.positions);
  EXPECT_EQ(a.token_ids, b.token_ids);
  EXPECT_EQ(a.k, b.k);
  EXPECT_EQ(a.v, b.v);
}

TEST(StoredBlockTest, SerializationRoundTripsExactly) {
  for (bool ids : {false, true}) {
    const StoredBlock b = RandomBlock(1, 3, 2, 8, 5, ids);
    const std::string bytes = SerializeStoredBlock(b, "tag-1");
    auto back = DeserializeStoredBlock(bytes, "tag-1");
    ASSERT_TRUE(back.ok()) << back.status().ToString();
    ExpectSame(b, *back);
    EXPECT_TRUE(DeserializeStoredBlock(bytes).ok());  // no expected tag: any tag is accepted
  }
  const StoredBlock h = RandomBlock(2).ConvertTo(DType::kF16);
  auto back = DeserializeStoredBlock(SerializeStoredBlock(h));
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  ExpectSame(h, *back);
}

TEST(StoredBlockTest, EveryFlippedBitAndEveryTruncationIsDataLoss) {
  const std::string bytes = SerializeStoredBlock(RandomBlock(3), "key");
  for (size_t i = 0; i < bytes.size(); ++i) {
    for (int bit : {0, 5}) {
      std::string bad = bytes;
      bad[i] ^= static_cast<char>(1 << bit);
      auto r = DeserializeStoredBlock(bad, "key");
      ASSERT_FALSE(r.ok()) << "flip at byte " << i;
      ASSERT_EQ(r.status().code(), StatusCode::kDataLoss) << r.status().ToString();
    }
  }
  for (size_t n = 0; n < bytes.size(); ++n) {
    auto r = DeserializeStoredBlock(std::string_view(bytes).substr(0, n), "key");
    ASSERT_EQ(r.status().code(), StatusCode::kDataLoss) << "truncated to " << n;
  }
  auto extra = DeserializeStoredBlock(bytes + "x", "key");
  EXPECT_EQ(extra.status().code(), StatusCode::kDataLoss);
}

TEST(StoredBlockTest, ATagMismatchIsReportedAsAnotherKey) {
  const std::string bytes = SerializeStoredBlock(RandomBlock(4), "key-a");
  auto r = DeserializeStoredBlock(bytes, "key-b");
  EXPECT_EQ(r.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(r.status().message().find("another key"), std::string::npos) << r.status().message();
}

// Rewrites a field at `offset` and fixes the checksum, as a writer with a bug (or an attacker)
// would: the structural checks must still reject it.
std::string Forge(std::string bytes, size_t offset, const void* value, size_t n) {
  std::memcpy(bytes.data() + offset, value, n);
  const uint64_t h = XXH64(bytes.data(), bytes.size() - 8, 0);
  std::memcpy(bytes.data() + bytes.size() - 8, &h, 8);
  return bytes;
}

TEST(StoredBlockTest, HostileHeadersWithValidChecksumsAreRejectedByReason) {
  const std::string bytes = SerializeStoredBlock(RandomBlock(5), "key");
  // Offsets: magic 0, version 8, header 12, layers 16, kv_heads 20, head_dim 24, dtype 28,
  // has_ids 29, pad 30, tokens 32.
  const int64_t huge_tokens = int64_t{1} << 40;
  const int32_t big_layers = 1000, neg = -1, version = 2;
  const uint8_t bad_dtype = 7;
  struct Case {
    std::string bytes, reason;
  };
  const std::vector<Case> cases = {
      {Forge(bytes, 32, &huge_tokens, 8), "dims out of range"},
      {Forge(bytes, 20, &neg, 4), "dims out of range"},
      {Forge(bytes, 16, &big_layers, 4), "bytes; the header says"},
      {Forge(bytes, 8, &version, 4), "version 2"},
      {Forge(bytes, 28, &bad_dtype, 1), "bad dtype"},
  };
  for (const Case& c : cases) {
    auto r = DeserializeStoredBlock(c.bytes, "key");
    ASSERT_EQ(r.status().code(), StatusCode::kDataLoss);
    EXPECT_NE(r.status().message().find(c.reason), std::string::npos) << r.status().message();
  }
  // Seeded garbage never crashes and is never accepted.
  std::mt19937 rng(9);
  for (int i = 0; i < 2000; ++i) {
    std::string junk(rng() % 200, '\0');
    for (char& ch : junk) ch = static_cast<char>(rng());
    if (i % 2 == 0 && junk.size() >= 8) std::memcpy(junk.data(), "RSKVBLK1", 8);
    ASSERT_FALSE(DeserializeStoredBlock(junk).ok());
  }
}

TEST(StoredBlockTest, F16StorageHalvesTheBytesWithinRounding) {
  const StoredBlock f = RandomBlock(6, 2, 4, 16, 7);
  const StoredBlock h = f.ConvertTo(DType::kF16);
  EXPECT_EQ(h.dtype, DType::kF16);
  EXPECT_EQ(h.k[0].size() * 2, f.k[0].size());
  std::vector<float> a(f.LayerElements()), b(f.LayerElements());
  for (int l = 0; l < 2; ++l) {
    for (bool is_value : {false, true}) {
      f.LayerToF32(l, is_value, a.data());
      h.LayerToF32(l, is_value, b.data());
      for (size_t i = 0; i < a.size(); ++i) {
        ASSERT_LE(std::fabs(a[i] - b[i]), std::fabs(a[i]) * (1.0f / 1024) + 1e-7f) << i;
      }
    }
  }
  // Widening back gives the f16 values exactly.
  const StoredBlock back = h.ConvertTo(DType::kF32);
  back.LayerToF32(1, true, a.data());
  h.LayerToF32(1, true, b.data());
  EXPECT_EQ(a, b);
}

TEST(StoredBlockTest, ValidateNamesTheBadField) {
  StoredBlock b = RandomBlock(7);
  ASSERT_TRUE(b.Validate().ok());
  StoredBlock e = b;
  e.tokens = 0;
  EXPECT_NE(e.Validate().message().find("empty passage"), std::string::npos);
  e = b;
  e.fingerprint.clear();
  EXPECT_NE(e.Validate().message().find("fingerprint is empty"), std::string::npos);
  e = b;
  e.v[1].pop_back();
  EXPECT_NE(e.Validate().message().find("layer 1"), std::string::npos) << e.Validate().message();
  e = b;
  e.positions.pop_back();
  EXPECT_NE(e.Validate().message().find("positions has 2 entries for 3 tokens"), std::string::npos);
  auto m = MakeStoredBlock(2, 4, 3, {{1.0f}}, {{1.0f}}, "fp");
  EXPECT_EQ(m.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(m.status().message().find("expected tokens*kv_heads*head_dim = 24"), std::string::npos);
}

TEST(CacheKeyTest, EveryFieldChangesTheIdAndHexRoundTrips) {
  auto base = CacheKey::Make("fp1", "prefix", "passage", "settings");
  ASSERT_TRUE(base.ok());
  const KeyId id = base->id();
  EXPECT_EQ(id.Hex().size(), 32u);
  EXPECT_EQ(CacheKey::Make("fp1", "prefix", "passage", "settings")->id(), id);
  for (auto other : {CacheKey::Make("fp2", "prefix", "passage", "settings"),
                     CacheKey::Make("fp1", "prefix2", "passage", "settings"),
                     CacheKey::Make("fp1", "prefix", "passage2", "settings"),
                     CacheKey::Make("fp1", "prefix", "passage", "settings2"),
                     CacheKey::Make("fp1", "", "passage", "settings")}) {
    ASSERT_TRUE(other.ok());
    EXPECT_FALSE(other->id() == id);
  }
  auto parsed = KeyId::FromHex(id.Hex());
  ASSERT_TRUE(parsed.ok());
  EXPECT_EQ(*parsed, id);
  std::string upper = id.Hex();
  for (char& c : upper) c = static_cast<char>(std::toupper(c));
  EXPECT_EQ(*KeyId::FromHex(upper), id);
}

TEST(CacheKeyTest, BadInputIsAClearError) {
  auto empty = CacheKey::Make("fp", "prefix", "", "s");
  EXPECT_EQ(empty.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(empty.status().message().find("passage text is empty"), std::string::npos);
  EXPECT_EQ(CacheKey::Make("", "p", "x", "s").status().code(), StatusCode::kInvalidArgument);
  auto short_hex = KeyId::FromHex("abc");
  EXPECT_EQ(short_hex.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(short_hex.status().message().find("'abc'"), std::string::npos);
  auto bad_digit = KeyId::FromHex(std::string(31, '0') + "g");
  EXPECT_NE(bad_digit.status().message().find("non-hex digit at 31"), std::string::npos)
      << bad_digit.status().message();
}

}  // namespace
}  // namespace ragserve::ctxcache
