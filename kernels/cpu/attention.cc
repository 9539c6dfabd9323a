#include "kernels/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace ragserve::kernels {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

void WriteEmpty(int h, int d, float* o, float* lse) {
  std::fill(o, o + static_cast<int64_t>(h) * d, 0.0f);
  std::fill(lse, lse + h, kNegInf);
}

inline float Dot(const float* a, const float* b, int d) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int i = 0; i < d; ++i) s += a[i] * b[i];
  return s;
}

inline void Axpy(float a, const float* x, float* y, int d) {
#pragma omp simd
  for (int i = 0; i < d; ++i) y[i] += a * x[i];
}

// Shared body of the dense and gathered versions: `row(j)` gives the j-th key/value row index.
template <typename RowFn>
void AttendRows(const float* q, int h, const float* k, int64_t ldk, const float* v, int64_t ldv,
                int64_t m, RowFn row, int d, float scale, float* o, float* lse) {
  if (m == 0) {
    WriteEmpty(h, d, o, lse);
    return;
  }
  std::vector<float> scores(static_cast<size_t>(m));
  for (int hh = 0; hh < h; ++hh) {
    const float* qh = q + static_cast<int64_t>(hh) * d;
    float mx = kNegInf;
    for (int64_t j = 0; j < m; ++j) {
      scores[j] = scale * Dot(qh, k + row(j) * ldk, d);
      mx = std::max(mx, scores[j]);
    }
    float* oh = o + static_cast<int64_t>(hh) * d;
    std::fill(oh, oh + d, 0.0f);
    double sum = 0.0;
    for (int64_t j = 0; j < m; ++j) {
      const float p = std::exp(scores[j] - mx);
      sum += p;
      Axpy(p, v + row(j) * ldv, oh, d);
    }
    const float inv = static_cast<float>(1.0 / sum);
    for (int i = 0; i < d; ++i) oh[i] *= inv;
    lse[hh] = mx + static_cast<float>(std::log(sum));
  }
}

}  // namespace

void AttentionPartialRef(const float* q, int h, const float* k, int64_t ldk, const float* v,
                         int64_t ldv, int64_t n, int d, float scale, float* o, float* lse) {
  if (n == 0) {
    WriteEmpty(h, d, o, lse);
    return;
  }
  // Two passes per head in double precision: the textbook definition, no tricks.
  for (int hh = 0; hh < h; ++hh) {
    const float* qh = q + static_cast<int64_t>(hh) * d;
    std::vector<double> s(static_cast<size_t>(n));
    double mx = -std::numeric_limits<double>::infinity();
    for (int64_t j = 0; j < n; ++j) {
      double dot = 0.0;
      for (int i = 0; i < d; ++i) dot += static_cast<double>(qh[i]) * k[j * ldk + i];
      s[j] = scale * dot;
      mx = std::max(mx, s[j]);
    }
    double sum = 0.0;
    for (int64_t j = 0; j < n; ++j) sum += std::exp(s[j] - mx);
    for (int i = 0; i < d; ++i) {
      double acc = 0.0;
      for (int64_t j = 0; j < n; ++j) acc += std::exp(s[j] - mx) / sum * v[j * ldv + i];
      o[static_cast<int64_t>(hh) * d + i] = static_cast<float>(acc);
    }
    lse[hh] = static_cast<float>(mx + std::log(sum));
  }
}

void AttentionPartial(const float* q, int h, const float* k, int64_t ldk, const float* v,
                      int64_t ldv, int64_t n, int d, float scale, float* o, float* lse) {
  AttendRows(
      q, h, k, ldk, v, ldv, n, [](int64_t j) { return j; }, d, scale, o, lse);
}

void AttentionPartialGather(const float* q, int h, const float* k, int64_t ldk, const float* v,
                            int64_t ldv, const int64_t* idx, int64_t m, int d, float scale,
                            float* o, float* lse) {
  AttendRows(
      q, h, k, ldk, v, ldv, m, [idx](int64_t j) { return idx[j]; }, d, scale, o, lse);
}

void MergePartial(float* o_a, float* lse_a, const float* o_b, const float* lse_b, int h, int d) {
  for (int hh = 0; hh < h; ++hh) {
    const float la = lse_a[hh];
    const float lb = lse_b[hh];
    if (lb == kNegInf) continue;
    float* oa = o_a + static_cast<int64_t>(hh) * d;
    const float* ob = o_b + static_cast<int64_t>(hh) * d;
    if (la == kNegInf) {
      std::copy(ob, ob + d, oa);
      lse_a[hh] = lb;
      continue;
    }
    const float mx = std::max(la, lb);
    const float wa = std::exp(la - mx);
    const float wb = std::exp(lb - mx);
    const float inv = 1.0f / (wa + wb);
    for (int i = 0; i < d; ++i) oa[i] = (wa * oa[i] + wb * ob[i]) * inv;
    lse_a[hh] = mx + std::log(wa + wb);
  }
}

}  // namespace ragserve::kernels
