// HnswIndex: approximate search on an HNSW graph (hnswlib 0.6.2, through internal/hnsw_graph.h).
// Over the keys of an attention head (kInnerProduct, count_scored) it is the KV retrieval
// store's "hnsw" key index, RetrievalAttention's off-the-shelf ANN baseline.
//
// Parameters and their effect (defaults in brackets):
//   M [16]                graph degree; higher = better recall, more memory (~M*8 bytes/vector)
//                         and slower build.
//   ef_construction [200] candidate list while inserting; higher = better graph, slower build.
//   ef_search [64]        candidate list while searching (per call via SearchParams::ef_search,
//                         raised to k when smaller); higher = better recall, lower QPS.
//   initial_capacity [1024] slots allocated up front; the index doubles them when full.
//   count_scored [false]  count every distance a search computes into SearchStats::scored
//                         (costs an indirect call per distance; saved with the index).
// Removal marks the vector deleted (it stays a graph node and is skipped in results); adding the
// same id again reuses its slot. Filtered search over-fetches and widens until k hits pass the
// filter or the whole index was returned.
// Thread safety: search() takes a shared lock (hnswlib searches are safe side by side: the
// candidate list size is passed per call, never written to the graph); add()/remove() an
// exclusive one (a batch add inserts with OpenMP threads inside the lock); save() a shared one.
// The lock prefers writers, so a stream of searches cannot starve an add().
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "index/internal/rw_mutex.h"
#include "index/vector_index.h"

namespace ragserve::index {

namespace internal {
class HnswGraph;
}

struct HnswParams {
  int M = 16;
  int ef_construction = 200;
  int ef_search = 64;
  int64_t initial_capacity = 1024;
  uint64_t seed = 100;
  bool count_scored = false;
};

// InvalidArgument naming the bad field (M in [2, 2048], ef_* >= 1, capacity >= 1).
Status ValidateHnswParams(const HnswParams& p);

class HnswIndex final : public VectorIndex {
 public:
  static StatusOr<std::unique_ptr<HnswIndex>> Create(int dim, Metric metric,
                                                     const HnswParams& params = {});
  // Loads a file written by save(); ef_search and count_scored come from the file.
  static StatusOr<std::unique_ptr<HnswIndex>> Load(const std::string& path);
  ~HnswIndex() override;

  int dim() const override { return dim_; }
  Metric metric() const override { return metric_; }
  int64_t size() const override;
  std::string_view kind() const override { return "hnsw"; }
  int64_t memory_bytes() const override;
  // The slots the doubling in add() would allocate, plus a bound on n elements' upper levels
  // (an element has 1 / (M - 1) of them on average; the bound adds 4 standard deviations).
  int64_t memory_bytes_to_add(int64_t n) const override;
  Status add(int64_t n, const float* x, const int64_t* ids) override;
  Status search(int64_t n, const float* q, int k, float* distances, int64_t* ids,
                const SearchParams& params = {}) const override;
  StatusOr<int64_t> remove(int64_t n, const int64_t* ids) override;
  Status save(const std::string& path) const override;

  const HnswParams& params() const { return params_; }
  // Allocated slots (live + deleted + free).
  int64_t capacity() const;

 private:
  HnswIndex(int dim, Metric metric, const HnswParams& params);
  // Grows the graph to hold `fresh` more elements (doubling).
  Status Reserve(int64_t fresh) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Query q (normalized for cosine) into one result row; *scored gets the distances computed.
  void SearchOne(const float* q, int k, size_t ef, const std::function<bool(int64_t)>* filter,
                 float* distances, int64_t* ids, int64_t* scored) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);

  const int dim_;
  const Metric metric_;
  HnswParams params_;
  mutable internal::RwMutex mu_;  // writer-preferring (see internal/rw_mutex.h)
  std::unique_ptr<internal::HnswGraph> graph_ ABSL_GUARDED_BY(mu_);
  int64_t live_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace ragserve::index
