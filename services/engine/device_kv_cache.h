// KV sources in GPU memory for a model whose ops run on the device, over kernels/cuda/paged_kv.h:
//   DeviceKvCache      a sequence's causal cache (Model::NewKvSource makes it), with the model's
//                      sliding window;
//   DeviceApeKvSource  APE (parallel-encoded passages) on the GPU: the prefix and passage blocks
//                      uploaded to GPU pages once per request, the same formula as ApeKvSource.
// Keys, values, queries and outputs are device pointers (memory() == kDevice).
#pragma once

#include <memory>
#include <vector>

#include "kernels/cuda/paged_kv.h"
#include "services/engine/kv_source.h"

namespace ragserve::engine {

class DeviceKvCache final : public KvSource {
 public:
  // InvalidArgument when the pool's page geometry does not match g; FailedPrecondition without
  // CUDA.
  static StatusOr<std::unique_ptr<DeviceKvCache>> Create(
      std::shared_ptr<kernels::cuda::KvPagePool> pool, const KvGeometry& g, int sliding_window);

  Status Append(int layer, const float* k, const float* v, int n,
                const int32_t* positions) override;
  Status Attend(int layer, const float* q, int n, float scale, float* o, float* lse) override;
  kernels::MemorySpace memory() const override { return kernels::MemorySpace::kDevice; }

  int64_t length() const { return cache_->length(0); }
  // Drops tokens beyond n (pages go back to the pool). With a sliding window, pages that slid
  // out were already given back: truncating into them makes the next Append fail.
  void Truncate(int64_t n) { cache_->Truncate(n); }
  int64_t bytes() const { return cache_->bytes(); }
  kernels::cuda::PagedKvCache& paged() { return *cache_; }
  const KvGeometry& geometry() const { return g_; }

 private:
  DeviceKvCache(const KvGeometry& g, int window, std::unique_ptr<kernels::cuda::PagedKvCache> cache)
      : g_(g), window_(window), cache_(std::move(cache)) {}
  KvGeometry g_;
  int window_;
  std::unique_ptr<kernels::cuda::PagedKvCache> cache_;
};

// APE on the GPU (see ApeKvSource in kv_source.h for the formula): output = merge of
//   O: prefix block + own causal tokens at the normal scale, and
//   C: all passage blocks jointly at scale / temperature, their LSE multiplied by
//      scaling * temperature before the merge.
// The blocks are copied into GPU pages of `pool` at creation (they may be freed afterwards).
class DeviceApeKvSource final : public KvSource {
 public:
  // InvalidArgument when a block's geometry does not match g; ResourceExhausted when the pool
  // cannot hold the blocks.
  static StatusOr<std::unique_ptr<DeviceApeKvSource>> Create(
      std::shared_ptr<kernels::cuda::KvPagePool> pool, const KvGeometry& g, int sliding_window,
      const KvBlock* prefix, const std::vector<const KvBlock*>& contexts, float temperature,
      float scaling, const kernels::Ops* ops);

  Status Append(int layer, const float* k, const float* v, int n,
                const int32_t* positions) override;
  Status Attend(int layer, const float* q, int n, float scale, float* o, float* lse) override;
  kernels::MemorySpace memory() const override { return kernels::MemorySpace::kDevice; }
  int64_t bytes() const;
  // The sequence's own tokens (after the blocks).
  DeviceKvCache& own() { return *own_; }

 private:
  DeviceApeKvSource(const KvGeometry& g, float temperature, float scaling, const kernels::Ops* ops)
      : g_(g), temperature_(temperature), scaling_(scaling), o2_(ops), lse2_(ops) {}
  KvGeometry g_;
  float temperature_, scaling_;
  std::unique_ptr<DeviceKvCache> own_;
  std::unique_ptr<kernels::cuda::PagedKvCache> prefix_, contexts_;  // null when empty
  kernels::ScratchBuffer o2_, lse2_;                                // a partial in device memory
};

}  // namespace ragserve::engine
