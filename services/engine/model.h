// The transformer forward pass (Llama / Mistral / Qwen2) on CPU in f32.
//
// One Forward call runs a step for a batch of sequences: all their new tokens go through the
// matmuls together (decode of B sequences = GEMV over B rows, reading the weights once; prefill =
// sgemm), attention goes per sequence through its KvSource (kv_source.h). Prefill() splits a long
// prompt into chunks (chunked prefill); EncodeBlock() returns the K/V of a passage for caching.
//
// How to:
// (1) Prefill tokens at positions p0..p0+L-1 after a prefix KV and get their per-layer K/V
//     (context cache / APE):
//       StatusOr<KvBlock> pre = model.EncodeBlock(nullptr, prefix_ids, 0);
//       StatusOr<KvBlock> blk = model.EncodeBlock(&*pre, passage_ids, /*start_pos=*/p0);
//     blk->k[layer], blk->v[layer] are [L, kv_heads, head_dim] f32 after RoPE at p0..; the block
//     carries model.fingerprint() (EncodeBlock refuses a prefix with another fingerprint).
// (2) Decode a batch of sequences one step (continuous batching): one SequenceStep per sequence,
//     each with its own KvSource and next position (prefill chunks and decode tokens may be mixed
//     in one call):
//       std::vector<SequenceStep> b = {{tok_a, pos_a, kv_a}, {tok_b, pos_b, kv_b}};
//       model.Forward(b, LogitsMode::kLast, &logits);   // logits: [b.size(), vocab]
//     Weights are read once for the whole batch (GEMV over up to kernels::kGemvMaxRows rows).
// (3) Plug a custom KvSource (kv_source.h): implement Append (store or forward the new K/V) and
//     Attend (return (o, lse) per query head); combine sources with MergedKvSource, ApeKvSource
//     or ObservedKvSource (append hook for a remote store). Generation helpers: generate.h.
//
// Backends: the ops decide where the forward runs (FastOps/RefOps on the CPU, CudaOps from
// kernels/cuda/ops.h on a GPU). A device backend gets the weights uploaded once at construction and
// keeps every activation in device memory; NewKvSource() then gives a device-resident paged cache.
// Host KV sources (KvCache, APE blocks, retrieval) still work with a device model: their arrays are
// staged across per layer (slower, same results).
//
// Thread-safety: Forward/Prefill/EncodeBlock lock the model (one step at a time per Model); run
// several Models over the same shared ModelWeights for parallel steps. The ops parallelize inside
// (kernels/cpu/spin_pool.h; one job at a time, a second concurrent caller runs its ops inline).
#pragma once

#include <memory>
#include <span>
#include <string>
#include <vector>

#include "kernels/cpu/ops.h"
#include "services/common/mutex.h"
#include "services/engine/kv_source.h"
#include "services/engine/weights.h"

namespace ragserve::kernels::cuda {
class KvPagePool;
}  // namespace ragserve::kernels::cuda

namespace ragserve::engine {

// One sequence's share of a forward step.
struct SequenceStep {
  std::span<const int32_t> tokens;  // >= 1 new token ids, each in [0, vocab)
  int32_t start_pos = 0;            // rotary position of tokens[0]; token i is at start_pos + i
  KvSource* kv = nullptr;           // receives the new K/V, serves attention
};

enum class LogitsMode {
  kNone,  // no LM head (e.g. encoding a passage)
  kLast,  // logits of each sequence's last new token: [batch, vocab]
  kAll,   // logits of every new token, sequences in order: [total tokens, vocab]
};

class Model {
 public:
  // Loads a model directory or .gguf file (weights.h; `weights` picks the weight dtype, e.g.
  // quantized at load) and uses `ops` (not owned; FastOps by default).
  static StatusOr<std::unique_ptr<Model>> Load(const std::string& model_dir,
                                               const kernels::Ops* ops = &kernels::FastOps(),
                                               const WeightsLoadOptions& weights = {});
  // Wraps loaded weights; with a device backend uploads them (ResourceExhausted when they do not
  // fit; InvalidArgument for block-quantized weights, which only the CPU backends run). The
  // constructor never fails: check status() (Load and Create do).
  static StatusOr<std::unique_ptr<Model>> Create(std::shared_ptr<const ModelWeights> weights,
                                                 const kernels::Ops* ops);
  Model(std::shared_ptr<const ModelWeights> weights, const kernels::Ops* ops);
  ~Model();
  // OK unless the weight upload failed (then every Forward returns this error).
  const Status& status() const { return init_status_; }
  const kernels::Ops& ops() const { return *ops_; }

  const ModelConfig& config() const { return weights_->config(); }
  const ModelWeights& weights() const { return *weights_; }
  const std::string& fingerprint() const { return weights_->fingerprint(); }
  KvGeometry geometry() const;
  // A fresh contiguous host cache for this model (sliding window from the config).
  std::unique_ptr<KvCache> NewKvCache() const;
  // A fresh cache in the backend's memory: NewKvCache() for host ops; with a device backend a
  // paged cache in device memory (kv_dtype: f32 or f16/bf16 storage) drawing pages from a pool the
  // model creates on first use (`pool_bytes` of device memory, fixed then). ResourceExhausted when
  // the pool is exhausted.
  StatusOr<std::unique_ptr<KvSource>> NewKvSource(kernels::DType kv_dtype = kernels::DType::kF32,
                                                  int64_t pool_bytes = int64_t{1} << 30);
  // The device page pool NewKvSource draws from (made on first use with these arguments; later
  // calls must ask for the same dtype). FailedPrecondition for a host backend.
  StatusOr<std::shared_ptr<kernels::cuda::KvPagePool>> DeviceKvPool(kernels::DType kv_dtype,
                                                                    int64_t pool_bytes);

  // Runs one step for every sequence in `batch`; fills *logits per `mode` (row-major, f32).
  // InvalidArgument for an empty batch/sequence, a token id outside [0, vocab), a negative
  // position or a null kv. Serialized: concurrent calls on one Model run one after another.
  Status Forward(std::span<const SequenceStep> batch, LogitsMode mode, std::vector<float>* logits);

  // Chunked prefill of one sequence: Forward over consecutive chunks of <= chunk_size tokens
  // (chunk_size <= 0: one chunk). *last_logits (may be null) gets the last token's [vocab] logits.
  Status Prefill(std::span<const int32_t> tokens, int32_t start_pos, KvSource* kv, int chunk_size,
                 std::vector<float>* last_logits);

  // Encodes `tokens` at positions start_pos.. attending to `prefix` (may be null; its keys all
  // precede) and to themselves causally; returns their K/V for every layer. This is the APE /
  // context-cache primitive ("prefill this passage after this prefix and give me its KV").
  StatusOr<KvBlock> EncodeBlock(const KvBlock* prefix, std::span<const int32_t> tokens,
                                int32_t start_pos, int chunk_size = 256);

  // Threads per forward step: n > 0 fixes the count (also env RAGSERVE_ENGINE_THREADS=n); 0
  // (default) tunes it online between 1 and OpenMP's maximum by timing steps, separately for
  // decode-sized and prefill-sized steps (on a shared machine a preempted thread stalls every
  // fork/join, and one thread can be several times faster). Results never depend on the count.
  void SetDecodeThreads(int n);

 private:
  // Final norm + LM head over the rows `mode` selects (Forward's tail).
  Status LmHead(std::span<const SequenceStep> batch, LogitsMode mode, int64_t T,
                std::vector<float>* logits) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // EncodeBlock with the work on the device: prefix and block K/V in GPU pages, read back at the
  // end.
  StatusOr<KvBlock> EncodeBlockOnDevice(const KvBlock* prefix, std::span<const int32_t> tokens,
                                        int32_t start_pos, int chunk_size);
  // Chooses the thread count of decode steps from their timings (EWMA per candidate, a short
  // exploration of the other candidate every kExplorePeriod steps).
  class ThreadTuner {
   public:
    int Pick();
    void Record(int threads, double seconds);

   private:
    static constexpr int kExplorePeriod = 32;
    int max_threads_ = 0;
    double ewma_[2] = {0.0, 0.0};  // seconds per step with max_threads_, with 1
    int64_t steps_ = 0;
  };

  // Runs a sequence's Append + Attend for one layer, staging through host memory when the
  // source's memory differs from the ops'.
  Status AppendAttend(KvSource* kv, int layer, const float* k, const float* v, int n,
                      const int32_t* positions, const float* q, float scale, float* o, float* lse)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Weight views in the backend's memory: the mapped host views themselves for host ops, uploaded
  // copies (owned by uploads_) for a device backend.
  Status UploadWeights();

  std::shared_ptr<const ModelWeights> weights_;
  const kernels::Ops* ops_;
  const kernels::Ops* host_ops_;  // ops for host KV sources: ops_ when it is a host backend
  Status init_status_;
  WeightView embed_, lm_head_, final_norm_;
  std::vector<LayerWeights> layers_;
  std::vector<void*> uploads_;  // backend allocations of the uploaded weights (device only)
  std::vector<float> inv_freq_;
  float* inv_freq_b_ = nullptr;  // inv_freq_ in backend memory
  // Device KV pages, made on first use.
  std::shared_ptr<kernels::cuda::KvPagePool> kv_pool_ ABSL_GUARDED_BY(mu_);
  Mutex mu_;  // one Forward at a time: guards the KV page pool and the scratch buffers
  kernels::ScratchBuffer x_ ABSL_GUARDED_BY(mu_), h_ ABSL_GUARDED_BY(mu_), q_ ABSL_GUARDED_BY(mu_),
      k_ ABSL_GUARDED_BY(mu_), v_ ABSL_GUARDED_BY(mu_), att_ ABSL_GUARDED_BY(mu_),
      lse_ ABSL_GUARDED_BY(mu_), tmp_ ABSL_GUARDED_BY(mu_), gate_ ABSL_GUARDED_BY(mu_),
      up_ ABSL_GUARDED_BY(mu_), sel_ ABSL_GUARDED_BY(mu_), logits_b_ ABSL_GUARDED_BY(mu_),
      ids_b_ ABSL_GUARDED_BY(mu_), pos_b_ ABSL_GUARDED_BY(mu_);
  std::vector<int32_t> ids_ ABSL_GUARDED_BY(mu_), pos_ ABSL_GUARDED_BY(mu_);
  // Host staging.
  std::vector<float> stage_k_ ABSL_GUARDED_BY(mu_), stage_v_ ABSL_GUARDED_BY(mu_),
      stage_q_ ABSL_GUARDED_BY(mu_), stage_o_ ABSL_GUARDED_BY(mu_), stage_lse_ ABSL_GUARDED_BY(mu_);
  int decode_threads_ ABSL_GUARDED_BY(mu_) = 0;  // 0: tuned by tuners_
  // [0]: steps of <= kGemvMaxRows tokens, [1]: larger (prefill) steps.
  ThreadTuner tuners_[2] ABSL_GUARDED_BY(mu_);
};

}  // namespace ragserve::engine
