#include "services/kvr/kv_store.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>

#include "services/common/mutex.h"

namespace ragserve::kvr {
namespace {
constexpr size_t kMaxReleasedRemembered = 65536;
}  // namespace

uint16_t FloatToHalf(float f) {
  const _Float16 h = static_cast<_Float16>(f);
  uint16_t b;
  std::memcpy(&b, &h, sizeof b);
  return b;
}

float HalfToFloat(uint16_t b) {
  _Float16 h;
  std::memcpy(&h, &b, sizeof b);
  return static_cast<float>(h);
}

void GatherRows(const HeadView& view, const int64_t* idx, int64_t m, float* k_out, float* v_out) {
  const int d = view.d;
  for (int64_t i = 0; i < m; ++i) {
    const int64_t r = idx[i];
    if (view.dtype == KvDtype::kF32) {
      if (k_out) std::memcpy(k_out + i * d, view.k32 + r * d, d * sizeof(float));
      if (v_out) std::memcpy(v_out + i * d, view.v32 + r * d, d * sizeof(float));
    } else {
      for (int j = 0; j < d; ++j) {
        if (k_out) k_out[i * d + j] = HalfToFloat(view.k16[r * d + j]);
        if (v_out) v_out[i * d + j] = HalfToFloat(view.v16[r * d + j]);
      }
    }
  }
}

void CopyRows(const HeadView& view, int64_t start, int64_t m, float* k_out, float* v_out) {
  const int d = view.d;
  if (view.dtype == KvDtype::kF32) {
    if (k_out) std::memcpy(k_out, view.k32 + start * d, m * d * sizeof(float));
    if (v_out) std::memcpy(v_out, view.v32 + start * d, m * d * sizeof(float));
    return;
  }
  for (int64_t j = 0; j < m * d; ++j) {
    if (k_out) k_out[j] = HalfToFloat(view.k16[start * d + j]);
    if (v_out) v_out[j] = HalfToFloat(view.v16[start * d + j]);
  }
}

struct KvStore::Sequence {
  explicit Sequence(const SequenceSpec& s) : spec(s) {
    layers.resize(static_cast<size_t>(s.num_layers));
    for (auto& l : layers) l.heads.resize(static_cast<size_t>(s.num_kv_heads));
  }
  struct Head {
    std::vector<float> k32, v32;
    std::vector<uint16_t> k16, v16;
  };
  struct Layer {
    int64_t n = 0;
    int64_t capacity = 0;  // tokens
    std::vector<Head> heads;
  };
  const SequenceSpec spec;
  mutable SharedMutex mu;
  std::vector<Layer> layers ABSL_GUARDED_BY(mu);
  int64_t bytes ABSL_GUARDED_BY(mu) = 0;  // charged capacity
  bool released ABSL_GUARDED_BY(mu) = false;
  mutable std::atomic<int64_t> last_access_ms{0};
};

KvStore::KvStore(KvStoreOptions options) : options_(std::move(options)) {}
KvStore::~KvStore() = default;

int64_t KvStore::Now() const {
  if (options_.now_ms) return options_.now_ms();
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

Status KvStore::CreateSequence(const std::string& seq, const SequenceSpec& spec) {
  RS_CHECK_ARG(!seq.empty(), "sequence id must not be empty");
  RS_CHECK_ARG(spec.num_layers >= 1 && spec.num_layers <= kMaxLayers, "num_layers must be in [1, ",
               kMaxLayers, "], got ", spec.num_layers);
  RS_CHECK_ARG(spec.num_kv_heads >= 1 && spec.num_kv_heads <= kMaxHeads,
               "num_kv_heads must be in [1, ", kMaxHeads, "], got ", spec.num_kv_heads);
  RS_CHECK_ARG(spec.head_dim >= 1 && spec.head_dim <= kMaxHeadDim, "head_dim must be in [1, ",
               kMaxHeadDim, "], got ", spec.head_dim);
  RS_CHECK_ARG(spec.dtype == KvDtype::kF32 || spec.dtype == KvDtype::kF16, "unknown dtype ",
               static_cast<int>(spec.dtype));
  ExpireIdle();
  auto s = std::make_shared<Sequence>(spec);
  s->last_access_ms = Now();
  MutexLock lock(mu_);
  if (seqs_.count(seq)) return AlreadyExists(StrCat("sequence '", seq, "' already exists"));
  released_.erase(seq);
  seqs_.emplace(seq, std::move(s));
  return OkStatus();
}

StatusOr<std::shared_ptr<KvStore::Sequence>> KvStore::Find(const std::string& seq) const {
  MutexLock lock(mu_);
  auto it = seqs_.find(seq);
  if (it != seqs_.end()) return it->second;
  if (released_.count(seq)) {
    return FailedPrecondition(StrCat("sequence '", seq, "' was released"));
  }
  return NotFound(StrCat("unknown sequence '", seq, "'"));
}

Status KvStore::Append(const std::string& seq, int layer, int64_t n, const float* k,
                       const float* v) {
  RS_ASSIGN_OR_RETURN(auto s, Find(seq));
  const SequenceSpec& sp = s->spec;
  RS_CHECK_ARG(layer >= 0 && layer < sp.num_layers, "layer ", layer, " out of range [0, ",
               sp.num_layers, ")");
  RS_CHECK_ARG(n >= 1, "number of tokens must be >= 1, got ", n);
  RS_CHECK_ARG(k != nullptr && v != nullptr, "null keys or values");
  const int64_t elems = n * sp.num_kv_heads * sp.head_dim;
  for (int64_t i = 0; i < elems; ++i) {
    if (!std::isfinite(k[i]) || !std::isfinite(v[i])) {
      return InvalidArgument(StrCat("sequence '", seq, "' layer ", layer, ": element ", i,
                                    " of the appended ", std::isfinite(k[i]) ? "values" : "keys",
                                    " is not finite"));
    }
  }
  WriterMutexLock slock(s->mu);
  if (s->released) return FailedPrecondition(StrCat("sequence '", seq, "' was released"));
  auto& L = s->layers[layer];
  const int64_t need = L.n + n;
  const int64_t elem_size = sp.dtype == KvDtype::kF32 ? 4 : 2;
  const int64_t row_bytes = int64_t{2} * sp.num_kv_heads * sp.head_dim * elem_size;  // K + V
  if (need > L.capacity) {
    const int64_t chunk = std::max<int64_t>(1, options_.chunk_tokens);
    const int64_t new_cap = (need + chunk - 1) / chunk * chunk;
    const int64_t grow = (new_cap - L.capacity) * row_bytes;
    {
      MutexLock lock(mu_);
      if (bytes_used_ + grow > options_.memory_limit_bytes) {
        return ResourceExhausted(StrCat("KV store memory limit ", options_.memory_limit_bytes,
                                        " bytes: appending ", n, " tokens to sequence '", seq,
                                        "' needs ", grow, " more bytes, ", bytes_used_, " in use"));
      }
      bytes_used_ += grow;
    }
    s->bytes += grow;
    const size_t cap_elems = static_cast<size_t>(new_cap) * sp.head_dim;
    for (auto& h : L.heads) {
      if (sp.dtype == KvDtype::kF32) {
        h.k32.reserve(cap_elems);
        h.v32.reserve(cap_elems);
      } else {
        h.k16.reserve(cap_elems);
        h.v16.reserve(cap_elems);
      }
    }
    L.capacity = new_cap;
  }
  const int d = sp.head_dim, H = sp.num_kv_heads;
  for (int hh = 0; hh < H; ++hh) {
    auto& h = L.heads[hh];
    for (int64_t t = 0; t < n; ++t) {
      const float* kr = k + (t * H + hh) * d;
      const float* vr = v + (t * H + hh) * d;
      if (sp.dtype == KvDtype::kF32) {
        h.k32.insert(h.k32.end(), kr, kr + d);
        h.v32.insert(h.v32.end(), vr, vr + d);
      } else {
        for (int j = 0; j < d; ++j) {
          h.k16.push_back(FloatToHalf(kr[j]));
          h.v16.push_back(FloatToHalf(vr[j]));
        }
      }
    }
  }
  L.n = need;
  s->last_access_ms = Now();
  return OkStatus();
}

Status KvStore::Charge(const std::string& seq, int64_t delta, bool force) {
  RS_ASSIGN_OR_RETURN(auto s, Find(seq));
  WriterMutexLock slock(s->mu);
  if (s->released) return FailedPrecondition(StrCat("sequence '", seq, "' was released"));
  RS_CHECK_ARG(s->bytes + delta >= 0, "sequence '", seq, "': refund of ", -delta,
               " bytes exceeds its charge of ", s->bytes);
  {
    MutexLock lock(mu_);
    if (delta > 0 && !force && bytes_used_ + delta > options_.memory_limit_bytes) {
      return ResourceExhausted(StrCat("KV store memory limit ", options_.memory_limit_bytes,
                                      " bytes: the key index of sequence '", seq, "' needs ", delta,
                                      " more bytes, ", bytes_used_, " in use"));
    }
    bytes_used_ += delta;
  }
  s->bytes += delta;
  return OkStatus();
}

Status KvStore::Release(const std::string& seq) {
  std::shared_ptr<Sequence> s;
  {
    MutexLock lock(mu_);
    auto it = seqs_.find(seq);
    if (it == seqs_.end()) {
      if (released_.count(seq)) {
        return FailedPrecondition(StrCat("sequence '", seq, "' was already released"));
      }
      return NotFound(StrCat("unknown sequence '", seq, "'"));
    }
    s = std::move(it->second);
    seqs_.erase(it);
    if (released_.insert(seq).second) released_order_.push_back(seq);
    while (released_order_.size() > kMaxReleasedRemembered) {
      released_.erase(released_order_.front());
      released_order_.pop_front();
    }
  }
  WriterMutexLock slock(s->mu);
  s->released = true;
  {
    MutexLock lock(mu_);
    bytes_used_ -= s->bytes;
  }
  s->bytes = 0;
  std::vector<Sequence::Layer>().swap(s->layers);
  return OkStatus();
}

int64_t KvStore::ExpireIdle() {
  if (options_.ttl_ms <= 0) return 0;
  const int64_t now = Now();
  std::vector<std::string> idle;
  {
    MutexLock lock(mu_);
    for (const auto& [id, s] : seqs_) {
      if (now - s->last_access_ms.load() > options_.ttl_ms) idle.push_back(id);
    }
  }
  int64_t n = 0;
  for (const auto& id : idle) n += Release(id).ok() ? 1 : 0;
  return n;
}

StatusOr<SequenceSpec> KvStore::Spec(const std::string& seq) const {
  RS_ASSIGN_OR_RETURN(auto s, Find(seq));
  return s->spec;
}

StatusOr<int64_t> KvStore::NumTokens(const std::string& seq, int layer) const {
  RS_ASSIGN_OR_RETURN(auto s, Find(seq));
  RS_CHECK_ARG(layer >= 0 && layer < s->spec.num_layers, "layer ", layer, " out of range [0, ",
               s->spec.num_layers, ")");
  ReaderMutexLock slock(s->mu);
  if (s->released) return FailedPrecondition(StrCat("sequence '", seq, "' was released"));
  return s->layers[layer].n;
}

Status KvStore::WithHead(const std::string& seq, int layer, int kv_head,
                         const std::function<void(const HeadView&)>& fn) const {
  RS_ASSIGN_OR_RETURN(auto s, Find(seq));
  const SequenceSpec& sp = s->spec;
  RS_CHECK_ARG(layer >= 0 && layer < sp.num_layers, "layer ", layer, " out of range [0, ",
               sp.num_layers, ")");
  RS_CHECK_ARG(kv_head >= 0 && kv_head < sp.num_kv_heads, "kv_head ", kv_head, " out of range [0, ",
               sp.num_kv_heads, ")");
  ReaderMutexLock slock(s->mu);
  if (s->released) return FailedPrecondition(StrCat("sequence '", seq, "' was released"));
  const auto& L = s->layers[layer];
  const auto& h = L.heads[kv_head];
  HeadView view;
  view.dtype = sp.dtype;
  view.n = L.n;
  view.d = sp.head_dim;
  view.k32 = h.k32.data();
  view.v32 = h.v32.data();
  view.k16 = h.k16.data();
  view.v16 = h.v16.data();
  s->last_access_ms = Now();
  fn(view);
  return OkStatus();
}

StatusOr<int64_t> KvStore::SequenceBytes(const std::string& seq) const {
  RS_ASSIGN_OR_RETURN(auto s, Find(seq));
  ReaderMutexLock slock(s->mu);
  return s->bytes;
}

int64_t KvStore::bytes_used() const {
  MutexLock lock(mu_);
  return bytes_used_;
}

int64_t KvStore::num_sequences() const {
  MutexLock lock(mu_);
  return static_cast<int64_t>(seqs_.size());
}

}  // namespace ragserve::kvr
