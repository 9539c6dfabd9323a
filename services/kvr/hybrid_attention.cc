#include "services/kvr/hybrid_attention.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include "index/flat.h"
#include "kernels/cpu/attention.h"

namespace ragserve::kvr {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Token ranges of a head with n tokens: static [0, sink_end) and [mid_end, n), middle
// [mid_begin, mid_end) (empty when n <= S + W).
struct Regions {
  int64_t sink_end = 0;
  int64_t mid_begin = 0;
  int64_t mid_end = 0;
  int64_t n = 0;
  int64_t middle() const { return mid_end - mid_begin; }
};

Regions RegionsOf(int64_t n, int64_t sinks, int64_t window) {
  Regions r;
  r.n = n;
  r.sink_end = std::min(sinks, n);
  r.mid_begin = r.sink_end;
  r.mid_end = std::max(r.sink_end, n - window);
  return r;
}

// Partial attention over rows [a, b) of a view (f16 rows converted through a buffer).
void AttendRange(const HeadView& view, const float* q, int h, int64_t a, int64_t b, float scale,
                 std::vector<float>* kbuf, std::vector<float>* vbuf, float* o, float* lse) {
  const int d = view.d;
  const int64_t m = std::max<int64_t>(0, b - a);
  if (view.dtype == KvDtype::kF32) {
    kernels::AttentionPartial(q, h, view.k32 + a * d, d, view.v32 + a * d, d, m, d, scale, o, lse);
    return;
  }
  kbuf->resize(static_cast<size_t>(m) * d);
  vbuf->resize(static_cast<size_t>(m) * d);
  CopyRows(view, a, m, kbuf->data(), vbuf->data());
  kernels::AttentionPartial(q, h, kbuf->data(), d, vbuf->data(), d, m, d, scale, o, lse);
}

// Partial attention over the rows idx[0..m) of a view.
void AttendGather(const HeadView& view, const float* q, int h, const std::vector<int64_t>& idx,
                  float scale, std::vector<float>* kbuf, std::vector<float>* vbuf, float* o,
                  float* lse) {
  const int d = view.d;
  const int64_t m = static_cast<int64_t>(idx.size());
  if (view.dtype == KvDtype::kF32) {
    kernels::AttentionPartialGather(q, h, view.k32, d, view.v32, d, idx.data(), m, d, scale, o,
                                    lse);
    return;
  }
  kbuf->resize(static_cast<size_t>(m) * d);
  vbuf->resize(static_cast<size_t>(m) * d);
  GatherRows(view, idx.data(), m, kbuf->data(), vbuf->data());
  kernels::AttentionPartial(q, h, kbuf->data(), d, vbuf->data(), d, m, d, scale, o, lse);
}

}  // namespace

StatusOr<KeyIndexKind> ParseKeyIndexKind(std::string_view name) {
  if (name == "exact") return KeyIndexKind::kExact;
  if (name == "hnsw") return KeyIndexKind::kHnsw;
  if (name == "ivf") return KeyIndexKind::kIvf;
  if (name == "attention_aware") return KeyIndexKind::kAttentionAware;
  return InvalidArgument(
      StrCat("unknown key index kind '", name, "' (expected exact, hnsw, ivf or attention_aware)"));
}

std::string_view KeyIndexKindName(KeyIndexKind kind) {
  switch (kind) {
    case KeyIndexKind::kExact:
      return "exact";
    case KeyIndexKind::kHnsw:
      return "hnsw";
    case KeyIndexKind::kIvf:
      return "ivf";
    case KeyIndexKind::kAttentionAware:
      return "attention_aware";
  }
  return "unknown";
}

StatusOr<std::unique_ptr<index::VectorIndex>> MakeKeyIndex(const HybridOptions& options, int d,
                                                           int64_t n, const float* keys,
                                                           const int64_t* ids, int64_t n_queries,
                                                           const float* queries) {
  RS_CHECK_ARG(d >= 1, "head_dim must be >= 1, got ", d);
  RS_CHECK_ARG(n >= 1, "a key index needs >= 1 key, got ", n);
  switch (options.index_kind) {
    case KeyIndexKind::kExact: {
      RS_ASSIGN_OR_RETURN(auto idx, index::FlatIndex::Create(d, index::Metric::kInnerProduct));
      RS_RETURN_IF_ERROR(idx->add(n, keys, ids));
      return std::unique_ptr<index::VectorIndex>(std::move(idx));
    }
    case KeyIndexKind::kHnsw: {
      index::HnswParams p = options.hnsw;
      p.initial_capacity = std::max(p.initial_capacity, n);
      RS_ASSIGN_OR_RETURN(auto idx, index::HnswIndex::Create(d, index::Metric::kInnerProduct, p));
      RS_RETURN_IF_ERROR(idx->add(n, keys, ids));
      return std::unique_ptr<index::VectorIndex>(std::move(idx));
    }
    case KeyIndexKind::kIvf: {
      index::IvfParams p = options.ivf;
      if (p.nlist == 0) {
        // 4 sqrt(n) lists, at most n / 39 (FAISS k-means wants >= 39 points per centroid).
        p.nlist = static_cast<int>(std::clamp<double>(4.0 * std::sqrt(static_cast<double>(n)), 1.0,
                                                      std::max(1.0, n / 39.0)));
      }
      p.nlist = static_cast<int>(std::min<int64_t>(p.nlist, n));
      RS_ASSIGN_OR_RETURN(auto idx,
                          index::IvfIndex::Create(d, index::Metric::kInnerProduct, false, p));
      RS_RETURN_IF_ERROR(idx->train(n, keys));
      RS_RETURN_IF_ERROR(idx->add(n, keys, ids));
      return std::unique_ptr<index::VectorIndex>(std::move(idx));
    }
    case KeyIndexKind::kAttentionAware: {
      RS_CHECK_ARG(n_queries >= 1 && queries != nullptr,
                   "the attention_aware index is built from prefill queries; got ", n_queries);
      RS_ASSIGN_OR_RETURN(auto idx,
                          index::AttentionAwareIndex::Build(d, n, keys, n_queries, queries,
                                                            options.attention_aware, ids));
      return std::unique_ptr<index::VectorIndex>(std::move(idx));
    }
  }
  return InvalidArgument(StrCat("unknown key index kind ", static_cast<int>(options.index_kind)));
}

struct HybridAttention::HeadState {
  Mutex mu;  // serializes calls on one (seq, layer, kv_head)
  std::unique_ptr<index::VectorIndex> index ABSL_GUARDED_BY(mu);
  // Tokens [mid_begin, indexed_end) are in the index; -1: none.
  int64_t indexed_end ABSL_GUARDED_BY(mu) = -1;
  // Prefill queries kept until the middle is non-empty.
  std::vector<float> queries ABSL_GUARDED_BY(mu);
  int64_t n_query_vectors ABSL_GUARDED_BY(mu) = 0;
  int64_t charged ABSL_GUARDED_BY(mu) = 0;  // index bytes charged to the sequence in the store
};

HybridAttention::HybridAttention(KvStore* store, HybridOptions options)
    : store_(store), options_(std::move(options)) {}
HybridAttention::~HybridAttention() = default;

StatusOr<std::shared_ptr<HybridAttention::HeadState>> HybridAttention::State(const std::string& seq,
                                                                             int layer, int kv_head,
                                                                             bool create) {
  MutexLock lock(mu_);
  const auto key = std::make_tuple(seq, layer, kv_head);
  auto it = states_.find(key);
  if (it != states_.end()) return it->second;
  if (!create) return NotFound(StrCat("no index state for sequence '", seq, "'"));
  auto st = std::make_shared<HeadState>();
  states_.emplace(key, st);
  return st;
}

bool HybridAttention::HasIndex(const std::string& seq, int layer, int kv_head) {
  auto st = State(seq, layer, kv_head, false);
  if (!st.ok()) return false;
  MutexLock lock((*st)->mu);
  return (*st)->index != nullptr;
}

Status HybridAttention::BuildIndex(const std::string& seq, int layer, int kv_head,
                                   int64_t n_queries, int h, const float* queries) {
  RS_ASSIGN_OR_RETURN(const SequenceSpec spec, store_->Spec(seq));
  RS_CHECK_ARG(kv_head >= 0 && kv_head < spec.num_kv_heads, "kv_head ", kv_head,
               " out of range [0, ", spec.num_kv_heads, ")");
  RS_CHECK_ARG(n_queries >= 0, "n_queries must be >= 0, got ", n_queries);
  RS_CHECK_ARG(n_queries == 0 || (h >= 1 && queries != nullptr),
               "prefill queries need h >= 1 and data; got h = ", h);
  if (options_.index_kind == KeyIndexKind::kAttentionAware) {
    RS_CHECK_ARG(n_queries >= 1, "the attention_aware index needs prefill queries (got none)");
  }
  const int d = spec.head_dim;
  // Subsample to at most max_build_queries vectors, spread evenly over every head and over the
  // positions (the rows are [token, head] interleaved, so a plain stride could pick one head).
  const int64_t total = n_queries * std::max(h, 1);
  const int64_t want = std::min<int64_t>(total, options_.attention_aware.max_build_queries);
  std::vector<float> sub;
  if (n_queries > 0 && options_.index_kind == KeyIndexKind::kAttentionAware) {
    RS_RETURN_IF_ERROR(index::CheckFinite(total, d, queries, "prefill query"));
    const int64_t per_head = std::max<int64_t>(1, want / h);
    sub.reserve(static_cast<size_t>(per_head * h * d));
    for (int64_t i = 0; i < per_head; ++i) {
      const int64_t t = std::min(n_queries - 1, i * n_queries / per_head);
      for (int j = 0; j < h; ++j) {
        const float* src = queries + (t * h + j) * d;
        sub.insert(sub.end(), src, src + d);
      }
    }
  }
  RS_ASSIGN_OR_RETURN(auto st, State(seq, layer, kv_head, true));
  MutexLock lock(st->mu);
  st->index.reset();
  if (st->charged != 0) {
    RS_RETURN_IF_ERROR(store_->Charge(seq, -st->charged));
    st->charged = 0;
  }
  st->indexed_end = -1;
  st->queries = std::move(sub);
  st->n_query_vectors = static_cast<int64_t>(st->queries.size()) / d;
  return SyncLocked(seq, layer, kv_head, st.get());
}

Status HybridAttention::Sync(const std::string& seq, int layer, int kv_head) {
  RS_ASSIGN_OR_RETURN(auto st, State(seq, layer, kv_head, true));
  MutexLock lock(st->mu);
  return SyncLocked(seq, layer, kv_head, st.get());
}

// The lock requirement is stated on the definition: HeadState is incomplete in the header.
Status HybridAttention::SyncLocked(const std::string& seq, int layer, int kv_head, HeadState* st)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(st->mu) {
  RS_ASSIGN_OR_RETURN(const SequenceSpec spec, store_->Spec(seq));
  const int d = spec.head_dim;
  std::vector<float> keys;
  int64_t a = 0, b = 0;
  const int64_t indexed_end = st->indexed_end;  // read here: the lambda is not seen under st->mu
  RS_RETURN_IF_ERROR(store_->WithHead(seq, layer, kv_head, [&](const HeadView& view) {
    const Regions r = RegionsOf(view.n, options_.sink_tokens, options_.window_tokens);
    a = indexed_end < 0 ? r.mid_begin : indexed_end;
    b = r.mid_end;
    if (b > a) {
      keys.resize(static_cast<size_t>(b - a) * d);
      CopyRows(view, a, b - a, keys.data(), nullptr);
    }
  }));
  if (b <= a) return OkStatus();
  std::vector<int64_t> ids(static_cast<size_t>(b - a));
  for (int64_t i = 0; i < b - a; ++i) ids[i] = a + i;
  if (st->index == nullptr) {
    if (options_.index_kind == KeyIndexKind::kAttentionAware && st->n_query_vectors == 0) {
      return OkStatus();  // no queries yet: Attend reports FailedPrecondition when it needs one
    }
    RS_ASSIGN_OR_RETURN(auto index, MakeKeyIndex(options_, d, b - a, keys.data(), ids.data(),
                                                 st->n_query_vectors, st->queries.data()));
    // The index counts against the store's memory limit; over it, nothing changes (the
    // queries stay for a later build).
    const int64_t bytes = index->memory_bytes();
    RS_RETURN_IF_ERROR(store_->Charge(seq, bytes));
    st->charged = bytes;
    st->index = std::move(index);
    std::vector<float>().swap(st->queries);
    st->n_query_vectors = 0;
  } else {
    RS_RETURN_IF_ERROR(st->index->add(b - a, keys.data(), ids.data()));
    // Already allocated: counted even over the limit (the next Append then fails).
    const int64_t bytes = st->index->memory_bytes();
    RS_RETURN_IF_ERROR(store_->Charge(seq, bytes - st->charged, /*force=*/true));
    st->charged = bytes;
  }
  st->indexed_end = b;
  return OkStatus();
}

StatusOr<int64_t> HybridAttention::CheckAttendArgs(const std::string& seq, int layer, int kv_head,
                                                   const float* q, int h, int head_dim,
                                                   int top_k) const {
  RS_ASSIGN_OR_RETURN(const SequenceSpec spec, store_->Spec(seq));
  RS_CHECK_ARG(head_dim == spec.head_dim, "head_dim ", head_dim, " does not match sequence '", seq,
               "' head_dim ", spec.head_dim);
  RS_CHECK_ARG(h >= 1, "number of query heads must be >= 1, got ", h);
  RS_CHECK_ARG(q != nullptr, "null query");
  RS_CHECK_ARG(kv_head >= 0 && kv_head < spec.num_kv_heads, "kv_head ", kv_head,
               " out of range [0, ", spec.num_kv_heads, ")");
  RS_RETURN_IF_ERROR(index::CheckFinite(h, head_dim, q, "query"));
  RS_ASSIGN_OR_RETURN(const int64_t n, store_->NumTokens(seq, layer));
  RS_CHECK_ARG(top_k >= 1 && top_k <= n, "top_k must be in [1, ", n, "] (tokens stored), got ",
               top_k);
  return n;
}

Status HybridAttention::SearchLocked(HeadState* st, const float* q, int h, const AttendOptions& opt,
                                     int64_t* ids, int64_t* keys_scored) const
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(st->mu) {
  index::SearchParams sp = options_.search;
  if (opt.ef_search > 0) sp.ef_search = opt.ef_search;
  if (opt.nprobe > 0) sp.nprobe = opt.nprobe;
  std::vector<float> dist(static_cast<size_t>(h) * opt.top_k);
  index::SearchStats ks;
  sp.stats = &ks;
  RS_RETURN_IF_ERROR(st->index->search(h, q, opt.top_k, dist.data(), ids, sp));
  *keys_scored += ks.scored;
  return OkStatus();
}

Status HybridAttention::Retrieve(const std::string& seq, int layer, int kv_head, const float* q,
                                 int h, int head_dim, const AttendOptions& opt, int64_t* ids,
                                 AttendStats* stats) {
  RS_RETURN_IF_ERROR(CheckAttendArgs(seq, layer, kv_head, q, h, head_dim, opt.top_k).status());
  RS_CHECK_ARG(ids != nullptr, "null ids output");
  RS_ASSIGN_OR_RETURN(auto st, State(seq, layer, kv_head, true));
  MutexLock lock(st->mu);
  RS_RETURN_IF_ERROR(SyncLocked(seq, layer, kv_head, st.get()));
  if (st->index == nullptr) {
    return FailedPrecondition(StrCat("sequence '", seq, "' layer ", layer, " kv_head ", kv_head,
                                     ": no key index (empty middle, or no prefill queries)"));
  }
  int64_t scored = 0;
  RS_RETURN_IF_ERROR(SearchLocked(st.get(), q, h, opt, ids, &scored));
  if (stats != nullptr) stats->keys_scored += scored;
  return OkStatus();
}

Status HybridAttention::Attend(const std::string& seq, int layer, int kv_head, const float* q,
                               int h, int head_dim, const AttendOptions& opt, float* o, float* lse,
                               AttendStats* stats) {
  RS_CHECK_ARG(o != nullptr && lse != nullptr, "null output");
  RS_ASSIGN_OR_RETURN(const int64_t n,
                      CheckAttendArgs(seq, layer, kv_head, q, h, head_dim, opt.top_k));
  RS_ASSIGN_OR_RETURN(auto st, State(seq, layer, kv_head, true));
  MutexLock lock(st->mu);
  RS_RETURN_IF_ERROR(SyncLocked(seq, layer, kv_head, st.get()));

  const int d = head_dim;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  AttendStats local;
  std::vector<int64_t> retrieved;
  // Tokens appended between NumTokens above and the view below are attended as window tokens
  // (they are always newer than the middle), so the regions are recomputed inside the view.
  int64_t covered_mid_end = st->indexed_end;
  bool exact_middle = false;
  {
    const Regions r0 = RegionsOf(n, options_.sink_tokens, options_.window_tokens);
    exact_middle = opt.top_k >= r0.middle();
    if (!exact_middle) {
      if (st->index == nullptr) {
        return FailedPrecondition(StrCat("sequence '", seq, "' layer ", layer, " kv_head ", kv_head,
                                         ": top_k ", opt.top_k, " < ", r0.middle(),
                                         " middle tokens and no key index was built"));
      }
      std::vector<int64_t> ids(static_cast<size_t>(h) * opt.top_k);
      RS_RETURN_IF_ERROR(SearchLocked(st.get(), q, h, opt, ids.data(), &local.keys_scored));
      for (int64_t id : ids) {
        if (id >= 0) retrieved.push_back(id);
      }
      std::sort(retrieved.begin(), retrieved.end());
      retrieved.erase(std::unique(retrieved.begin(), retrieved.end()), retrieved.end());
    }
  }

  std::vector<float> o2(static_cast<size_t>(h) * d), lse2(static_cast<size_t>(h));
  std::vector<float> kbuf, vbuf;
  RS_RETURN_IF_ERROR(store_->WithHead(seq, layer, kv_head, [&](const HeadView& view) {
    Regions r = RegionsOf(view.n, options_.sink_tokens, options_.window_tokens);
    // The middle is what the index covers (or, exactly attended, what it was at NumTokens).
    if (exact_middle) {
      r.mid_end = std::max(
          r.mid_begin,
          std::min(r.mid_end, RegionsOf(n, options_.sink_tokens, options_.window_tokens).mid_end));
    } else {
      r.mid_end = std::max(r.mid_begin, std::min(r.mid_end, covered_mid_end));
    }
    local.middle_keys = r.middle();
    // Middle part first (into o/lse), then the static part merged in.
    if (exact_middle) {
      AttendRange(view, q, h, r.mid_begin, r.mid_end, scale, &kbuf, &vbuf, o, lse);
      local.retrieved_keys = r.middle();
      local.keys_scored = static_cast<int64_t>(h) * r.middle();
    } else {
      AttendGather(view, q, h, retrieved, scale, &kbuf, &vbuf, o, lse);
      local.retrieved_keys = static_cast<int64_t>(retrieved.size());
    }
    if (opt.retrieved_only) return;
    AttendRange(view, q, h, 0, r.sink_end, scale, &kbuf, &vbuf, o2.data(), lse2.data());
    kernels::MergePartial(o, lse, o2.data(), lse2.data(), h, d);
    AttendRange(view, q, h, r.mid_end, view.n, scale, &kbuf, &vbuf, o2.data(), lse2.data());
    kernels::MergePartial(o, lse, o2.data(), lse2.data(), h, d);
    local.static_keys = r.sink_end + (view.n - r.mid_end);
  }));
  if (stats != nullptr) {
    stats->static_keys += local.static_keys;
    stats->middle_keys += local.middle_keys;
    stats->retrieved_keys += local.retrieved_keys;
    stats->keys_scored += local.keys_scored;
  }
  return OkStatus();
}

Status HybridAttention::AttendFull(const std::string& seq, int layer, int kv_head, const float* q,
                                   int h, int head_dim, float* o, float* lse) {
  RS_ASSIGN_OR_RETURN(const SequenceSpec spec, store_->Spec(seq));
  RS_CHECK_ARG(head_dim == spec.head_dim, "head_dim ", head_dim, " does not match sequence '", seq,
               "' head_dim ", spec.head_dim);
  RS_CHECK_ARG(h >= 1, "number of query heads must be >= 1, got ", h);
  RS_CHECK_ARG(q != nullptr && o != nullptr && lse != nullptr, "null query or output");
  RS_RETURN_IF_ERROR(index::CheckFinite(h, head_dim, q, "query"));
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  std::vector<float> kbuf, vbuf;
  return store_->WithHead(seq, layer, kv_head, [&](const HeadView& view) {
    AttendRange(view, q, h, 0, view.n, scale, &kbuf, &vbuf, o, lse);
  });
}

void HybridAttention::Drop(const std::string& seq) {
  MutexLock lock(mu_);
  auto it = states_.lower_bound(std::make_tuple(seq, INT_MIN, INT_MIN));
  while (it != states_.end() && std::get<0>(it->first) == seq) it = states_.erase(it);
}

}  // namespace ragserve::kvr
