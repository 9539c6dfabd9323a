// clang-format off
// FUZZ_SOURCES: services/engine/gguf.cc services/engine/safetensors.cc kernels/cpu/ops.cc kernels/cpu/quant.cc kernels/cpu/attention.cc services/engine/gguf_config.cc services/engine/config.cc services/engine/gguf_tokenizer.cc services/engine/tokenizer.cc services/engine/unicode.cc
// clang-format on
// Fuzz target for the GGUF header parser: any bytes must give a header whose every tensor lies
// inside the file with the byte size its type and dims imply, or an error; never a crash, hang,
// overread or an allocation the input's size does not bound. A parsed header then goes through
// the metadata interpretation (hyper-parameters, the embedded tokenizer, which must encode).
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "services/engine/gguf.h"
#include "services/engine/gguf_model.h"

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
  auto config = GgufModelConfig(*h);
  if (config.ok() && (config->hidden_size < 1 || config->num_kv_heads < 1 ||
                      config->num_heads % config->num_kv_heads != 0)) {
    std::abort();
  }
  auto doc = GgufTokenizerJson(*h);
  if (doc.ok()) {
    auto tok = Tokenizer::FromJson(*doc);
    if (tok.ok()) {
      for (const char* text : {"", "Hello world", " a  b\n", "\xE2\x96\x81x \xFF"}) {
        for (int32_t id : (*tok)->Encode(text, true, true)) {
          if (id < 0 || id >= (*tok)->vocab_size()) std::abort();
        }
      }
    }
  }
  return sum == 0xFFFFFFFFFFFFull ? 1 : 0;
}
