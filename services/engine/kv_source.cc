#include "services/engine/kv_source.h"

#include <algorithm>
#include <limits>

#include "kernels/cpu/attention.h"
#include "kernels/cpu/spin_pool.h"

namespace ragserve::engine {

KvCache::KvCache(const KvGeometry& g, int sliding_window, const kernels::Ops* ops)
    : g_(g), window_(sliding_window), ops_(ops) {
  k_.resize(static_cast<size_t>(g.num_layers));
  v_.resize(static_cast<size_t>(g.num_layers));
  len_.assign(static_cast<size_t>(std::max(g.num_layers, 1)), 0);
}

Status KvCache::Append(int layer, const float* k, const float* v, int n, const int32_t* positions) {
  RS_CHECK_ARG(layer >= 0 && layer < g_.num_layers, "KvCache::Append: layer ", layer,
               " out of range [0, ", g_.num_layers, ")");
  RS_CHECK_ARG(n >= 0, "KvCache::Append: n must be >= 0, got ", n);
  const int64_t row = g_.kv_row();
  const int64_t len = len_[layer];
  const size_t need = static_cast<size_t>((len + n) * row);
  if (k_[layer].capacity() < need) {
    const size_t cap = std::max(need, k_[layer].capacity() * 2);
    k_[layer].reserve(cap);
    v_[layer].reserve(cap);
  }
  k_[layer].insert(k_[layer].begin() + len * row, k, k + n * row);
  v_[layer].insert(v_[layer].begin() + len * row, v, v + n * row);
  k_[layer].resize(need);
  v_[layer].resize(need);
  len_[layer] = len + n;
  if (layer == 0) {
    pos_.resize(static_cast<size_t>(len));
    pos_.insert(pos_.end(), positions, positions + n);
  }
  return OkStatus();
}

Status KvCache::Attend(int layer, const float* q, int n, float scale, float* o, float* lse) {
  RS_CHECK_ARG(layer >= 0 && layer < g_.num_layers, "KvCache::Attend: layer ", layer,
               " out of range [0, ", g_.num_layers, ")");
  const int64_t len = len_[layer];
  RS_CHECK_ARG(n >= 0 && n <= len, "KvCache::Attend: ", n, " queries but only ", len,
               " tokens appended to layer ", layer);
  const int64_t work = int64_t{n} * g_.num_kv_heads * len * g_.head_dim;
  ops_->CausalAttention(q, n, g_.num_heads, g_.num_kv_heads, g_.head_dim, k_[layer].data(),
                        v_[layer].data(), len, window_, scale, o, lse,
                        work >= (1 << 16) ? kernels::FastOpsThreads() : 1);
  return OkStatus();
}

void KvCache::Truncate(int64_t n) {
  for (int l = 0; l < g_.num_layers; ++l) {
    if (len_[l] > n) {
      len_[l] = n;
      k_[l].resize(static_cast<size_t>(n * g_.kv_row()));
      v_[l].resize(static_cast<size_t>(n * g_.kv_row()));
    }
  }
  if (static_cast<int64_t>(pos_.size()) > n) pos_.resize(static_cast<size_t>(n));
}

KvBlock KvCache::ToBlock(int64_t begin, int64_t end, const std::string& fingerprint) const {
  KvBlock b;
  b.geometry = g_;
  begin = std::clamp<int64_t>(begin, 0, length());
  end = std::clamp<int64_t>(end, begin, length());
  b.tokens = end - begin;
  b.fingerprint = fingerprint;
  b.positions.assign(pos_.begin() + begin, pos_.begin() + end);
  const int64_t row = g_.kv_row();
  for (int l = 0; l < g_.num_layers; ++l) {
    b.k.emplace_back(k_[l].begin() + begin * row, k_[l].begin() + end * row);
    b.v.emplace_back(v_[l].begin() + begin * row, v_[l].begin() + end * row);
  }
  return b;
}

BlockKvSource::BlockKvSource(const KvBlock* block, float temperature, const kernels::Ops* ops)
    : block_(block), temperature_(temperature), ops_(ops) {}

Status BlockKvSource::Append(int, const float*, const float*, int, const int32_t*) {
  return FailedPrecondition("a KV block source is read-only");
}

Status BlockKvSource::Attend(int layer, const float* q, int n, float scale, float* o, float* lse) {
  const KvGeometry& g = block_->geometry;
  RS_CHECK_ARG(layer >= 0 && layer < g.num_layers, "BlockKvSource::Attend: layer ", layer,
               " out of range [0, ", g.num_layers, ")");
  const float s = scale / temperature_;
  const int64_t work = int64_t{n} * g.num_kv_heads * block_->tokens * g.head_dim;
  ops_->BlockAttention(q, n, g.num_heads, g.num_kv_heads, g.head_dim, block_->k[layer].data(),
                       block_->v[layer].data(), block_->tokens, s, o, lse,
                       work >= (1 << 16) ? kernels::FastOpsThreads() : 1);
  return OkStatus();
}

MergedKvSource::MergedKvSource(KvSource* own, std::vector<KvSource*> extra, const KvGeometry& g)
    : own_(own), extra_(std::move(extra)), g_(g) {}

Status MergedKvSource::Append(int layer, const float* k, const float* v, int n,
                              const int32_t* positions) {
  return own_->Append(layer, k, v, n, positions);
}

Status MergedKvSource::Attend(int layer, const float* q, int n, float scale, float* o, float* lse) {
  RS_RETURN_IF_ERROR(own_->Attend(layer, q, n, scale, o, lse));
  const int64_t heads = int64_t{n} * g_.num_heads;
  o2_.resize(static_cast<size_t>(heads * g_.head_dim));
  lse2_.resize(static_cast<size_t>(heads));
  for (KvSource* s : extra_) {
    RS_RETURN_IF_ERROR(s->Attend(layer, q, n, scale, o2_.data(), lse2_.data()));
    kernels::MergePartial(o, lse, o2_.data(), lse2_.data(), static_cast<int>(heads), g_.head_dim);
  }
  return OkStatus();
}

ApeKvSource::ApeKvSource(const KvBlock* prefix, std::vector<const KvBlock*> contexts, KvCache* own,
                         float temperature, float scaling, const kernels::Ops* ops)
    : own_(own), g_(own->geometry()), temperature_(temperature), scaling_(scaling) {
  if (prefix != nullptr) prefix_ = std::make_unique<BlockKvSource>(prefix, 1.0f, ops);
  for (const KvBlock* b : contexts) {
    contexts_.push_back(std::make_unique<BlockKvSource>(b, temperature, ops));
  }
}

Status ApeKvSource::Append(int layer, const float* k, const float* v, int n,
                           const int32_t* positions) {
  return own_->Append(layer, k, v, n, positions);
}

Status ApeKvSource::Attend(int layer, const float* q, int n, float scale, float* o, float* lse) {
  const int64_t heads = int64_t{n} * g_.num_heads;
  const int hd = g_.head_dim;
  const int h = static_cast<int>(heads);
  ot_.resize(static_cast<size_t>(heads * hd));
  lset_.resize(static_cast<size_t>(heads));
  // O: own causal tokens + prefix, normal scale.
  RS_RETURN_IF_ERROR(own_->Attend(layer, q, n, scale, o, lse));
  if (prefix_) {
    RS_RETURN_IF_ERROR(prefix_->Attend(layer, q, n, scale, ot_.data(), lset_.data()));
    kernels::MergePartial(o, lse, ot_.data(), lset_.data(), h, hd);
  }
  if (contexts_.empty()) return OkStatus();
  // C: all contexts jointly at scale / T.
  oc_.assign(static_cast<size_t>(heads * hd), 0.0f);
  lsec_.assign(static_cast<size_t>(heads), -std::numeric_limits<float>::infinity());
  for (auto& c : contexts_) {
    RS_RETURN_IF_ERROR(c->Attend(layer, q, n, scale, ot_.data(), lset_.data()));
    kernels::MergePartial(oc_.data(), lsec_.data(), ot_.data(), lset_.data(), h, hd);
  }
  const float st = scaling_ * temperature_;
  for (float& l : lsec_) l *= st;
  kernels::MergePartial(o, lse, oc_.data(), lsec_.data(), h, hd);
  return OkStatus();
}

}  // namespace ragserve::engine
