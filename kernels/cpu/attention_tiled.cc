// The tiled attention of prefill (kernels/cpu/attention.h: AttentionTiled): kept
// apart from attention.cc, which stays free of BLAS and the thread pool (fuzz targets link it).
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu/attention.h"
#include "kernels/cpu/blas_util.h"
#include "kernels/cpu/spin_pool.h"

namespace ragserve::kernels {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

}  // namespace

void AttentionPartialParallel(const float* q, int h, const float* k, int64_t ldk, const float* v,
                              int64_t ldv, int64_t n, int d, float scale, float* o, float* lse,
                              int threads) {
  constexpr int64_t kMinKeys = 4096;  // per thread: below, a fork/join costs more than it saves
  const int parts = static_cast<int>(std::min<int64_t>(std::max(1, threads), n / kMinKeys));
  if (parts <= 1) {
    AttentionPartial(q, h, k, ldk, v, ldv, n, d, scale, o, lse);
    return;
  }
  const int64_t hd = int64_t{h} * d;
  std::vector<float> po(static_cast<size_t>(parts) * hd), pl(static_cast<size_t>(parts) * h);
  ParallelFor(parts, parts, [&](int64_t t) {
    const int64_t a = n * t / parts, b = n * (t + 1) / parts;
    AttentionPartial(q, h, k + a * ldk, ldk, v + a * ldv, ldv, b - a, d, scale, po.data() + t * hd,
                     pl.data() + t * h);
  });
  std::copy(po.begin(), po.begin() + hd, o);
  std::copy(pl.begin(), pl.begin() + h, lse);
  for (int t = 1; t < parts; ++t) {
    MergePartial(o, lse, po.data() + t * hd, pl.data() + t * h, h, d);
  }
}

void AttentionTiled(const float* q, int n, int heads, int kv_heads, int d, const float* k,
                    const float* v, int64_t len, bool causal, int64_t window, float scale, float* o,
                    float* lse, int threads) {
  constexpr int kQueries = 32;  // queries per block (x group heads = rows of a tile)
  constexpr int kKeys = 256;    // keys per block
  internal::SingleThreadedBlas();
  const int group = heads / kv_heads;
  const int64_t row = int64_t{kv_heads} * d;  // K/V row stride
  const int64_t base = len - n;
  const int64_t blocks = (n + kQueries - 1) / kQueries;
  ParallelFor(threads, blocks * kv_heads, [&](int64_t t) {
    const int kvh = static_cast<int>(t % kv_heads);
    const int64_t q0 = (t / kv_heads) * kQueries;
    const int nq = static_cast<int>(std::min<int64_t>(kQueries, n - q0));
    const int rows = nq * group;  // tile row r: query q0 + r / group, head kvh * group + r % group
    std::vector<float> qt(static_cast<size_t>(rows) * d), acc(qt.size(), 0.0f);
    std::vector<float> s(static_cast<size_t>(rows) * kKeys);
    std::vector<float> m(static_cast<size_t>(rows), kNegInf), l(static_cast<size_t>(rows), 0.0f);
    for (int r = 0; r < rows; ++r) {
      const float* src = q + ((q0 + r / group) * heads + int64_t{kvh} * group + r % group) * d;
      std::copy(src, src + d, qt.data() + int64_t{r} * d);
    }
    // Keys any query of the block sees: [first query's window start, last query's index].
    // (A block: every key.)
    const int64_t hi = causal ? base + q0 + nq : len;
    const int64_t lo = causal && window > 0 ? std::max<int64_t>(0, base + q0 + 1 - window) : 0;
    for (int64_t kb = lo; kb < hi; kb += kKeys) {
      const int bk = static_cast<int>(std::min<int64_t>(kKeys, hi - kb));
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, bk, d, scale, qt.data(), d,
                  k + kb * row + int64_t{kvh} * d, static_cast<int>(row), 0.0f, s.data(), kKeys);
      for (int r = 0; r < rows; ++r) {
        const int64_t idx = causal ? base + q0 + r / group : len - 1;  // last key it sees
        const int64_t first = causal && window > 0 ? std::max<int64_t>(0, idx + 1 - window) : 0;
        // Visible keys of this block for this row: [jb, je) in block coordinates.
        const int jb = static_cast<int>(std::clamp<int64_t>(first - kb, 0, bk));
        const int je = static_cast<int>(std::clamp<int64_t>(idx + 1 - kb, 0, bk));
        float* sr = s.data() + int64_t{r} * kKeys;
        float mx = m[r];
        for (int j = jb; j < je; ++j) mx = std::max(mx, sr[j]);
        float* ar = acc.data() + int64_t{r} * d;
        if (mx == kNegInf) {  // nothing visible yet for this row
          std::fill(sr, sr + bk, 0.0f);
          continue;
        }
        const float alpha = m[r] == kNegInf ? 0.0f : std::exp(m[r] - mx);
        float sum = 0.0f;
        for (int j = 0; j < bk; ++j) {
          const float p = j >= jb && j < je ? std::exp(sr[j] - mx) : 0.0f;
          sr[j] = p;
          sum += p;
        }
        l[r] = l[r] * alpha + sum;
        m[r] = mx;
        if (alpha != 1.0f) {
          for (int i = 0; i < d; ++i) ar[i] *= alpha;
        }
      }
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, d, bk, 1.0f, s.data(), kKeys,
                  v + kb * row + int64_t{kvh} * d, static_cast<int>(row), 1.0f, acc.data(), d);
    }
    for (int r = 0; r < rows; ++r) {
      const int64_t head = (q0 + r / group) * heads + int64_t{kvh} * group + r % group;
      float* orow = o + head * d;
      const float* ar = acc.data() + int64_t{r} * d;
      if (l[r] == 0.0f) {  // no visible key (an empty block)
        std::fill(orow, orow + d, 0.0f);
        lse[head] = kNegInf;
        continue;
      }
      const float inv = 1.0f / l[r];
      for (int i = 0; i < d; ++i) orow[i] = ar[i] * inv;
      lse[head] = m[r] + std::log(l[r]);
    }
  });
}

}  // namespace ragserve::kernels
