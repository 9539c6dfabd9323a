// StoredBlock: a KV block as the context cache stores it (the K and V of one passage or prefix,
// every layer, in the storage dtype) and its checksummed, versioned binary form. gRPC-free and
// engine-free: the engine's engine::KvBlock (the f32 form attention reads: positions, fingerprint)
// converts field by field (dims = its geometry; k/v bytes = its float vectors), see
// ape_encoder.h's ToStoredBlock / ToEngineBlock.
//
// Binary layout (little-endian; version 1):
//   "RSKVBLK1" magic (8) | u32 version | u32 header_bytes (= all bytes up to the payload)
//   | i32 layers | i32 kv_heads | i32 head_dim | u8 dtype | u8 has_token_ids | u16 0
//   | i64 tokens | u32 fingerprint_len | u32 tag_len | fingerprint | tag
//   | i32 positions[tokens] | i32 token_ids[tokens if has_token_ids]
//   | payload: for each layer, K bytes then V bytes ([tokens, kv_heads, head_dim] of dtype)
//   | u64 xxh64(seed 0) of everything before it.
// The tag is an opaque string the writer binds the block to (the cache stores its key id), so a
// block read back under another key is rejected.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "kernels/cpu/ops.h"
#include "services/common/status.h"

namespace ragserve::ctxcache {

using kernels::DType;

// Upper bounds checked by Validate / Deserialize (a hostile header cannot make us allocate more).
inline constexpr int32_t kMaxLayers = 1024;
inline constexpr int32_t kMaxKvHeads = 1024;
inline constexpr int32_t kMaxHeadDim = 4096;
inline constexpr int64_t kMaxBlockTokens = 1 << 22;
inline constexpr int64_t kMaxBlockBytes = int64_t{1} << 36;  // 64 GiB

struct StoredBlock {
  int32_t layers = 0;
  int32_t kv_heads = 0;
  int32_t head_dim = 0;
  int64_t tokens = 0;
  DType dtype = DType::kF32;       // f32, f16 or bf16 elements in k/v
  std::string fingerprint;         // model fingerprint the block was made with (non-empty)
  std::vector<int32_t> positions;  // [tokens] rotary positions
  std::vector<int32_t> token_ids;  // [tokens] or empty
  // k[layer], v[layer]: [tokens, kv_heads, head_dim] elements of dtype as raw bytes.
  std::vector<std::vector<uint8_t>> k, v;

  // Elements of one layer's K (or V): tokens * kv_heads * head_dim.
  int64_t LayerElements() const { return tokens * kv_heads * head_dim; }
  // Bytes held by k, v, positions, token_ids and fingerprint (what the RAM tier charges).
  int64_t ByteSize() const;
  // OK when dims are in (0, kMax*], tokens > 0, the fingerprint is non-empty, positions has
  // `tokens` entries, token_ids is empty or has `tokens`, and every k/v layer has exactly
  // LayerElements() * DTypeSize(dtype) bytes; InvalidArgument naming the bad field otherwise.
  Status Validate() const;
  // Copies layer `layer` of K (is_value false) or V into out[LayerElements()] as f32.
  void LayerToF32(int layer, bool is_value, float* out) const;
  // The same block with elements converted to `to` (a copy; f32 -> f16/bf16 rounds to nearest).
  StoredBlock ConvertTo(DType to) const;
};

// Builds a block from f32 layers k[layer], v[layer] of tokens*kv_heads*head_dim floats each,
// stored as `dtype`. positions defaults to 0..tokens-1 when empty. Validates the result.
StatusOr<StoredBlock> MakeStoredBlock(int32_t kv_heads, int32_t head_dim, int64_t tokens,
                                      const std::vector<std::vector<float>>& k,
                                      const std::vector<std::vector<float>>& v,
                                      std::string fingerprint, DType dtype = DType::kF32,
                                      std::vector<int32_t> positions = {});

// The binary form above, bound to `tag`. The block must be valid (Validate()).
std::string SerializeStoredBlock(const StoredBlock& block, std::string_view tag = {});
// Parses and verifies a serialized block: magic, version, header size, dims within bounds, exact
// total length, checksum, and (when expected_tag is non-empty) tag == expected_tag. Any failure is
// DataLoss with the reason (never a crash or an over-read, whatever the bytes).
StatusOr<StoredBlock> DeserializeStoredBlock(std::string_view bytes,
                                             std::string_view expected_tag = {});

}  // namespace ragserve::ctxcache
