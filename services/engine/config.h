// Model configuration: the subset of a Hugging Face config.json the runtime needs, for
// model_type llama, mistral and qwen2.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "services/common/status.h"

namespace ragserve::engine {

enum class RopeScaling { kNone, kLinear, kLlama3 };

struct ModelConfig {
  std::string model_type;  // "llama" | "mistral" | "qwen2"
  int vocab_size = 0;
  int hidden_size = 0;
  int intermediate_size = 0;
  int num_layers = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;  // config "head_dim" or hidden_size / num_heads
  int max_position_embeddings = 0;
  float rms_norm_eps = 1e-6f;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling = RopeScaling::kNone;
  double rope_factor = 1.0;               // linear and llama3
  double rope_low_freq_factor = 1.0;      // llama3
  double rope_high_freq_factor = 4.0;     // llama3
  int rope_original_max_position = 8192;  // llama3
  // Per-frequency divisors [head_dim / 2] applied after the scaling above (a GGUF file's
  // rope_freqs.weight); empty: none.
  std::vector<float> rope_freq_factors;
  bool tie_word_embeddings = false;
  bool qkv_bias = false;   // qwen2 always; llama/mistral when attention_bias
  bool o_bias = false;     // llama/mistral when attention_bias
  int sliding_window = 0;  // mistral: keys older than this many positions are not attended; 0 = off
  std::optional<int32_t> bos_token_id;
  std::vector<int32_t> eos_token_ids;
  std::string canonical_json;  // the parsed config.json dumped with sorted keys (for fingerprints)

  // Rotary inverse frequencies [head_dim / 2] with the configured scaling applied.
  std::vector<float> RopeInvFreq() const;
};

// Parses config.json text. InvalidArgument naming the field for a missing/ill-typed/out-of-range
// value, an unknown model_type, an unsupported hidden_act or rope_scaling type.
StatusOr<ModelConfig> ParseModelConfig(const std::string& json_text);
// Reads and parses <dir>/config.json (NotFound when the file is missing).
StatusOr<ModelConfig> LoadModelConfig(const std::string& model_dir);

}  // namespace ragserve::engine
