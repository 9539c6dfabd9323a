// Checkpoint loading: a Hugging Face model directory (config.json + model.safetensors or a sharded
// model.safetensors.index.json) or a GGUF file (gguf_model.h), memory-mapped, validated against
// the config, fingerprinted.
#pragma once

#include <memory>
#include <optional>
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
  // The dtype of the weight matrices (embedding, LM head, every layer's projections) after load.
  // Unset (the default): as stored. GGUF block-quantized tensors (Q8_0, Q4_0, Q4_K, Q6_K) then
  // stay in their blocks, memory-mapped (q/k rows reordered into a copy), and FastOps runs its
  // integer kernels on them (kernels/cpu/quant.h); Q5_0 blocks are rewritten exactly as Q8_0.
  // F32 / F16 / BF16: quantized GGUF matrices are dequantized to it at load (bit-exact decode,
  // then rounded), and f32/f16/bf16 matrices (safetensors or GGUF) converted to it.
  // Q8_0 / Q4_0 / Q4_K / Q6_K: f32/f16/bf16 matrices are quantized to it at load with
  // kernels::QuantizeRef (MatrixDType: the LM head of a 4-bit format is Q6_K; a matrix whose
  // columns are not whole k-quant blocks becomes Q8_0; one that is not whole 32-value blocks is
  // InvalidArgument naming the tensor); GGUF tensors that are already quantized keep their format.
  // Vectors (norms, biases) stay as stored (f32 when a GGUF file stores one quantized). The
  // fingerprint covers the dtypes after load, so KV made with other weights is never mixed in.
  std::optional<kernels::DType> weights_dtype;
};

// Which weight matrix is converted: the LM head (or the embedding tied to it, which serves as
// the LM head) is the one whose quantization error shows most in the output.
enum class MatrixRole { kLayer, kOutput };

// The dtype a weight matrix of `cols` columns is stored in when `want` is asked: `want` when the
// columns are whole blocks of it, except that the LM head (kOutput) asked as a 4-bit format (Q4_0,
// Q4_K) is stored as Q6_K, as llama.cpp's quantizer does (the shipped reader's greedy agreement
// with f32 at q4_0: 59% with a Q4_0 head, ~85% with a Q6_K one). A k-quant (Q4_K, Q6_K:
// 256-value blocks) asked for a matrix that is whole 32-value blocks gives Q8_0 instead: at least
// the precision asked for, as llama.cpp's quantizer falls back for such tensors (the shipped
// reader's 704-wide down_proj). Otherwise `want`, which the loader then refuses, naming the tensor.
kernels::DType MatrixDType(kernels::DType want, int64_t cols, MatrixRole role = MatrixRole::kLayer);

// "--weights-dtype" values: "" or "auto" (unset), f32, f16, bf16, q8_0, q4_0, q4_k, q6_k (any
// case). InvalidArgument listing them otherwise.
StatusOr<WeightsLoadOptions> ParseWeightsDtype(const std::string& name);

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
  static StatusOr<std::unique_ptr<ModelWeights>> LoadSafetensors(const std::string& model_dir,
                                                                 const WeightsLoadOptions& options);
  // A matrix converted (or quantized) to `to` into owned_; InvalidArgument naming `name` when its
  // columns are not a whole number of blocks of `to`.
  StatusOr<WeightView> ConvertMatrix(const std::string& name, const WeightView& w,
                                     kernels::DType to);
  // gguf_weights.cc: q/k rows are put back from llama.cpp's rotary order into the HF order the
  // forward pass expects; quantized tensors are decoded into owned_.
  // Sets `packed` on the matrices that the CPU kernels read in a layout of their own (Q4_0 and
  // Q8_0 with AVX-512 VNNI, BF16 layer matrices with AVX-512 BF16: kernels::PackWeights), copies
  // kept in owned_ (as many bytes as those matrices).
  // RAGSERVE_NO_REPACK=1 in the environment skips it (the kernels then read the blocks; for A/B
  // benchmarks).
  void PackForKernels();
  static StatusOr<std::unique_ptr<ModelWeights>> LoadGguf(const std::string& path,
                                                          const WeightsLoadOptions& options);
  ModelConfig config_;
  std::vector<SafetensorsFile> files_;
  std::unique_ptr<GgufFile> gguf_;
  std::vector<std::vector<uint8_t>> owned_;  // decoded / reordered / converted tensors
  WeightView embed_, lm_head_, final_norm_;
  std::vector<LayerWeights> layers_;
  std::string fingerprint_;
  int64_t num_params_ = 0;
};

// A tensor as the fingerprint sees it: its header as loaded and the bytes it was read from.
struct FingerprintedTensor {
  const TensorInfo* info;
  const uint8_t* data;
  uint64_t bytes;
};
// Fingerprint of a config and a set of tensors, as ModelWeights uses: their headers (name, dtype,
// shape) and a digest of their bytes (all of a tensor up to 256 KiB, else 64 spread samples of
// 4 KiB and the size), so weights retrained under the same config get another fingerprint and
// KV made with the old ones is not mixed in.
std::string ComputeFingerprint(const ModelConfig& config,
                               const std::vector<FingerprintedTensor>& tensors);

}  // namespace ragserve::engine
