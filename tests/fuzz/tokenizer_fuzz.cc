// FUZZ_SOURCES: services/engine/tokenizer.cc services/engine/unicode.cc
// Fuzz target for the tokenizer.json loader: any bytes must load into a tokenizer or give an error;
// never a crash, hang or overread. A loaded tokenizer must then encode text (fixed hard strings and
// the input itself) to ids inside [0, vocab_size), and its streaming decoder must reproduce Decode
// byte for byte.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "services/engine/tokenizer.h"

namespace {

using ragserve::engine::Tokenizer;

void CheckIds(const Tokenizer& t, const std::vector<int32_t>& ids) {
  for (int32_t id : ids) {
    if (id < 0 || id >= t.vocab_size()) std::abort();
  }
  Tokenizer::StreamDecoder dec(t);
  std::string streamed;
  for (int32_t id : ids) streamed += dec.Push(id);
  streamed += dec.Flush();
  if (streamed != t.Decode(ids)) std::abort();
  (void)t.Decode(ids, /*skip_special=*/false);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > (1 << 16)) return 0;  // bigger documents add time, not coverage
  const std::string_view doc(reinterpret_cast<const char*>(data), size);
  auto tok = Tokenizer::FromJson(doc);
  if (!tok.ok()) {
    if (tok.status().message().empty()) std::abort();  // errors must say what was wrong
    return 0;
  }
  const Tokenizer& t = **tok;
  static const char* kTexts[] = {"Hello world, it's 2026!", "  a\n\n b\t\tc  ",
                                 "\xE4\xBD\xA0\xE5\xA5\xBD \xF0\x9F\x8E\x89",
                                 "e\xCC\x81 \xFF\xC3 <s></s><|endoftext|>", "1234567 don't"};
  for (const char* text : kTexts) {
    for (bool special : {false, true}) CheckIds(t, t.Encode(text, /*add_bos=*/special, special));
  }
  CheckIds(t, t.Encode(doc.substr(0, 4096), false, true));
  // Arbitrary ids, including out-of-range ones, decode without crashing.
  std::vector<int32_t> ids;
  for (size_t i = 0; i + 4 <= size && ids.size() < 64; i += 4) {
    ids.push_back(static_cast<int32_t>(data[i] | (data[i + 1] << 8) | (data[i + 2] << 16) |
                                       (static_cast<uint32_t>(data[i + 3]) << 24)) %
                  (t.vocab_size() + 2));
  }
  (void)t.Decode(ids);
  return 0;
}
