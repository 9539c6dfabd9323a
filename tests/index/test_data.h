// Seeded synthetic data for the index tests: Gaussian clusters in d dimensions and an exact
// brute-force oracle written independently of FlatIndex (double accumulation, full sort).
#pragma once

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "index/vector_index.h"

namespace ragserve::index::testing {

// <temp dir>/rs_<name>_<pid>, removed if it exists (not created).
inline std::string FreshDir(const std::string& name) {
  const auto p =
      std::filesystem::temp_directory_path() / ("rs_" + name + "_" + std::to_string(::getpid()));
  std::filesystem::remove_all(p);
  return p.string();
}

// n points around `clusters` centers (centers ~ N(0,1), points = center + N(0, spread^2)).
inline std::vector<float> ClusteredData(int64_t n, int dim, int clusters, uint64_t seed,
                                        float spread = 0.6f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::vector<float> centers(static_cast<size_t>(clusters) * dim);
  for (auto& c : centers) c = g(rng);
  std::uniform_int_distribution<int> pick(0, clusters - 1);
  std::vector<float> x(static_cast<size_t>(n) * dim);
  for (int64_t i = 0; i < n; ++i) {
    const int c = pick(rng);
    for (int j = 0; j < dim; ++j) x[i * dim + j] = centers[c * dim + j] + spread * g(rng);
  }
  return x;
}

inline std::vector<int64_t> Iota(int64_t n, int64_t start = 0) {
  std::vector<int64_t> ids(n);
  std::iota(ids.begin(), ids.end(), start);
  return ids;
}

// Exact top-k ids by brute force with double precision; cosine normalizes both sides.
inline std::vector<int64_t> BruteForce(Metric metric, const std::vector<float>& x,
                                       const std::vector<int64_t>& ids, int dim, const float* q,
                                       int k) {
  const int64_t n = static_cast<int64_t>(ids.size());
  std::vector<std::pair<double, int64_t>> s(n);
  double qn = 0;
  for (int j = 0; j < dim; ++j) qn += double(q[j]) * q[j];
  for (int64_t i = 0; i < n; ++i) {
    double dot = 0, l2 = 0, xn = 0;
    for (int j = 0; j < dim; ++j) {
      const double a = q[j], b = x[i * dim + j];
      dot += a * b;
      l2 += (a - b) * (a - b);
      xn += b * b;
    }
    double score = metric == Metric::kL2             ? l2
                   : metric == Metric::kInnerProduct ? -dot
                                                     : -dot / std::sqrt(qn * xn);
    s[i] = {score, ids[i]};
  }
  const int kk = std::min<int64_t>(k, n);
  std::partial_sort(s.begin(), s.begin() + kk, s.end());
  std::vector<int64_t> out(kk);
  for (int i = 0; i < kk; ++i) out[i] = s[i].second;
  return out;
}

// Mean fraction of the true top-k found in the approximate top-k (rows of k ids).
inline double RecallAtK(const std::vector<int64_t>& truth, const std::vector<int64_t>& got,
                        int64_t nq, int truth_k, int k) {
  double hits = 0;
  for (int64_t i = 0; i < nq; ++i) {
    std::set<int64_t> t(truth.begin() + i * truth_k, truth.begin() + i * truth_k + k);
    for (int j = 0; j < k; ++j) hits += t.count(got[i * k + j]);
  }
  return hits / (double(nq) * k);
}

}  // namespace ragserve::index::testing
