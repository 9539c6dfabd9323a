// KV sources: where the forward pass stores the new tokens' keys/values and how it attends.
//
// The transformer forward never touches K/V storage directly. For each layer it calls, per
// sequence, Append(new K/V after RoPE) then Attend(queries) -> (o, lse). Because attention results
// are partials with a log-sum-exp, sources compose by merging partials exactly
// (kernels::MergePartial), so one forward pass serves:
//   (a) KvCache        the contiguous per-sequence cache (causal over its own tokens);
//   (b) ApeKvSource    APE: a shared prefix block + independently encoded passage blocks at the
//                      same positions (temperature T on their scores, scaling S on their LSE) +
//                      the sequence's own causal cache for question/generated tokens;
//   (c) a RetrievalAttention source (KV retrieval service): a static sink+window part and top-k
//       keys retrieved from a CPU store, merged by LSE. It implements this same interface.
// ObservedKvSource forwards every Append to a hook (e.g. to record K/V in a remote store), and
// Model::EncodeBlock prefills "these tokens at positions p0.. after this prefix" into a KvBlock.
//
// Shapes: k, v: [n, kv_heads, head_dim]; q, o: [n, heads, head_dim]; lse: [n, heads] (natural log
// of the sum of exp(scale * q.k) over the attended keys). Query head h uses kv head
// h / (heads / kv_heads) (grouped-query attention).
// Memory: k, v, q, o and lse live in the source's memory() (host for every CPU source; device for
// DeviceKvCache and the GPU hybrid source); positions are always host memory. A model whose ops
// run elsewhere stages the arrays across (correct, slower), so any source works with any backend.
// Thread-safety: a source belongs to one sequence; calls on one source must not overlap.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "kernels/cpu/ops.h"
#include "services/common/status.h"

namespace ragserve::engine {

struct KvGeometry {
  int num_layers = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int64_t kv_row() const { return int64_t{num_kv_heads} * head_dim; }  // floats per token
};

class KvSource {
 public:
  virtual ~KvSource() = default;
  // Stores the n new tokens' K/V of `layer` (after RoPE) at rotary positions[n]. The forward calls
  // it once per layer and step, before Attend for that layer. Read-only sources return
  // FailedPrecondition.
  virtual Status Append(int layer, const float* k, const float* v, int n,
                        const int32_t* positions) = 0;
  // Attention of the n newest tokens' queries q over the keys this source exposes; within the
  // source's own appended tokens query i sees keys up to its own token (causal); keys that precede
  // the step (prefix blocks, retrieved keys) are all visible. scale is 1/sqrt(head_dim).
  virtual Status Attend(int layer, const float* q, int n, float scale, float* o, float* lse) = 0;
  // Where k, v, q, o and lse of Append/Attend live.
  virtual kernels::MemorySpace memory() const { return kernels::MemorySpace::kHost; }
};

// K/V of a block of tokens for every layer: k[layer], v[layer]: [tokens, kv_heads, head_dim]
// (f32, after RoPE), made with the model whose fingerprint is `fingerprint`.
struct KvBlock {
  KvGeometry geometry;
  int64_t tokens = 0;
  std::vector<int32_t> positions;  // [tokens]
  std::vector<std::vector<float>> k, v;
  std::string fingerprint;
};

// The contiguous per-sequence KV cache (causal). Grows on demand.
class KvCache final : public KvSource {
 public:
  // sliding_window > 0 limits each query to the last sliding_window keys (Mistral).
  explicit KvCache(const KvGeometry& g, int sliding_window = 0,
                   const kernels::Ops* ops = &kernels::FastOps());
  Status Append(int layer, const float* k, const float* v, int n,
                const int32_t* positions) override;
  Status Attend(int layer, const float* q, int n, float scale, float* o, float* lse) override;

  // Tokens stored in layer 0 (every layer holds the same count after a complete forward step).
  int64_t length() const { return len_[0]; }
  int64_t length(int layer) const { return len_[layer]; }
  // Drops tokens beyond n in every layer (e.g. to roll back a failed step).
  void Truncate(int64_t n);
  // [length(layer), kv_heads, head_dim] views.
  const float* keys(int layer) const { return k_[layer].data(); }
  const float* values(int layer) const { return v_[layer].data(); }
  const std::vector<int32_t>& positions() const { return pos_; }
  const KvGeometry& geometry() const { return g_; }
  // Copies the cached tokens [begin, end) of every layer into a block.
  KvBlock ToBlock(int64_t begin, int64_t end, const std::string& fingerprint) const;

 private:
  KvGeometry g_;
  int window_;
  const kernels::Ops* ops_;
  std::vector<std::vector<float>> k_, v_;
  std::vector<int64_t> len_;
  std::vector<int32_t> pos_;  // positions of layer-0 tokens
};

// A read-only block whose every key precedes the queries (a prefix, a passage). Scores use
// scale / temperature.
class BlockKvSource final : public KvSource {
 public:
  explicit BlockKvSource(const KvBlock* block, float temperature = 1.0f,
                         const kernels::Ops* ops = &kernels::FastOps());
  Status Append(int, const float*, const float*, int, const int32_t*) override;
  Status Attend(int layer, const float* q, int n, float scale, float* o, float* lse) override;

 private:
  const KvBlock* block_;
  float temperature_;
  const kernels::Ops* ops_;
};

// Appends go to `own`; Attend merges own's partial with every extra source's partial (exact).
class MergedKvSource final : public KvSource {
 public:
  MergedKvSource(KvSource* own, std::vector<KvSource*> extra, const KvGeometry& g);
  Status Append(int layer, const float* k, const float* v, int n,
                const int32_t* positions) override;
  Status Attend(int layer, const float* q, int n, float scale, float* o, float* lse) override;

 private:
  KvSource* own_;
  std::vector<KvSource*> extra_;
  KvGeometry g_;
  std::vector<float> o2_, lse2_;
};

// APE (adaptive parallel encoding): output = merge of
//   O: prefix block + own causal cache at the normal scale, and
//   C: all context blocks jointly, scores scaled by 1/temperature, their LSE multiplied by
//      scaling * temperature before the merge  ([w_C, w_O] = softmax([S*T*LSE_C, LSE_O])).
// With temperature = scaling = 1 this equals attention over the concatenated sequence.
class ApeKvSource final : public KvSource {
 public:
  // prefix may be null; blocks are not owned and must outlive this source.
  ApeKvSource(const KvBlock* prefix, std::vector<const KvBlock*> contexts, KvCache* own,
              float temperature, float scaling, const kernels::Ops* ops = &kernels::FastOps());
  Status Append(int layer, const float* k, const float* v, int n,
                const int32_t* positions) override;
  Status Attend(int layer, const float* q, int n, float scale, float* o, float* lse) override;

 private:
  KvCache* own_;
  KvGeometry g_;
  float temperature_, scaling_;
  std::unique_ptr<BlockKvSource> prefix_;
  std::vector<std::unique_ptr<BlockKvSource>> contexts_;
  std::vector<float> oc_, lsec_, ot_, lset_;
};

// Calls hook(layer, k, v, n, positions) on every Append, then forwards to the inner source.
using KvAppendHook =
    std::function<void(int layer, const float* k, const float* v, int n, const int32_t* positions)>;
class ObservedKvSource final : public KvSource {
 public:
  ObservedKvSource(KvSource* inner, KvAppendHook hook) : inner_(inner), hook_(std::move(hook)) {}
  Status Append(int layer, const float* k, const float* v, int n,
                const int32_t* positions) override {
    hook_(layer, k, v, n, positions);
    return inner_->Append(layer, k, v, n, positions);
  }
  Status Attend(int layer, const float* q, int n, float scale, float* o, float* lse) override {
    return inner_->Attend(layer, q, n, scale, o, lse);
  }
  kernels::MemorySpace memory() const override { return inner_->memory(); }

 private:
  KvSource* inner_;
  KvAppendHook hook_;
};

}  // namespace ragserve::engine
