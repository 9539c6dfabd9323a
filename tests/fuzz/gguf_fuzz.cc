// clang-format off
// FUZZ_SOURCES: services/engine/gguf.cc services/engine/safetensors.cc kernels/cpu/ops.cc kernels/cpu/attention.cc
// clang-format on
// Fuzz target for the GGUF header parser: any bytes must give a header whose every tensor lies
// inside the file with the byte size its type and dims imply, or an error; never a crash, hang,
// overread or an allocation the input's size does not bound.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "services/engine/gguf.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ragserve::engine;
  auto h = ParseGgufHeader(data, size);
  if (!h.ok()) return 0;
  if (h->alignment == 0 || (h->alignment & (h->alignment - 1)) != 0) std::abort();
  for (const GgufTensorInfo& t : h->tensors) {
    const GgmlTypeInfo* ti = FindGgmlType(t.type);
    if (ti == nullptr || t.ne.empty() || t.ne.size() > 4) std::abort();
    if (t.offset % h->alignment != 0) std::abort();
    if (h->data_offset > size || t.offset > size - h->data_offset ||
        t.bytes > size - h->data_offset - t.offset) {
      std::abort();
    }
    if (static_cast<uint64_t>(t.numel) / ti->block * ti->block_bytes != t.bytes) std::abort();
    if (h->FindTensor(t.name) != &t) std::abort();
  }
  // Touch every value the header points into (ASan catches a view outside the input).
  uint64_t sum = 0;
  for (const auto& [key, v] : h->metadata) {
    for (char c : v.str) sum += static_cast<uint8_t>(c);
    for (std::string_view s : v.strings) sum += s.empty() ? 0 : static_cast<uint8_t>(s.back());
    for (uint64_t k = 0; k < v.count && v.raw != nullptr; ++k) sum += v.NumberAt(k) > 0 ? 1 : 0;
  }
  return sum == 0xFFFFFFFFFFFFull ? 1 : 0;
}
