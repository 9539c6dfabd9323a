// FUZZ_SOURCES: services/engine/config.cc
// Fuzz target for config.json parsing: any bytes give a config whose sizes the runtime relies on
// are consistent, or an error; never a crash or an exception.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "services/engine/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto c =
      ragserve::engine::ParseModelConfig(std::string(reinterpret_cast<const char*>(data), size));
  if (!c.ok()) return 0;
  if (c->num_heads < 1 || c->num_kv_heads < 1 || c->num_heads % c->num_kv_heads != 0 ||
      c->head_dim < 2 || c->head_dim % 2 != 0 || c->vocab_size < 1 || c->num_layers < 1) {
    std::abort();
  }
  if (c->RopeInvFreq().size() != static_cast<size_t>(c->head_dim / 2)) std::abort();
  return 0;
}
