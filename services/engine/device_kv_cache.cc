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
  return std::unique_ptr<DeviceKvCache>(new DeviceKvCache(g, sliding_window, std::move(cache)));
}

Status DeviceKvCache::Append(int layer, const float* k, const float* v, int n, const int32_t*) {
  RS_CHECK_ARG(layer >= 0 && layer < g_.num_layers, "DeviceKvCache::Append: layer ", layer,
               " out of range [0, ", g_.num_layers, ")");
  if (window_ > 0 && layer == g_.num_layers - 1) {
    // Sliding window: the first query of this step sees keys from len + 1 - window on, and later
    // steps see later ones, so whole pages below that go back to the pool (all layers hold len).
    cache_->Evict(0, cache_->length(layer) + 1 - window_);
  }
  return cache_->Append(layer, k, v, n);
}

Status DeviceKvCache::Attend(int layer, const float* q, int n, float scale, float* o, float* lse) {
  RS_CHECK_ARG(layer >= 0 && layer < g_.num_layers, "DeviceKvCache::Attend: layer ", layer,
               " out of range [0, ", g_.num_layers, ")");
  return cache_->Attend(layer, q, n, g_.num_heads, scale, o, lse);
}

namespace {

// Copies blocks (host f32) into one paged cache, concatenated per layer; null when no tokens.
StatusOr<std::unique_ptr<kernels::cuda::PagedKvCache>> Upload(
    const std::shared_ptr<kernels::cuda::KvPagePool>& pool, const KvGeometry& g,
    const std::vector<const KvBlock*>& blocks, const kernels::Ops* ops) {
  int64_t tokens = 0;
  for (const KvBlock* b : blocks) {
    RS_CHECK_ARG(b != nullptr, "DeviceApeKvSource: null block");
    RS_CHECK_ARG(b->geometry.num_layers == g.num_layers && b->geometry.kv_row() == g.kv_row() &&
                     static_cast<int>(b->k.size()) == g.num_layers &&
                     static_cast<int>(b->v.size()) == g.num_layers,
                 "DeviceApeKvSource: block geometry does not match the model");
    tokens += b->tokens;
  }
  if (tokens == 0) return std::unique_ptr<kernels::cuda::PagedKvCache>();
  RS_CHECK_ARG(tokens <= (int64_t{1} << 30), "DeviceApeKvSource: ", tokens, " block tokens");
  RS_ASSIGN_OR_RETURN(auto cache, kernels::cuda::PagedKvCache::Create(pool, g.num_layers, 0));
  kernels::ScratchBuffer dk(ops), dv(ops);
  for (const KvBlock* b : blocks) {
    if (b->tokens == 0) continue;
    const int64_t count = b->tokens * g.kv_row();
    float* k = dk.Get<float>(count);
    float* v = dv.Get<float>(count);
    if (k == nullptr || v == nullptr) return ResourceExhausted("DeviceApeKvSource: upload buffer");
    for (int l = 0; l < g.num_layers; ++l) {
      RS_CHECK_ARG(static_cast<int64_t>(b->k[l].size()) == count &&
                       static_cast<int64_t>(b->v[l].size()) == count,
                   "DeviceApeKvSource: layer ", l, " of a block holds ", b->k[l].size(),
                   " floats, expected ", count);
      ops->CopyToBackend(k, b->k[l].data(), static_cast<size_t>(count) * sizeof(float));
      ops->CopyToBackend(v, b->v[l].data(), static_cast<size_t>(count) * sizeof(float));
      RS_RETURN_IF_ERROR(cache->Append(l, k, v, static_cast<int>(b->tokens)));
    }
  }
  RS_RETURN_IF_ERROR(ops->Synchronize());  // the scratch goes away with this scope
  return cache;
}

}  // namespace

StatusOr<std::unique_ptr<DeviceApeKvSource>> DeviceApeKvSource::Create(
    std::shared_ptr<kernels::cuda::KvPagePool> pool, const KvGeometry& g, int sliding_window,
    const KvBlock* prefix, const std::vector<const KvBlock*>& contexts, float temperature,
    float scaling, const kernels::Ops* ops) {
  RS_CHECK_ARG(ops != nullptr && ops->memory() == kernels::MemorySpace::kDevice,
               "DeviceApeKvSource needs a device backend");
  RS_CHECK_ARG(temperature > 0.0f && scaling > 0.0f, "DeviceApeKvSource: temperature ", temperature,
               " and scaling ", scaling, " must be > 0");
  std::unique_ptr<DeviceApeKvSource> s(new DeviceApeKvSource(g, temperature, scaling, ops));
  RS_ASSIGN_OR_RETURN(s->own_, DeviceKvCache::Create(pool, g, sliding_window));
  std::vector<const KvBlock*> pre;
  if (prefix != nullptr) pre.push_back(prefix);
  RS_ASSIGN_OR_RETURN(s->prefix_, Upload(pool, g, pre, ops));
  RS_ASSIGN_OR_RETURN(s->contexts_, Upload(pool, g, contexts, ops));
  return s;
}

Status DeviceApeKvSource::Append(int layer, const float* k, const float* v, int n,
                                 const int32_t* positions) {
  return own_->Append(layer, k, v, n, positions);
}

Status DeviceApeKvSource::Attend(int layer, const float* q, int n, float scale, float* o,
                                 float* lse) {
  RS_RETURN_IF_ERROR(own_->Attend(layer, q, n, scale, o, lse));
  const int64_t rows = int64_t{n} * g_.num_heads;
  float* o2 = o2_.Get<float>(rows * g_.head_dim);
  float* lse2 = lse2_.Get<float>(rows);
  if (o2 == nullptr || lse2 == nullptr) return ResourceExhausted("DeviceApeKvSource: scratch");
  // O: the prefix at the normal scale.
  if (prefix_) {
    RS_RETURN_IF_ERROR(prefix_->AttendRange(layer, q, n, g_.num_heads, scale, 0,
                                            prefix_->length(layer), o2, lse2));
    RS_RETURN_IF_ERROR(kernels::cuda::MergeDevicePartials(o, lse, o2, lse2, rows, g_.head_dim));
  }
  // C: every passage jointly (one softmax over their concatenation) at scale / T, merged with
  // its LSE scaled by S * T.
  if (contexts_) {
    RS_RETURN_IF_ERROR(contexts_->AttendRange(layer, q, n, g_.num_heads, scale / temperature_, 0,
                                              contexts_->length(layer), o2, lse2));
    RS_RETURN_IF_ERROR(kernels::cuda::MergeDevicePartials(o, lse, o2, lse2, rows, g_.head_dim,
                                                          scaling_ * temperature_));
  }
  return OkStatus();
}

int64_t DeviceApeKvSource::bytes() const {
  return own_->bytes() + (prefix_ ? prefix_->bytes() : 0) + (contexts_ ? contexts_->bytes() : 0);
}

}  // namespace ragserve::engine
