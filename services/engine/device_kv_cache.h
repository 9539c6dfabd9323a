// The KV cache of a sequence in GPU memory: a KvSource over kernels/cuda/paged_kv.h for a model
// whose ops run on the device (Model::NewKvSource makes it). Causal, with the model's sliding
// window; keys, values, queries and outputs are device pointers (memory() == kDevice).
#pragma once

#include <memory>

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
  // Drops tokens beyond n (pages go back to the pool).
  void Truncate(int64_t n) { cache_->Truncate(n); }
  int64_t bytes() const { return cache_->bytes(); }
  kernels::cuda::PagedKvCache& paged() { return *cache_; }
  const KvGeometry& geometry() const { return g_; }

 private:
  DeviceKvCache(const KvGeometry& g, std::unique_ptr<kernels::cuda::PagedKvCache> cache)
      : g_(g), cache_(std::move(cache)) {}
  KvGeometry g_;
  std::unique_ptr<kernels::cuda::PagedKvCache> cache_;
};

}  // namespace ragserve::engine
