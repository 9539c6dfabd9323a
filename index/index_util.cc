#include "index/internal/index_util.h"

#include <cblas.h>

#include <algorithm>
#include <unordered_map>

#include "kernels/cpu/attention.h"

namespace ragserve::index::internal {

Status CheckAddArgs(int64_t n, const float* x, const int64_t* ids, int dim) {
  RS_CHECK_ARG(n >= 0, "add: n must be >= 0, got ", n);
  if (n == 0) return OkStatus();
  RS_CHECK_ARG(x != nullptr && ids != nullptr, "add: null vector or id array");
  for (int64_t i = 0; i < n; ++i) {
    RS_CHECK_ARG(ids[i] >= 0, "add: id must be >= 0, got ", ids[i], " at position ", i);
  }
  return CheckFinite(n, dim, x, "add: vector");
}

Status CheckSearchArgs(int64_t n, const float* q, int k, const float* distances, const int64_t* ids,
                       int dim) {
  RS_CHECK_ARG(n >= 0, "search: n must be >= 0, got ", n);
  RS_CHECK_ARG(k >= 1, "search: k must be >= 1, got ", k);
  if (n == 0) return OkStatus();
  RS_CHECK_ARG(q != nullptr && distances != nullptr && ids != nullptr,
               "search: null query or output array");
  return CheckFinite(n, dim, q, "search: query");
}

Status CheckRemoveArgs(int64_t n, const int64_t* ids) {
  RS_CHECK_ARG(n >= 0, "remove: n must be >= 0, got ", n);
  RS_CHECK_ARG(n == 0 || ids != nullptr, "remove: null id array");
  return OkStatus();
}

Status CheckTrainArgs(int64_t n, const float* x, int dim, std::string_view what) {
  RS_CHECK_ARG(n >= 1 && x != nullptr, what, ": training set is empty (n=", n, ")");
  return CheckFinite(n, dim, x, StrCat(what, " train: vector"));
}

std::vector<float> NormalizedCopy(int64_t n, int dim, const float* x) {
  std::vector<float> out(x, x + n * dim);
  for (int64_t i = 0; i < n; ++i) {
    float* row = out.data() + i * dim;
    double s = 0;
    for (int j = 0; j < dim; ++j) s += static_cast<double>(row[j]) * row[j];
    if (s > 0) {
      const float inv = static_cast<float>(1.0 / std::sqrt(s));
      for (int j = 0; j < dim; ++j) row[j] *= inv;
    }
  }
  return out;
}

void PadRow(Metric metric, int k, float* distances, int64_t* ids) {
  const float pad = HigherIsBetter(metric) ? -std::numeric_limits<float>::infinity()
                                           : std::numeric_limits<float>::infinity();
  for (int j = 0; j < k; ++j) {
    distances[j] = pad;
    ids[j] = -1;
  }
}

std::vector<int64_t> LastOccurrences(int64_t n, const int64_t* ids) {
  std::unordered_map<int64_t, int64_t> last;
  last.reserve(n);
  for (int64_t i = 0; i < n; ++i) last[ids[i]] = i;
  std::vector<int64_t> out;
  out.reserve(last.size());
  if (static_cast<int64_t>(last.size()) == n) {
    for (int64_t i = 0; i < n; ++i) out.push_back(i);
    return out;
  }
  for (const auto& [id, i] : last) out.push_back(i);
  std::sort(out.begin(), out.end());
  return out;
}

void TopK::Push(float score, int64_t id) {
  auto worse_first = [this](const std::pair<float, int64_t>& a,
                            const std::pair<float, int64_t>& b) {
    // Max-heap on "badness": the front is the worst kept element.
    return Better(a.first, b.first);
  };
  if (!full()) {
    heap_.emplace_back(score, id);
    std::push_heap(heap_.begin(), heap_.end(), worse_first);
  } else if (Better(score, worst())) {
    std::pop_heap(heap_.begin(), heap_.end(), worse_first);
    heap_.back() = {score, id};
    std::push_heap(heap_.begin(), heap_.end(), worse_first);
  }
}

void TopK::Finish(Metric metric, float* distances, int64_t* ids) {
  std::sort(heap_.begin(), heap_.end(), [this](const auto& a, const auto& b) {
    if (a.first != b.first) return Better(a.first, b.first);
    return a.second < b.second;
  });
  PadRow(metric, k_, distances, ids);
  for (size_t j = 0; j < heap_.size(); ++j) {
    distances[j] = heap_[j].first;
    ids[j] = heap_[j].second;
  }
}

namespace {

constexpr int64_t kQueryBlock = 256;
constexpr int64_t kRowBlock = 8192;
constexpr int64_t kScanQueries = 16;  // up to this many queries: kernels::KeyScores, not sgemm

// Offers the scores of rows [r0, r0 + nr) (scores[i * nr + j] for query i) to the tops.
void OfferBlock(const ExactRows& rows, bool l2, const float* q_norms, int64_t r0, int64_t nr,
                const float* scores, const std::function<bool(int64_t)>* filter,
                std::vector<TopK>* tops) {
  const int64_t nq = static_cast<int64_t>(tops->size());
#pragma omp parallel for schedule(static) if (nq * nr > 65536)
  for (int64_t i = 0; i < nq; ++i) {
    TopK& top = (*tops)[i];
    const float* s = scores + i * nr;
    for (int64_t j = 0; j < nr; ++j) {
      const int64_t r = r0 + j;
      const float v = l2 ? std::max(0.0f, q_norms[i] + rows.sq_norms[r] - 2 * s[j]) : s[j];
      if (!top.Accepts(v)) continue;
      const int64_t id = rows.ids != nullptr ? rows.ids[r] : r;
      if (filter != nullptr && !(*filter)(id)) continue;
      top.Push(v, id);
    }
  }
}

}  // namespace

void ExactTopK(const ExactRows& rows, Metric metric, int64_t nq, const float* q, int k,
               const std::function<bool(int64_t)>* filter, float* distances, int64_t* ids) {
  const int d = rows.dim;
  const bool l2 = metric == Metric::kL2;
  std::vector<float> scores(
      static_cast<size_t>(std::min(nq, kQueryBlock) * std::min(rows.rows, kRowBlock)));
  std::vector<float> q_norms(l2 ? static_cast<size_t>(nq) : 0);
  for (int64_t i = 0; l2 && i < nq; ++i) q_norms[i] = Dot(q + i * d, q + i * d, d);
  for (int64_t q0 = 0; q0 < nq; q0 += kQueryBlock) {
    const int64_t qn = std::min(kQueryBlock, nq - q0);
    std::vector<TopK> tops(static_cast<size_t>(qn), TopK(k, HigherIsBetter(metric)));
    for (int64_t r0 = 0; r0 < rows.rows; r0 += kRowBlock) {
      const int64_t nr = std::min(kRowBlock, rows.rows - r0);
      // scores[qn, nr] = q[q0:q0+qn] * x[r0:r0+nr]^T
      if (qn <= kScanQueries) {
        // A few queries (a decode step's heads): one pass over the rows at memory bandwidth;
        // sgemm would pack (copy) every row block first.
        kernels::KeyScores(q + q0 * d, static_cast<int>(qn), rows.x + r0 * d, d, nr, d, 1.0f,
                           scores.data());
      } else {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(qn),
                    static_cast<int>(nr), d, 1.0f, q + q0 * d, d, rows.x + r0 * d, d, 0.0f,
                    scores.data(), static_cast<int>(nr));
      }
      OfferBlock(rows, l2, q_norms.data() + (l2 ? q0 : 0), r0, nr, scores.data(), filter, &tops);
    }
    for (int64_t i = 0; i < qn; ++i) {
      tops[i].Finish(metric, distances + (q0 + i) * k, ids + (q0 + i) * k);
    }
  }
}

}  // namespace ragserve::index::internal
