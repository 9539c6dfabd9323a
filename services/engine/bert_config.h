// config.json of a BERT-family encoder (Hugging Face BertModel) and the sentence-transformers
// pooling setting (1_Pooling/config.json). Parsing only: no weights, no kernels (fuzzed).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "services/common/status.h"

namespace ragserve::engine {

struct BertConfig {
  int vocab_size = 0;
  int hidden_size = 0;
  int num_layers = 0;
  int num_heads = 0;
  int head_dim = 0;  // hidden_size / num_heads
  int intermediate_size = 0;
  int max_position_embeddings = 0;
  int type_vocab_size = 0;
  double layer_norm_eps = 1e-12;
};

// Parses config.json. Checks: model_type "bert" or absent (RoBERTa-style models, whose positions
// are offset by the padding id, are rejected), hidden_act "gelu" (erf), position embedding type
// "absolute", every size in range (hidden <= 16384, layers <= 256, heads divide
// hidden, vocab <= 2^24, max positions <= 65536, intermediate <= 131072, type vocab 1..1024).
// InvalidArgument naming the bad key. Never throws or crashes.
StatusOr<BertConfig> ParseBertConfig(std::string_view json_text);

enum class Pooling : uint8_t { kMean = 0, kCls = 1 };

// "mean" or "cls" (InvalidArgument otherwise).
StatusOr<Pooling> ParsePoolingName(std::string_view name);
// Parses a sentence-transformers 1_Pooling/config.json: pooling_mode_cls_token or
// pooling_mode_mean_tokens must be the one true mode (max / mean_sqrt_len / weighted / last-token
// pooling are not supported: InvalidArgument).
StatusOr<Pooling> ParsePoolingConfig(std::string_view json_text);

}  // namespace ragserve::engine
