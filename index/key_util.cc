#include "index/key_util.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "index/key_index.h"

namespace ragserve::index {

Status CheckFinite(const float* x, int64_t count, const char* what) {
  for (int64_t i = 0; i < count; ++i) {
    if (!std::isfinite(x[i])) {
      return InvalidArgument(StrCat(what, " element ", i, " is not finite (", x[i], ")"));
    }
  }
  return OkStatus();
}

Status CheckSearchArgs(int64_t n, const float* q, int k, int dim, const float* distances,
                       const int64_t* ids) {
  RS_CHECK_ARG(n >= 0, "number of queries must be >= 0, got ", n);
  RS_CHECK_ARG(k >= 1, "k must be >= 1, got ", k);
  RS_CHECK_ARG(n == 0 || (q != nullptr && distances != nullptr && ids != nullptr),
               "null query or output pointer");
  return CheckFinite(q, n * dim, "query");
}

namespace key_internal {
namespace {

// Min-heap of (score, row) keeping the k largest scores.
struct TopK {
  explicit TopK(int k) : k(k) { heap.reserve(k); }
  void Push(float s, int64_t row) {
    if (static_cast<int>(heap.size()) < k) {
      heap.emplace_back(s, row);
      std::push_heap(heap.begin(), heap.end(), Greater);
      if (static_cast<int>(heap.size()) == k) threshold = heap.front().first;
    } else if (s > threshold) {
      std::pop_heap(heap.begin(), heap.end(), Greater);
      heap.back() = {s, row};
      std::push_heap(heap.begin(), heap.end(), Greater);
      threshold = heap.front().first;
    }
  }
  static bool Greater(const std::pair<float, int64_t>& a, const std::pair<float, int64_t>& b) {
    return a.first > b.first;
  }
  int k;
  float threshold = -std::numeric_limits<float>::infinity();
  std::vector<std::pair<float, int64_t>> heap;
};

}  // namespace

void ExactTopK(int64_t nq, const float* q, int64_t nk, const float* keys, int d, int k,
               int64_t* top_rows, float* top_scores, const std::vector<uint8_t>* dead) {
  // BLAS (multi-threaded by OpenBLAS itself) computes a [query block x key block] score tile;
  // the heap pass over the tile is parallel over queries with OpenMP. BLAS is never called from
  // inside an OpenMP region (the pthread OpenBLAS would oversubscribe the cores).
  constexpr int64_t kQueryBlock = 256;
  constexpr int64_t kKeyBlock = 8192;
  std::vector<float> scores(static_cast<size_t>(kQueryBlock * kKeyBlock));
  for (int64_t q0 = 0; q0 < nq; q0 += kQueryBlock) {
    const int64_t qn = std::min(kQueryBlock, nq - q0);
    std::vector<TopK> tops(static_cast<size_t>(qn), TopK(k));
    for (int64_t k0 = 0; k0 < nk; k0 += kKeyBlock) {
      const int64_t kn = std::min(kKeyBlock, nk - k0);
      // scores[qn, kn] = q[q0:q0+qn] * keys[k0:k0+kn]^T
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(qn),
                  static_cast<int>(kn), d, 1.0f, q + q0 * d, d, keys + k0 * d, d, 0.0f,
                  scores.data(), static_cast<int>(kn));
#pragma omp parallel for schedule(static) if (qn * kn > 65536)
      for (int64_t i = 0; i < qn; ++i) {
        TopK& t = tops[i];
        const float* s = scores.data() + i * kn;
        for (int64_t j = 0; j < kn; ++j) {
          if (s[j] > t.threshold || static_cast<int>(t.heap.size()) < k) {
            if (dead != nullptr && (*dead)[k0 + j]) continue;
            t.Push(s[j], k0 + j);
          }
        }
      }
    }
    for (int64_t i = 0; i < qn; ++i) {
      auto& h = tops[i].heap;
      std::sort(h.begin(), h.end(), TopK::Greater);
      for (int j = 0; j < k; ++j) {
        const bool have = j < static_cast<int>(h.size());
        top_rows[(q0 + i) * k + j] = have ? h[j].second : -1;
        top_scores[(q0 + i) * k + j] = have ? h[j].first : -std::numeric_limits<float>::infinity();
      }
    }
  }
}

}  // namespace key_internal
}  // namespace ragserve::index
