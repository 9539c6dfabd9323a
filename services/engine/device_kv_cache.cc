#include "services/engine/device_kv_cache.h"

namespace ragserve::engine {

StatusOr<std::unique_ptr<DeviceKvCache>> DeviceKvCache::Create(
    std::shared_ptr<kernels::cuda::KvPagePool> pool, const KvGeometry& g, int sliding_window) {
  RS_CHECK_ARG(pool != nullptr, "DeviceKvCache: no page pool");
  const kernels::cuda::KvPageGeometry& pg = pool->geometry();
  RS_CHECK_ARG(pg.kv_heads == g.num_kv_heads && pg.head_dim == g.head_dim,
               "DeviceKvCache: page pool geometry (", pg.kv_heads, " kv heads x ", pg.head_dim,
               ") does not match the model (", g.num_kv_heads, " x ", g.head_dim, ")");
  RS_CHECK_ARG(g.num_kv_heads > 0 && g.num_heads % g.num_kv_heads == 0,
               "DeviceKvCache: ", g.num_heads, " heads not a multiple of ", g.num_kv_heads,
               " kv heads");
  RS_ASSIGN_OR_RETURN(
      std::unique_ptr<kernels::cuda::PagedKvCache> cache,
      kernels::cuda::PagedKvCache::Create(std::move(pool), g.num_layers, sliding_window));
  return std::unique_ptr<DeviceKvCache>(new DeviceKvCache(g, std::move(cache)));
}

Status DeviceKvCache::Append(int layer, const float* k, const float* v, int n, const int32_t*) {
  RS_CHECK_ARG(layer >= 0 && layer < g_.num_layers, "DeviceKvCache::Append: layer ", layer,
               " out of range [0, ", g_.num_layers, ")");
  return cache_->Append(layer, k, v, n);
}

Status DeviceKvCache::Attend(int layer, const float* q, int n, float scale, float* o, float* lse) {
  RS_CHECK_ARG(layer >= 0 && layer < g_.num_layers, "DeviceKvCache::Attend: layer ", layer,
               " out of range [0, ", g_.num_layers, ")");
  return cache_->Attend(layer, q, n, g_.num_heads, scale, o, lse);
}

}  // namespace ragserve::engine
