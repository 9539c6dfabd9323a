// Internal helpers of the key indexes (not a public contract of the index module).
#pragma once

#include <cstdint>
#include <vector>

namespace ragserve::index::key_internal {

// Exact maximum-inner-product top-k of nq queries q[nq*d] against nk rows keys[nk*d]:
// writes row numbers (0..nk-1, -1 padded) into top_rows[nq*k] and scores into top_scores[nq*k],
// best first. Blocked cblas_sgemm (query blocks x key blocks) plus a per-query min-heap;
// parallel over query blocks with OpenMP. Rows with (*dead)[row] != 0 (when dead is given) never
// appear in the result.
void ExactTopK(int64_t nq, const float* q, int64_t nk, const float* keys, int d, int k,
               int64_t* top_rows, float* top_scores, const std::vector<uint8_t>* dead = nullptr);

// Dot product of two d-vectors (vectorized).
inline float Dot(const float* a, const float* b, int d) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int i = 0; i < d; ++i) s += a[i] * b[i];
  return s;
}

}  // namespace ragserve::index::key_internal
