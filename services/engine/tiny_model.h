// A random-weight model in the Hugging Face layout, made from a seed (no downloads): config.json,
// model.safetensors and (optionally) a byte-level BPE tokenizer.json trained on a text corpus.
// tools/make-tiny-model is the command-line front end; tests and benchmarks call it in-process.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/cpu/ops.h"
#include "services/common/status.h"

namespace ragserve::engine {

struct TinyModelOptions {
  std::string model_type = "llama";  // llama | mistral | qwen2
  int num_layers = 4;
  int hidden_size = 256;
  int num_heads = 8;
  int num_kv_heads = 2;
  int head_dim = 0;  // 0: hidden_size / num_heads (written to config.json only when different)
  int intermediate_size = 768;
  int vocab_size = 1024;
  int max_position_embeddings = 4096;
  double rope_theta = 10000.0;
  std::string rope_scaling = "none";     // none | linear | llama3
  double rope_factor = 4.0;              // linear and llama3
  int rope_original_max_position = 512;  // llama3: original_max_position_embeddings
  double rms_norm_eps = 1e-5;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // llama/mistral q/k/v/o biases (qwen2 always has q/k/v biases)
  int sliding_window = 0;       // mistral; 0 = none
  kernels::DType dtype = kernels::DType::kF32;
  uint64_t seed = 1;
  // Special tokens get ids 0..n-1; the first is BOS, the second EOS.
  std::vector<std::string> special_tokens = {"<|begin_of_text|>", "<|end_of_text|>"};
};

// The "text" field of every line of a JSONL corpus. NotFound / InvalidArgument (naming the line).
StatusOr<std::vector<std::string>> ReadCorpusTexts(const std::string& jsonl_path);

// Writes <out_dir>/config.json and model.safetensors (creating out_dir), and tokenizer.json when
// `corpus_texts` is non-empty (trained with TrainByteLevelBpe to options.vocab_size ids; the model
// vocab stays options.vocab_size even if the corpus runs out of merges first). Weights are
// deterministic in (options, seed): uniform with std 1/sqrt(fan_in) for linears, 1 for the
// embedding, 1 +- 0.2 for norms, 0.1 std for biases. InvalidArgument for inconsistent sizes.
Status WriteTinyModel(const TinyModelOptions& options, const std::vector<std::string>& corpus_texts,
                      const std::string& out_dir);

// Parameter count the options describe (embedding, layers, norms, LM head unless tied).
int64_t TinyModelParams(const TinyModelOptions& options);

}  // namespace ragserve::engine
