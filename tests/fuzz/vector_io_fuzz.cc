// FUZZ_SOURCES: index/vector_io.cc services/common/status.cc
// Fuzzes the vector file readers (fvecs, bvecs, ivecs, npy) and the JSONL line parser: any
// input must yield a value or an error Status, never a crash, a hang or an allocation larger
// than the input implies. The first byte selects the parser.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "index/vector_io.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string_view bytes(reinterpret_cast<const char*>(data) + 1, size - 1);
  using namespace ragserve::index;  // NOLINT
  switch (data[0] % 5) {
    case 0: {
      auto m = ParseFvecs(bytes, "fuzz.fvecs");
      if (m.ok() && m->values.size() != static_cast<size_t>(m->n) * m->dim) __builtin_trap();
      break;
    }
    case 1: {
      auto m = ParseBvecs(bytes, "fuzz.bvecs");
      if (m.ok() && m->values.size() != static_cast<size_t>(m->n) * m->dim) __builtin_trap();
      break;
    }
    case 2: {
      auto m = ParseIvecs(bytes, "fuzz.ivecs");
      if (m.ok() && m->values.size() != static_cast<size_t>(m->n) * m->dim) __builtin_trap();
      break;
    }
    case 3: {
      auto m = ParseNpy(bytes, "fuzz.npy");
      if (m.ok() && m->values.size() != static_cast<size_t>(m->n) * m->dim) __builtin_trap();
      break;
    }
    default: {
      auto d = ParseJsonlLine(bytes, 1);
      if (d.ok() && d->id.empty()) __builtin_trap();
      break;
    }
  }
  return 0;
}
