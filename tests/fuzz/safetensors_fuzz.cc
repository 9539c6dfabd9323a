// clang-format off
// FUZZ_SOURCES: services/engine/safetensors.cc kernels/cpu/ops.cc kernels/cpu/quant.cc kernels/cpu/attention.cc
// clang-format on
// Fuzz target for the safetensors header parser: any bytes must give a header whose every tensor
// lies inside the file and matches its shape, or an error; never a crash, hang or overread.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "services/engine/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using ragserve::engine::ParseSafetensorsHeader;
  // The whole input is the file; also claim a longer file than the bytes we hold (header only).
  for (uint64_t file_size : {static_cast<uint64_t>(size), static_cast<uint64_t>(size) + 64}) {
    auto h = ParseSafetensorsHeader(data, size, file_size);
    if (!h.ok()) continue;
    if (h->data_offset > file_size) std::abort();
    for (const auto& [name, t] : h->tensors) {
      if (t.end < t.begin || h->data_offset + t.end > file_size) std::abort();
      if (t.end - t.begin !=
          static_cast<uint64_t>(t.numel()) * ragserve::kernels::DTypeSize(t.dtype)) {
        std::abort();
      }
    }
  }
  return 0;
}
