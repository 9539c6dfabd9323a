// AttentionAwareIndex::Build and its steps (the graph maintenance shared with add() is in
// attention_aware.cc).
#include <faiss/Clustering.h>
#include <faiss/IndexFlat.h>

#include <algorithm>
#include <limits>
#include <utility>

#include "index/attention_aware.h"
#include "index/internal/index_util.h"
#include "services/common/logging.h"

namespace ragserve::index {
namespace {

using Scored = std::pair<float, int32_t>;

Status CheckBuildArgs(int dim, int64_t n_keys, const float* keys, int64_t n_queries,
                      const float* queries, const AttentionAwareParams& params) {
  RS_CHECK_ARG(dim >= 1, "dim must be >= 1, got ", dim);
  RS_CHECK_ARG(n_keys >= 1 && n_keys < (int64_t{1} << 31), "n_keys must be in [1, 2^31), got ",
               n_keys);
  RS_CHECK_ARG(n_queries >= 1, "n_queries must be >= 1 (the index is built from queries), got ",
               n_queries);
  RS_CHECK_ARG(keys != nullptr && queries != nullptr, "null keys or queries");
  RS_RETURN_IF_ERROR(ValidateAttentionAwareParams(params));
  RS_RETURN_IF_ERROR(CheckFinite(n_keys, dim, keys, "key"));
  return CheckFinite(n_queries, dim, queries, "prefill query");
}

// Step 1: at most max_queries of the n_queries, one from each of that many equal buckets at a
// hashed offset inside the bucket (a plain stride over queries laid out [token, head] would alias
// onto a subset of the heads).
std::vector<float> SampleBuildQueries(int dim, int64_t n_queries, const float* queries,
                                      int64_t max_queries) {
  const int64_t nq = std::min(n_queries, max_queries);
  std::vector<float> bq(static_cast<size_t>(nq * dim));
  for (int64_t i = 0; i < nq; ++i) {
    const int64_t lo = i * n_queries / nq, hi = (i + 1) * n_queries / nq;
    const int64_t src =
        lo + static_cast<int64_t>((static_cast<uint64_t>(i) * 2654435761ULL) %
                                  static_cast<uint64_t>(std::max<int64_t>(1, hi - lo)));
    std::copy(queries + src * dim, queries + (src + 1) * dim, bq.begin() + i * dim);
  }
  return bq;
}

// Step 3a: projects each query's ranking top[nq, L] (best first) onto the keys: the pivot (its
// best key) gets the other top keys as candidates, each of those gets the pivot back, and
// consecutive keys of the ranking are linked.
std::vector<std::vector<int32_t>> ProjectRankings(int64_t n_keys, int64_t nq, int L,
                                                  const int64_t* top) {
  std::vector<std::vector<int32_t>> cand(static_cast<size_t>(n_keys));
  for (int64_t i = 0; i < nq; ++i) {
    const int64_t* t = top + i * L;
    const int32_t pivot = static_cast<int32_t>(t[0]);
    for (int j = 1; j < L; ++j) {
      const int32_t c = static_cast<int32_t>(t[j]);
      cand[pivot].push_back(c);
      cand[c].push_back(pivot);
      cand[t[j - 1]].push_back(c);
      if (j > 1) cand[c].push_back(static_cast<int32_t>(t[j - 1]));
    }
  }
  return cand;
}

// The up to `cap` candidates of `node` co-retrieved most often (ties: smaller row first).
std::vector<int32_t> MostFrequent(int32_t node, std::vector<int32_t>* c, int cap) {
  std::sort(c->begin(), c->end());
  std::vector<std::pair<int, int32_t>> freq;
  for (size_t a = 0; a < c->size();) {
    size_t b = a;
    while (b < c->size() && (*c)[b] == (*c)[a]) ++b;
    if ((*c)[a] != node) freq.emplace_back(-static_cast<int>(b - a), (*c)[a]);
    a = b;
  }
  std::sort(freq.begin(), freq.end());
  std::vector<int32_t> kept;
  for (size_t a = 0; a < freq.size() && static_cast<int>(kept.size()) < cap; ++a) {
    kept.push_back(freq[a].second);
  }
  return kept;
}

// Step 5a: k-means (8 Lloyd iterations in L2, FAISS) of the nq build queries into E centroids,
// initialized with evenly spaced build queries.
StatusOr<std::vector<float>> QueryCentroids(int dim, int64_t nq, const float* bq, int64_t E) {
  faiss::ClusteringParameters cp;
  cp.niter = 8;
  cp.min_points_per_centroid = 1;  // few queries per centroid is expected, not worth a warning
  cp.max_points_per_centroid = std::numeric_limits<int>::max();  // cluster every build query
  faiss::Clustering clus(dim, static_cast<int>(E), cp);
  clus.centroids.resize(static_cast<size_t>(E * dim));
  for (int64_t e = 0; e < E; ++e) {
    const float* src = bq + (e * nq / E) * dim;
    std::copy(src, src + dim, clus.centroids.begin() + e * dim);
  }
  try {
    faiss::IndexFlatL2 assign(dim);
    clus.train(nq, bq, assign);
  } catch (const std::exception& e) {
    return Internal(StrCat("attention-aware index: k-means of ", nq, " build queries into ", E,
                           " centroids failed: ", e.what()));
  }
  return std::move(clus.centroids);
}

}  // namespace

StatusOr<std::unique_ptr<AttentionAwareIndex>> AttentionAwareIndex::Build(
    int dim, int64_t n_keys, const float* keys, int64_t n_queries, const float* queries,
    const AttentionAwareParams& params, const int64_t* key_ids) {
  RS_RETURN_IF_ERROR(CheckBuildArgs(dim, n_keys, keys, n_queries, queries, params));
  auto idx = std::unique_ptr<AttentionAwareIndex>(new AttentionAwareIndex(dim, params));
  WriterMutexLock lock(idx->mu_);  // not shared yet; held so that the analysis checks the steps
  RS_RETURN_IF_ERROR(idx->InitNodes(n_keys, keys, key_ids));
  const std::vector<float> bq =
      SampleBuildQueries(dim, n_queries, queries, params.max_build_queries);
  const int64_t nq = static_cast<int64_t>(bq.size()) / dim;
  idx->LinkQueryNeighbourhoods(nq, bq.data());
  idx->RecountInDegrees();
  // Entry points before step 4, so that its insertion searches can use them.
  RS_RETURN_IF_ERROR(idx->ChooseEntryPoints(nq, bq.data()));
  const int64_t inserted = idx->LinkUnreachedKeys();
  RS_LOG(debug, "attention-aware index: {} keys, {} build queries, {} linked by insertion", n_keys,
         nq, inserted);
  return idx;
}

Status AttentionAwareIndex::InitNodes(int64_t n_keys, const float* keys, const int64_t* key_ids) {
  keys_.assign(keys, keys + n_keys * dim_);
  ids_.resize(static_cast<size_t>(n_keys));
  row_.reserve(static_cast<size_t>(n_keys));
  for (int64_t r = 0; r < n_keys; ++r) {
    const int64_t id = key_ids != nullptr ? key_ids[r] : r;
    RS_CHECK_ARG(id >= 0, "key id must be >= 0, got ", id);
    RS_CHECK_ARG(row_.emplace(id, static_cast<int32_t>(r)).second, "duplicate key id ", id);
    ids_[r] = id;
  }
  adj_.assign(static_cast<size_t>(n_keys), {});
  dead_.assign(static_cast<size_t>(n_keys), 0);
  return OkStatus();
}

void AttentionAwareIndex::LinkQueryNeighbourhoods(int64_t nq, const float* bq) {
  // Step 2: each build query's exact top keys.
  const int64_t n_keys = static_cast<int64_t>(ids_.size());
  const int L = static_cast<int>(std::min<int64_t>(params_.build_topk, n_keys));
  std::vector<int64_t> top(static_cast<size_t>(nq * L));
  std::vector<float> top_s(static_cast<size_t>(nq * L));
  const internal::ExactRows rows{.x = keys_.data(), .rows = n_keys, .dim = dim_};
  internal::ExactTopK(rows, Metric::kInnerProduct, nq, bq, L, nullptr, top_s.data(), top.data());
  // Step 3: candidate lists from the rankings, then occlusion pruning per node.
  std::vector<std::vector<int32_t>> cand = ProjectRankings(n_keys, nq, L, top.data());
  const int cap = 4 * params_.max_degree;
#pragma omp parallel for schedule(dynamic, 256)
  for (int64_t r = 0; r < n_keys; ++r) {
    if (cand[r].empty()) continue;
    const int32_t node = static_cast<int32_t>(r);
    adj_[r] = Prune(node, MostFrequent(node, &cand[r], cap), params_.max_degree);
    std::vector<int32_t>().swap(cand[r]);
  }
}

Status AttentionAwareIndex::ChooseEntryPoints(int64_t nq, const float* bq) {
  // Step 5: the top key of each k-means centroid of the build queries, so that every mode of the
  // query distribution has an entry near the keys it attends to. A decode query attends to keys
  // that other queries of its kind attended to, but the key graph has few edges between such
  // groups (no query links them), so a search must start inside the right group.
  const int64_t E = std::min<int64_t>(params_.num_entry_points, nq);
  RS_ASSIGN_OR_RETURN(centroids_, QueryCentroids(dim_, nq, bq, E));
  std::vector<int64_t> top1(static_cast<size_t>(E));
  std::vector<float> top1_s(static_cast<size_t>(E));
  const internal::ExactRows rows{
      .x = keys_.data(), .rows = static_cast<int64_t>(ids_.size()), .dim = dim_};
  internal::ExactTopK(rows, Metric::kInnerProduct, E, centroids_.data(), 1, nullptr, top1_s.data(),
                      top1.data());
  for (int64_t e = 0; e < E; ++e) {
    const int32_t p = static_cast<int32_t>(top1[e]);
    if (p >= 0 && std::find(entry_.begin(), entry_.end(), p) == entry_.end()) entry_.push_back(p);
  }
  return OkStatus();
}

int64_t AttentionAwareIndex::LinkUnreachedKeys() {
  // Step 4: keys nothing points to (no query ranked them) get out-edges from a beam search of the
  // graph with the key itself as the query, and reverse edges (LinkNewNode).
  const std::vector<uint8_t> reached = Reached();
  std::vector<int32_t> todo;
  for (size_t r = 0; r < reached.size(); ++r) {
    if (!reached[r]) todo.push_back(static_cast<int32_t>(r));
  }
  // In batches, parallel searches then serial linking, so that later keys find (and link to)
  // earlier inserted ones instead of all landing on the few projected keys near the entries.
  constexpr size_t kBatch = 2048;
  for (size_t b0 = 0; b0 < todo.size(); b0 += kBatch) {
    const size_t bn = std::min(kBatch, todo.size() - b0);
    std::vector<std::vector<Scored>> found(bn);
#pragma omp parallel for schedule(dynamic, 64)
    for (int64_t i = 0; i < static_cast<int64_t>(bn); ++i) {
      int64_t s = 0, h = 0;
      BeamSearch(row(todo[b0 + i]), params_.insert_ef, &found[i], &s, &h);
    }
    for (size_t i = 0; i < bn; ++i) LinkNewNode(todo[b0 + i], found[i]);
  }
  return static_cast<int64_t>(todo.size());
}

}  // namespace ragserve::index
