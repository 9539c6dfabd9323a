// Checkpoint loading: a Hugging Face model directory (config.json + model.safetensors or a sharded
// model.safetensors.index.json) or a GGUF file (gguf_model.h), memory-mapped, validated against
// the config, fingerprinted.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "kernels/cpu/ops.h"
#include "services/engine/config.h"
#include "services/engine/gguf.h"
#include "services/engine/safetensors.h"

namespace ragserve::engine {

using kernels::WeightView;

struct LayerWeights {
  WeightView input_norm;              // [1, hidden]
  WeightView q, k, v, o;              // [heads*hd, hidden], [kv*hd, hidden] x2, [hidden, heads*hd]
  WeightView q_bias, k_bias, v_bias;  // [1, ...] when config.qkv_bias
  WeightView o_bias;                  // [1, hidden] when config.o_bias
  WeightView post_norm;               // [1, hidden]
  WeightView gate, up, down;          // [inter, hidden] x2, [hidden, inter]
};

struct WeightsLoadOptions {
  // What quantized GGUF tensors (Q8_0, Q4_0, Q4_K, Q6_K) are decoded into at load: f32, bf16 or
  // f16. F32/F16/BF16 tensors keep their dtype (and stay memory-mapped unless their rows must be
  // reordered).
  kernels::DType dequantize_to = kernels::DType::kF32;
};

// The weights of one model: views into memory-mapped files (kept alive by this object).
// Immutable after load; safe to share between threads.
class ModelWeights {
 public:
  // Loads <dir>/config.json and the safetensors file(s), or a GGUF file when `model_path` is one
  // (IsGgufModelPath). Errors: NotFound (missing files), InvalidArgument naming the tensor
  // (missing, unexpected, wrong shape, unsupported dtype or GGUF tensor type; mixed dtypes are
  // fine) or the GGUF key / architecture, DataLoss (truncated file).
  static StatusOr<std::unique_ptr<ModelWeights>> Load(const std::string& model_path,
                                                      const WeightsLoadOptions& options = {});

  const ModelConfig& config() const { return config_; }
  const WeightView& embed() const { return embed_; }      // [vocab, hidden]
  const WeightView& lm_head() const { return lm_head_; }  // [vocab, hidden] (embed when tied)
  const WeightView& final_norm() const { return final_norm_; }
  const std::vector<LayerWeights>& layers() const { return layers_; }
  // Dtype of the largest matrices (q_proj of layer 0).
  kernels::DType dtype() const { return layers_.front().q.dtype; }
  // xxh64 of the canonical config.json dump and the sorted tensor headers, 16 lowercase hex chars.
  const std::string& fingerprint() const { return fingerprint_; }
  // Bytes of weights a decode step reads for one token (every matrix + norms, one embedding row).
  int64_t BytesReadPerToken() const;
  // Total parameter count.
  int64_t num_params() const { return num_params_; }

 private:
  ModelWeights() = default;
  static StatusOr<std::unique_ptr<ModelWeights>> LoadSafetensors(const std::string& model_dir);
  // gguf_weights.cc: q/k rows are put back from llama.cpp's rotary order into the HF order the
  // forward pass expects; quantized tensors are decoded into owned_.
  static StatusOr<std::unique_ptr<ModelWeights>> LoadGguf(const std::string& path,
                                                          const WeightsLoadOptions& options);
  ModelConfig config_;
  std::vector<SafetensorsFile> files_;
  std::unique_ptr<GgufFile> gguf_;
  std::vector<std::vector<uint8_t>> owned_;  // decoded / reordered GGUF tensors
  WeightView embed_, lm_head_, final_norm_;
  std::vector<LayerWeights> layers_;
  std::string fingerprint_;
  int64_t num_params_ = 0;
};

// Fingerprint of a config and a set of tensor headers (name, dtype, shape), as ModelWeights uses.
std::string ComputeFingerprint(const ModelConfig& config,
                               const std::vector<const TensorInfo*>& tensors);

}  // namespace ragserve::engine
