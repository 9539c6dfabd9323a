// BERT-family text encoders (bge / e5 / MiniLM style) from a Hugging Face checkpoint directory,
// run on the CPU with the kernels/cpu ops, in batches.
//
// A directory holds config.json (BertModel, bert_config.h), model.safetensors (the BertModel tensor
// names, with or without a "bert." prefix; f32, f16 or bf16), tokenizer.json (WordPiece,
// wordpiece.h) and optionally a sentence-transformers 1_Pooling/config.json.
// Forward: word + absolute position + token type 0 embeddings -> LayerNorm; per layer
// bidirectional multi-head attention -> dense -> residual -> LayerNorm (post-LN), dense -> GELU
// (erf) -> dense -> residual -> LayerNorm. Then CLS or mean pooling over the sequence ([CLS] and
// [SEP] included, as sentence-transformers does) and L2 normalisation.
// Each text is one sequence of its own (no padding), so the batch size does not change a text's
// embedding beyond float reordering.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "kernels/cpu/ops.h"
#include "services/common/status.h"
#include "services/engine/bert_config.h"
#include "services/engine/wordpiece.h"

namespace ragserve::engine {

struct BertEncoderOptions {
  // Overrides the pooling of 1_Pooling/config.json; without either the encoder mean-pools.
  std::optional<Pooling> pooling;
  // Longest sequence in tokens, [CLS] and [SEP] included (0: the smaller of
  // max_position_embeddings and the tokenizer's truncation max_length; larger values are capped
  // to max_position_embeddings). Longer texts are truncated.
  int max_length = 0;
  // Tokens per forward pass (a batch of texts is cut into passes of at most this many tokens;
  // a single longer text still runs alone).
  int batch_tokens = 4096;
  // The CPU op backend (nullptr: kernels::FastOps()). Must be a host-memory backend.
  const kernels::Ops* ops = nullptr;
};

class BertEncoder {
 public:
  // Loads `dir`. Errors: NotFound for a missing file; InvalidArgument naming the file and what is
  // wrong (config out of range, a tensor missing or of the wrong shape, a tokenizer id beyond
  // vocab_size, an unsupported pooling); DataLoss for a truncated safetensors file. Never crashes
  // on a malformed checkpoint: every size is checked before anything is allocated or read.
  static StatusOr<std::unique_ptr<BertEncoder>> Load(const std::string& dir,
                                                     const BertEncoderOptions& opts = {});
  ~BertEncoder();

  // Embedding dimension (= hidden_size).
  int dim() const { return config_.hidden_size; }
  Pooling pooling() const { return pooling_; }
  int max_length() const { return max_length_; }
  const BertConfig& config() const { return config_; }
  const WordPieceTokenizer& tokenizer() const { return *tokenizer_; }

  // Token ids of one text as the encoder feeds them (truncated to max_length()).
  std::vector<int32_t> Tokenize(const std::string& text) const;
  // Embeds texts.size() texts into out[texts.size() * dim()], each L2-normalised. Thread-safe.
  Status Encode(const std::vector<std::string>& texts, float* out) const;
  // The same from token ids: every sequence has 1..max_length() ids, each in [0, vocab_size)
  // (InvalidArgument otherwise).
  Status EncodeIds(const std::vector<std::vector<int32_t>>& seqs, float* out) const;

 private:
  struct Weights;
  BertEncoder() = default;
  // Last hidden states of the sequences, concatenated: [sum of lengths, hidden].
  void Forward(const std::vector<const std::vector<int32_t>*>& seqs, std::vector<float>* x) const;

  BertConfig config_;
  Pooling pooling_ = Pooling::kMean;
  int max_length_ = 0;
  int batch_tokens_ = 4096;
  const kernels::Ops* ops_ = nullptr;
  std::unique_ptr<WordPieceTokenizer> tokenizer_;
  std::unique_ptr<Weights> weights_;
};

}  // namespace ragserve::engine
