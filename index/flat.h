// FlatIndex: exact (brute-force) search with BLAS sgemm in blocks and a partial top-k per query.
// It is the exact twin every approximate index is measured against (recall@k); over the keys of
// an attention head (kInnerProduct) it is the KV retrieval store's "exact" key index.
//
// Storage: n live vectors contiguous in RAM (n*dim floats) + ids; remove() moves the last row
// into the hole, so memory stays dense. Cosine vectors are normalized on add and on query.
// SearchStats: scored += n * size() (every stored vector is scored).
// Thread safety: search() takes a shared lock, add()/remove() an exclusive one (save() a shared
// one); any number of searches run concurrently; the lock prefers writers, so a stream of
// searches cannot starve an add().
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "index/internal/rw_mutex.h"
#include "index/vector_index.h"

namespace ragserve::index {

class FlatIndex final : public VectorIndex {
 public:
  // InvalidArgument when dim < 1.
  static StatusOr<std::unique_ptr<FlatIndex>> Create(int dim, Metric metric);
  // Loads a file written by save(); DataLoss on a corrupt file, NotFound when missing.
  static StatusOr<std::unique_ptr<FlatIndex>> Load(const std::string& path);

  int dim() const override { return dim_; }
  Metric metric() const override { return metric_; }
  int64_t size() const override;
  std::string_view kind() const override { return "flat"; }
  // Bytes held by vectors, norms and ids (approximate).
  int64_t memory_bytes() const override;
  // The rows n new ids take, with the arrays' growth when they pass their capacity (their
  // capacity at most doubles, to no less than the rows needed).
  int64_t memory_bytes_to_add(int64_t n) const override;
  Status add(int64_t n, const float* x, const int64_t* ids) override;
  // Exact top-k; params.filter is honored exactly (rows failing it are skipped).
  Status search(int64_t n, const float* q, int k, float* distances, int64_t* ids,
                const SearchParams& params = {}) const override;
  StatusOr<int64_t> remove(int64_t n, const int64_t* ids) override;
  Status save(const std::string& path) const override;

 private:
  FlatIndex(int dim, Metric metric) : dim_(dim), metric_(metric) {}

  const int dim_;
  const Metric metric_;
  mutable internal::RwMutex mu_;                   // writer-preferring (see internal/rw_mutex.h)
  std::vector<float> data_ ABSL_GUARDED_BY(mu_);   // rows * dim_
  std::vector<float> norms_ ABSL_GUARDED_BY(mu_);  // squared L2 norm per row (L2 only)
  std::vector<int64_t> ids_ ABSL_GUARDED_BY(mu_);  // id per row
  std::unordered_map<int64_t, int64_t> row_of_ ABSL_GUARDED_BY(mu_);  // id -> row
};

}  // namespace ragserve::index
