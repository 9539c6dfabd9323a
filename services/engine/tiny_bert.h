// Random-weight BERT encoder checkpoints for tests and benches (the encoder counterpart of
// tiny_model.h): config.json, model.safetensors (f32), a WordPiece tokenizer.json and optionally
// 1_Pooling/config.json, loadable by BertEncoder::Load.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "services/common/status.h"

namespace ragserve::engine {

struct TinyBertOptions {
  int hidden_size = 32;
  int num_layers = 2;
  int num_heads = 4;
  int intermediate_size = 64;
  int max_position_embeddings = 64;
  uint64_t seed = 1;
  // "" (no 1_Pooling/config.json), "mean" or "cls".
  std::string pooling_file;
  // Whole words of the vocabulary (lowercase); every ASCII letter and digit is added alone and as
  // a "##" continuation, plus [PAD] [UNK] [CLS] [SEP] [MASK]. vocab_size = the token count.
  std::vector<std::string> words = {"the", "a", "of", "river", "bridge", "island", "light"};
};

// Writes the checkpoint into `dir` (created if missing).
Status WriteTinyBert(const TinyBertOptions& o, const std::string& dir);

}  // namespace ragserve::engine
