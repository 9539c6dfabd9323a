// FUZZ_SOURCES: services/engine/bert_config.cc services/engine/wordpiece.cc
// Fuzz target for the BERT encoder's text inputs: config.json, 1_Pooling/config.json and the
// WordPiece tokenizer.json (the first byte picks one), and WordPiece encoding of arbitrary text.
// Any bytes give a valid result or an error; never a crash or an exception. A parsed config has
// consistent sizes; an encoded text has [CLS] first, [SEP] last, at most max_len ids, every id in
// the vocabulary.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "services/engine/bert_config.h"
#include "services/engine/wordpiece.h"

namespace {

using ragserve::engine::WordPieceTokenizer;

// A fixed valid tokenizer to feed arbitrary text through.
const WordPieceTokenizer& FixedTokenizer() {
  static const auto* t = [] {
    auto r = WordPieceTokenizer::FromJson(R"({"normalizer": {"type": "BertNormalizer"},
      "pre_tokenizer": {"type": "BertPreTokenizer"},
      "model": {"type": "WordPiece", "unk_token": "[UNK]", "max_input_chars_per_word": 20,
                "vocab": {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "a": 4, "##a": 5,
                          "ab": 6, "##b": 7, "東": 8, "!": 9, "e": 10, "##e": 11}}})");
    if (!r.ok()) std::abort();
    return std::move(r).value().release();
  }();
  return *t;
}

void CheckIds(const WordPieceTokenizer& t, std::string_view text, int max_len) {
  const auto ids = t.Encode(text, max_len);
  if (ids.size() < 2 || ids.size() > static_cast<size_t>(max_len) || ids.front() != t.cls_id() ||
      ids.back() != t.sep_id()) {
    std::abort();
  }
  for (int32_t id : ids) {
    if (id < 0 || id >= t.id_limit()) std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string_view text(reinterpret_cast<const char*>(data) + 1, size - 1);
  switch (data[0] % 4) {
    case 0: {
      auto c = ragserve::engine::ParseBertConfig(text);
      if (c.ok() &&
          (c->num_heads < 1 || c->head_dim * c->num_heads != c->hidden_size || c->vocab_size < 1 ||
           c->num_layers < 1 || c->max_position_embeddings < 2 || !(c->layer_norm_eps > 0))) {
        std::abort();
      }
      break;
    }
    case 1:
      (void)ragserve::engine::ParsePoolingConfig(text);
      break;
    case 2: {
      auto t = WordPieceTokenizer::FromJson(text);
      if (t.ok()) {
        CheckIds(**t, "ab aab e!東 unknown", 6);
        CheckIds(**t, text, 64);
      }
      break;
    }
    default:
      CheckIds(FixedTokenizer(), text, 2 + static_cast<int>(size % 40));
      break;
  }
  return 0;
}
