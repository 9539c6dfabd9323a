// A GGUF file as a whole model: hyper-parameters and the tokenizer from its metadata (the weights
// are ModelWeights::Load's, weights.h). Architectures: general.architecture llama, mistral, qwen2.
//
// How to: every loader takes a model path that is either an HF directory or a .gguf file:
//   auto weights = ModelWeights::Load("model.gguf");          // or a directory
//   auto tok = LoadModelTokenizer("model.gguf");              // <dir>/tokenizer.json for a dir
//
// Metadata -> ModelConfig: <arch>.block_count, .embedding_length, .feed_forward_length,
// .attention.head_count, .attention.head_count_kv, .attention.key_length (head_dim),
// .attention.layer_norm_rms_epsilon, .rope.freq_base, .rope.scaling.type/.factor (linear),
// .context_length, .vocab_size (else the rows of token_embd); tie_word_embeddings when the file
// has no output.weight; q/k/v biases when it has blk.0.attn_q.bias (qwen2 always);
// bos/eos from tokenizer.ggml.bos_token_id / eos_token_id (bos only when add_bos_token, which
// defaults to true for the "llama" tokenizer model and false for "gpt2"). A rope_freqs.weight
// tensor (llama3-style scaling written by llama.cpp) divides the rotary frequencies.
//
// Tokenizer (tokenizer.ggml.*): model "gpt2" = byte-level BPE from .tokens and .merges, with the
// pre-tokenizer regex that .pre names (default/gpt-2, llama-bpe/llama3, qwen2); model "llama" =
// SentencePiece-style BPE from .tokens and .scores (merges derived from the scores: the pair
// whose merged token scores highest merges first), byte fallback through <0xHH> tokens, "▁" for
// spaces. .token_type: 3 (control) tokens become special added tokens, 4 (user-defined) plain
// added tokens. The tokenizer is built as a tokenizer.json document and loaded by tokenizer.h.
// tokenizer.chat_template, when present, is the model's chat template (GgufChatTemplate,
// tokenizer_config.h).
#pragma once

#include <memory>
#include <string>

#include "services/common/status.h"
#include "services/engine/config.h"
#include "services/engine/gguf.h"
#include "services/engine/tokenizer.h"

namespace ragserve::engine {

// The model configuration a GGUF header describes. InvalidArgument naming the key for a missing
// or ill-typed value and naming the architecture when it is not llama / mistral / qwen2.
StatusOr<ModelConfig> GgufModelConfig(const GgufHeader& h);

// The tokenizer.json document equivalent to the header's tokenizer.ggml.* metadata.
// InvalidArgument naming the key for missing or inconsistent arrays and for an unsupported
// tokenizer model or pre-tokenizer.
StatusOr<std::string> GgufTokenizerJson(const GgufHeader& h);

// The tokenizer of a model path: <dir>/tokenizer.json for a directory, the embedded vocabulary
// for a GGUF file.
StatusOr<std::unique_ptr<Tokenizer>> LoadModelTokenizer(const std::string& model_path);

// Whether `path` names a GGUF model (a regular file with the GGUF magic, or any path ending in
// ".gguf" so that a bad file gets the GGUF loader's error).
bool IsGgufModelPath(const std::string& path);

}  // namespace ragserve::engine
