// AttentionAwareIndex: the RetrievalAttention key index. A graph over the keys of one kv head,
// built from the prefill queries of that head's query-head group so that a decode query (which
// is out of distribution to the keys) reaches its top inner-product keys while scoring 1-3% of
// them.
//
// Build (RoarGraph-style projection):
//   1. take up to max_build_queries prefill queries (one from each of that many equal buckets
//      of the n_queries given, at a hashed offset inside the bucket);
//   2. find each one's exact top-`build_topk` keys by inner product (blocked cblas_sgemm);
//   3. project: the query's best key (the pivot) gets its other top keys as neighbour
//      candidates, each of those gets the pivot back, consecutive keys in the ranking are
//      linked; each node keeps <= max_degree neighbours chosen by an occlusion rule in L2
//      (keep p unless a kept r is closer to p than p is to the node, scaled by prune_alpha);
//   4. keys that no query linked (in-degree 0) get out-edges from a beam search of the
//      projected graph with the key itself as the query (no query attended to them, so their
//      placement matters little) and reverse edges into free slots of the found keys' lists
//      (never displacing projected edges), so every key is reachable;
//   5. entry points: the top key of each of num_entry_points k-means centroids of the build
//      queries (faiss::Clustering, 8 Lloyd iterations from evenly spaced build queries), so every
//      mode of the query distribution has an entry.
// Build runs the steps in the order 1, 2, 3, 5, 4 (attention_aware_build.cc); the graph upkeep
// shared with add() and the search are in attention_aware.cc.
// Search: score all entry points, then best-first beam search with a result list of size
// ef = max(k, ef_search); only keys popped from the frontier have their neighbours scored.
//
// SearchStats: scored = every q.k computed (entry points included), hops = nodes expanded.
// Thread safety: search() may run concurrently with itself; add()/remove() take an exclusive
// lock (readers-writer lock), so they are safe against concurrent searches.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "index/vector_index.h"
#include "services/common/mutex.h"

namespace ragserve::index {

struct AttentionAwareParams {
  // Exact top keys linked to each build query. Keep it >= the top_k searched: a key that is
  // rank 60 for every query is only linked when build_topk >= 60 (with 32 instead of 100,
  // recall@100 fell from 1.0 to ~0.5 on the synthetic workload). Larger: denser
  // neighbourhoods, bigger candidate lists at build; the sgemm cost does not depend on it.
  // Range 1..1024.
  int build_topk = 100;
  // Out-degree bound M of each key. Larger: higher recall per hop, but every expanded node
  // scores up to M keys, so keys touched grow ~linearly with it (16 -> 32 doubled keys touched
  // at the same recall on the synthetic workload). Range 4..256.
  int max_degree = 16;
  // At most this many prefill queries are used (evenly spread). Build cost is
  // O(max_build_queries * n_keys * d); fewer queries leave more keys reached only through the
  // insertion pass (step 4), which lowers recall for decode queries unlike any build query.
  int64_t max_build_queries = 16384;
  // k-means centroids of the build queries whose top keys become entry points, all scored at
  // the start of every search (distinct ones count as keys touched). Too few for the number
  // of query modes leaves searches stuck in a region the query does not attend to.
  int num_entry_points = 64;
  // Default beam width when SearchParams::ef_search is 0. Recall and keys touched both grow
  // with it (keys touched ~ ef * max_degree / 2 at most).
  int ef_search = 100;
  // Beam width used to link keys in step 4 and in add(). Larger: better-placed new keys,
  // slower build/add.
  int insert_ef = 32;
  // Reverse edges added per inserted key (step 4 and add()), only into lists with free slots
  // (max_degree * 1.5); at least 1 keeps it reachable.
  int insert_reverse_links = 8;
  // Occlusion slack (>= 1.0): 1.0 is the strict RNG rule (sparsest, most diverse lists);
  // larger keeps more near-duplicate neighbours. Only matters when a node has > max_degree
  // candidates.
  float prune_alpha = 1.2f;
};

// InvalidArgument naming the first parameter out of its range (see AttentionAwareParams).
Status ValidateAttentionAwareParams(const AttentionAwareParams& p);

class AttentionAwareIndex final : public VectorIndex {
 public:
  // Builds the graph over keys[n_keys*dim] (ids key_ids[n_keys], or 0..n_keys-1 when null)
  // from queries[n_queries*dim] (prefill queries of all query heads of the group, any order).
  // InvalidArgument on dim < 1, n_keys < 1, n_queries < 1, NaN/Inf input, negative or
  // duplicate ids, or parameters out of range (the message names the value).
  static StatusOr<std::unique_ptr<AttentionAwareIndex>> Build(
      int dim, int64_t n_keys, const float* keys, int64_t n_queries, const float* queries,
      const AttentionAwareParams& params = {}, const int64_t* key_ids = nullptr);
  // Loads a file written by save(); DataLoss on a malformed or truncated file (also on a file of
  // the pre-envelope "AKRIAWA1" layout, which is no longer read: rebuild it from the queries).
  static StatusOr<std::unique_ptr<AttentionAwareIndex>> Load(const std::string& path);

  int dim() const override { return dim_; }
  Metric metric() const override { return Metric::kInnerProduct; }
  int64_t size() const override;
  int64_t memory_bytes() const override;
  std::string_view kind() const override { return "attention_aware"; }
  const AttentionAwareParams& params() const { return params_; }

  // Inserts keys (e.g. tokens leaving the static window during decode): each is linked to the
  // result of a beam search (insert_ef) with the build-query centroid that scores it highest
  // as the query, i.e. next to the keys that the queries likely to attend to it reach, plus
  // reverse edges into free slots. An existing id is replaced (old node tombstoned).
  Status add(int64_t n, const float* x, const int64_t* ids) override;
  // Beam search per query (OpenMP over queries).
  Status search(int64_t n, const float* q, int k, float* distances, int64_t* ids,
                const SearchParams& params = {}) const override;
  // Tombstones ids: still traversed, never returned.
  StatusOr<int64_t> remove(int64_t n, const int64_t* ids) override;
  Status save(const std::string& path) const override;

  // Mean out-degree and the number of nodes nothing points to (diagnostics for tests/bench).
  double mean_degree() const;
  int64_t unreachable_nodes() const;

 private:
  AttentionAwareIndex(int dim, const AttentionAwareParams& p) : dim_(dim), params_(p) {}

  // Build steps (attention_aware_build.cc), on an index no other thread sees yet (Build holds
  // its mu_ all the same, so that the analysis checks them).
  // Copies the keys and maps their ids (InvalidArgument on a negative or duplicate id).
  Status InitNodes(int64_t n_keys, const float* keys, const int64_t* key_ids)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Steps 2-3: each build query bq[nq*dim]'s exact top keys, projected into pruned out-edges.
  void LinkQueryNeighbourhoods(int64_t nq, const float* bq) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Step 5: centroids_ and entry_ from the build queries.
  Status ChooseEntryPoints(int64_t nq, const float* bq) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Step 4: links every key nothing points to; returns how many there were.
  int64_t LinkUnreachedKeys() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Graph helpers: mu_ held, shared for reads, exclusive for writes.
  const float* row(int64_t r) const ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    return keys_.data() + r * dim_;
  }
  void BeamSearch(const float* q, int ef, std::vector<std::pair<float, int32_t>>* out,
                  int64_t* scored, int64_t* hops) const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  std::vector<int32_t> Prune(int32_t node, std::vector<int32_t> cands, int max_out) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  void RecountInDegrees() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Per row: 1 when an edge points to it or it is an entry point.
  std::vector<uint8_t> Reached() const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // Appends from->to when from's list is shorter than cap; false when it is not.
  bool AddReverseEdge(int32_t from, int32_t to, int cap) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The build-query centroid with the largest inner product with key (key itself if none).
  const float* InsertionQuery(const float* key) const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  void LinkNewNode(int32_t node, const std::vector<std::pair<float, int32_t>>& found)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const int dim_;
  const AttentionAwareParams params_;
  mutable SharedMutex mu_;
  std::vector<float> keys_ ABSL_GUARDED_BY(mu_);                   // [rows, dim]
  std::vector<int64_t> ids_ ABSL_GUARDED_BY(mu_);                  // row -> id
  std::unordered_map<int64_t, int32_t> row_ ABSL_GUARDED_BY(mu_);  // live id -> row
  std::vector<std::vector<int32_t>> adj_ ABSL_GUARDED_BY(mu_);     // out-edges per row
  std::vector<uint8_t> dead_ ABSL_GUARDED_BY(mu_);                 // tombstones per row
  std::vector<int32_t> indeg_ ABSL_GUARDED_BY(mu_);                // in-degree per row
  std::vector<int32_t> entry_ ABSL_GUARDED_BY(mu_);                // entry-point rows
  std::vector<float> centroids_ ABSL_GUARDED_BY(mu_);              // [E, dim] build-query centroids
};

}  // namespace ragserve::index
