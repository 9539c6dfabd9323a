// Internal helpers shared by the index implementations (not part of any public contract): the one
// set of argument checks behind the rules of vector_index.h, and the one exact top-k.
#pragma once

#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <string_view>
#include <utility>
#include <vector>

#include "index/vector_index.h"
#include "services/common/status.h"

namespace ragserve::index::internal {

// add(): n >= 0; for n > 0 non-null arrays, ids >= 0 and finite values.
Status CheckAddArgs(int64_t n, const float* x, const int64_t* ids, int dim);
// search(): n >= 0, k >= 1; for n > 0 non-null arrays and finite queries.
Status CheckSearchArgs(int64_t n, const float* q, int k, const float* distances, const int64_t* ids,
                       int dim);
// remove(): n >= 0; for n > 0 a non-null id array.
Status CheckRemoveArgs(int64_t n, const int64_t* ids);
// train(): n >= 1, a non-null array and finite values (`what` names the index in messages).
Status CheckTrainArgs(int64_t n, const float* x, int dim, std::string_view what);

// Returns x normalized to unit L2 norm row by row (zero rows stay zero).
std::vector<float> NormalizedCopy(int64_t n, int dim, const float* x);
// The n vectors x[n*dim] as an index of `metric` stores and compares them: x itself, or for
// cosine a unit-norm copy held in *buf.
inline const float* MetricInput(Metric metric, int64_t n, int dim, const float* x,
                                std::vector<float>* buf) {
  if (metric != Metric::kCosine) return x;
  *buf = NormalizedCopy(n, dim, x);
  return buf->data();
}
// Fills one result row with the padding value of `metric` (id -1).
void PadRow(Metric metric, int k, float* distances, int64_t* ids);
// Indexes of the last occurrence of every distinct id (so a batch with duplicates acts like
// sequential upserts: the last one wins), in increasing order.
std::vector<int64_t> LastOccurrences(int64_t n, const int64_t* ids);

// Dot product of two d-vectors (vectorized).
inline float Dot(const float* a, const float* b, int d) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int i = 0; i < d; ++i) s += a[i] * b[i];
  return s;
}

// Bounded top-k collector: keeps the k best (score, id) pairs for one query.
class TopK {
 public:
  TopK(int k, bool higher_is_better) : k_(k), higher_(higher_is_better) { heap_.reserve(k); }
  // Worst score kept so far (only meaningful when full()).
  float worst() const { return heap_.front().first; }
  bool full() const { return static_cast<int>(heap_.size()) >= k_; }
  // True when `score` would enter the set.
  bool Accepts(float score) const { return !full() || Better(score, worst()); }
  void Push(float score, int64_t id);
  // Writes the results best-first (ties: smaller id first), padding to k.
  void Finish(Metric metric, float* distances, int64_t* ids);

 private:
  bool Better(float a, float b) const { return higher_ ? a > b : a < b; }
  int k_;
  bool higher_;
  std::vector<std::pair<float, int64_t>> heap_;  // heap whose front is the worst kept
};

// The rows an exact search scans.
struct ExactRows {
  const float* x = nullptr;  // [rows, dim]
  int64_t rows = 0;
  int dim = 0;
  const float* sq_norms = nullptr;  // [rows] squared L2 norms; required for kL2
  const int64_t* ids = nullptr;     // [rows] ids reported (and filtered on); null: row numbers
};

// Exact top-k of nq queries q[nq*dim] against `rows`: kL2 gives squared L2 distances, any other
// metric q.x (cosine callers pass normalized vectors). Blocked cblas_sgemm (query blocks x row
// blocks) and a TopK per query, the heap pass parallel over the queries of a block with OpenMP
// (BLAS is never called inside an OpenMP region: the pthread OpenBLAS would oversubscribe).
// Ids failing `filter` (when set) never appear. Writes distances[nq*k] and ids[nq*k], best first.
void ExactTopK(const ExactRows& rows, Metric metric, int64_t nq, const float* q, int k,
               const std::function<bool(int64_t)>* filter, float* distances, int64_t* ids);

}  // namespace ragserve::index::internal
