// clang-format off
// FUZZ_SOURCES: services/ctxcache/stored_block.cc kernels/cpu/ops.cc kernels/cpu/quant.cc kernels/cpu/attention.cc
// clang-format on
// Fuzz target for the context cache's on-disk KV block format: any bytes must parse into a block
// that passes Validate() and re-serializes to the same bytes, or give DataLoss; never a crash,
// an over-read or an allocation the header merely claims. The first input byte picks whether the
// block's checksum is recomputed first, so the structural checks behind it are reached too.
#include <xxhash.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include "services/ctxcache/stored_block.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ragserve::ctxcache;  // NOLINT: a fuzz target
  if (size < 1 || size > (1 << 20)) return 0;
  const bool fix_checksum = data[0] & 1;
  std::string bytes(reinterpret_cast<const char*>(data) + 1, size - 1);
  if (fix_checksum && bytes.size() >= 8) {
    const uint64_t h = XXH64(bytes.data(), bytes.size() - 8, 0);
    std::memcpy(bytes.data() + bytes.size() - 8, &h, 8);
  }
  for (const char* tag : {"", "key"}) {
    auto b = DeserializeStoredBlock(bytes, tag);
    if (!b.ok()) {
      if (b.status().code() != ragserve::StatusCode::kDataLoss) std::abort();
      continue;
    }
    if (!b->Validate().ok()) std::abort();
    // With the tag known, the block serializes back to exactly the input.
    if (tag[0] != '\0' && SerializeStoredBlock(*b, tag) != bytes) std::abort();
    std::string f(static_cast<size_t>(b->LayerElements()) * sizeof(float), '\0');
    b->LayerToF32(b->layers - 1, true, reinterpret_cast<float*>(f.data()));
  }
  return 0;
}
