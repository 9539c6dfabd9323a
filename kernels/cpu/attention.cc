#include "kernels/cpu/attention.h"

#include <immintrin.h>

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

// ---- The bandwidth kernel (AVX2/FMA) ----------------------------------------------------------
// Decode attention is a scan of K and V: at ~30 GB/s per core a key row of d = 128 f32 takes
// ~17 ns, so the arithmetic per row must fit in that. Two passes, each reading its matrix once:
//   1. scores s[hh][j] = scale * q_hh . k_j for every head of the group from one read of k_j
//      (8 independent accumulators: (heads x keys) = 4x2, 2x4 or 1x8, reduced by one hadd tree);
//   2. p = exp(s - max) per head (vectorized exp), then o_hh += p[hh][j] v_j from one read of
//      each row v_j, in memory order, for all heads (the h x d accumulators stay in L1).
// The scores ([h, n] f32) are a small fraction of the bytes of K and V (h / (2 d)).

#define RS_ATTN_AVX2 __attribute__((target("avx2,fma")))

bool HasAvx2() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
}

// [sum(a0), ..., sum(a7)].
RS_ATTN_AVX2 inline __m256 Sum8(__m256 a0, __m256 a1, __m256 a2, __m256 a3, __m256 a4, __m256 a5,
                                __m256 a6, __m256 a7) {
  const __m256 t0 = _mm256_hadd_ps(a0, a1), t1 = _mm256_hadd_ps(a2, a3);
  const __m256 t2 = _mm256_hadd_ps(a4, a5), t3 = _mm256_hadd_ps(a6, a7);
  const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

// e^x (Cephes expf: |relative error| < 2e-7 on [-87, 0]; below -87.3 it returns 0 or a tiny
// value, where the exact result is < 1e-37 anyway).
RS_ATTN_AVX2 inline __m256 Exp8(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.3f));
  x = _mm256_min_ps(x, _mm256_set1_ps(88.3f));
  const __m256 fx = _mm256_floor_ps(
      _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
  const __m256i e =
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

// Rows ahead that ScoreKeys prefetches: its rows are read 2-8 at a time, which the hardware
// prefetchers alone followed at ~6 GB/s at 128K keys (2.6-3.5 ms with this prefetch vs 10-12 ms
// without for 64 MB of K, measured on the loaded machine; the row-sequential V pass gained
// nothing from the same prefetch).
constexpr int64_t kPrefetchRows = 8;

// Scores of HB heads (q rows, stride d) against keys [j0, j1): s[hh * lds + j]. d % 8 == 0.
template <int HB>
RS_ATTN_AVX2 void ScoreKeys(const float* q, int d, const float* k, int64_t ldk, int64_t j0,
                            int64_t j1, float scale, float* s, int64_t lds) {
  constexpr int KB = 8 / HB;  // keys per iteration: HB x KB = 8 accumulators
  const __m256 vs = _mm256_set1_ps(scale);
  int64_t j = j0;
  for (; j + KB <= j1; j += KB) {
    __m256 acc[8];
    for (int a = 0; a < 8; ++a) acc[a] = _mm256_setzero_ps();
    const float* kj = k + j * ldk;
    if (j + kPrefetchRows + KB <= j1) {
      for (int kk = 0; kk < KB; ++kk) {
        const char* row = reinterpret_cast<const char*>(kj + (kPrefetchRows + kk) * ldk);
        for (int c = 0; c < d; c += 16) _mm_prefetch(row + c * sizeof(float), _MM_HINT_T0);
      }
    }
    for (int c = 0; c < d; c += 8) {
      __m256 kv[KB];
      for (int kk = 0; kk < KB; ++kk) kv[kk] = _mm256_loadu_ps(kj + kk * ldk + c);
      for (int hh = 0; hh < HB; ++hh) {
        const __m256 qv = _mm256_loadu_ps(q + hh * d + c);
        for (int kk = 0; kk < KB; ++kk) {
          acc[hh * KB + kk] = _mm256_fmadd_ps(qv, kv[kk], acc[hh * KB + kk]);
        }
      }
    }
    alignas(32) float r[8];
    _mm256_store_ps(
        r, _mm256_mul_ps(Sum8(acc[0], acc[1], acc[2], acc[3], acc[4], acc[5], acc[6], acc[7]), vs));
    for (int hh = 0; hh < HB; ++hh) {
      for (int kk = 0; kk < KB; ++kk) s[hh * lds + j + kk] = r[hh * KB + kk];
    }
  }
  for (; j < j1; ++j) {  // the last < KB keys
    for (int hh = 0; hh < HB; ++hh) {
      __m256 acc = _mm256_setzero_ps();
      for (int c = 0; c < d; c += 8) {
        acc =
            _mm256_fmadd_ps(_mm256_loadu_ps(q + hh * d + c), _mm256_loadu_ps(k + j * ldk + c), acc);
      }
      alignas(32) float r[8];
      _mm256_store_ps(r, acc);
      float t = 0;
      for (float x : r) t += x;
      s[hh * lds + j] = scale * t;
    }
  }
}

// Scores of all h heads against keys [0, n), in key blocks (a block's keys stay in cache for
// the next group of heads).
RS_ATTN_AVX2 void ScoreAll(const float* q, int h, const float* k, int64_t ldk, int64_t n, int d,
                           float scale, float* s) {
  constexpr int64_t kBlock = 256;
  for (int64_t j0 = 0; j0 < n; j0 += kBlock) {
    const int64_t j1 = std::min(n, j0 + kBlock);
    int hh = 0;
    for (; hh + 4 <= h; hh += 4) ScoreKeys<4>(q + hh * d, d, k, ldk, j0, j1, scale, s + hh * n, n);
    if (hh + 2 <= h) {
      ScoreKeys<2>(q + hh * d, d, k, ldk, j0, j1, scale, s + hh * n, n);
      hh += 2;
    }
    if (hh < h) ScoreKeys<1>(q + hh * d, d, k, ldk, j0, j1, scale, s + hh * n, n);
  }
}

// p = exp(s - max) in place over n scores; returns (max, sum of p).
RS_ATTN_AVX2 std::pair<float, double> ExpInPlace(float* s, int64_t n) {
  __m256 vm = _mm256_set1_ps(kNegInf);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) vm = _mm256_max_ps(vm, _mm256_loadu_ps(s + j));
  alignas(32) float r[8];
  _mm256_store_ps(r, vm);
  float mx = kNegInf;
  for (float x : r) mx = std::max(mx, x);
  for (int64_t t = j; t < n; ++t) mx = std::max(mx, s[t]);
  const __m256 m8 = _mm256_set1_ps(mx);
  double sum = 0;
  constexpr int64_t kChunk = 1024;  // float partial sums stay short; the total is a double
  for (int64_t c0 = 0; c0 < n; c0 += kChunk) {
    const int64_t c1 = std::min(n, c0 + kChunk);
    __m256 acc = _mm256_setzero_ps();
    int64_t t = c0;
    for (; t + 8 <= c1; t += 8) {
      const __m256 p = Exp8(_mm256_sub_ps(_mm256_loadu_ps(s + t), m8));
      _mm256_storeu_ps(s + t, p);
      acc = _mm256_add_ps(acc, p);
    }
    _mm256_store_ps(r, acc);
    double part = 0;
    for (float x : r) part += x;
    for (; t < c1; ++t) {
      s[t] = std::exp(s[t] - mx);
      part += s[t];
    }
    sum += part;
  }
  return {mx, sum};
}

// o[hh] += p[hh * n + j] * v_j for HB heads and one V row (d % 8 == 0). The accumulators live in
// o (L1): a row is read once, in memory order, for all heads of the group. (Summing column strips
// of a block of rows in registers instead was 4x slower at 128K keys: each strip pass touches
// one cache line per row, which the prefetchers do not follow.)
template <int HB>
RS_ATTN_AVX2 inline void AddRow(const float* p, int64_t n, int64_t j, const float* vr, int d,
                                float* o) {
  __m256 w[HB];
  for (int hh = 0; hh < HB; ++hh) w[hh] = _mm256_broadcast_ss(p + hh * n + j);
  for (int c = 0; c < d; c += 8) {
    const __m256 x = _mm256_loadu_ps(vr + c);
    for (int hh = 0; hh < HB; ++hh) {
      float* oc = o + hh * d + c;
      _mm256_storeu_ps(oc, _mm256_fmadd_ps(w[hh], x, _mm256_loadu_ps(oc)));
    }
  }
}

// o[hh] += sum_j p[hh * n + j] v_j for all h heads; d % 8 == 0.
RS_ATTN_AVX2 void WeightedAll(const float* p, int h, int64_t n, const float* v, int64_t ldv, int d,
                              float* o) {
  for (int64_t j = 0; j < n; ++j) {
    const float* vr = v + j * ldv;
    int hh = 0;
    for (; hh + 4 <= h; hh += 4) AddRow<4>(p + hh * n, n, j, vr, d, o + hh * d);
    if (hh + 2 <= h) {
      AddRow<2>(p + hh * n, n, j, vr, d, o + hh * d);
      hh += 2;
    }
    if (hh < h) AddRow<1>(p + hh * n, n, j, vr, d, o + hh * d);
  }
}

// The dense partial with the kernels above (d % 8 == 0, AVX2).
void AttendDenseAvx2(const float* q, int h, const float* k, int64_t ldk, const float* v,
                     int64_t ldv, int64_t n, int d, float scale, float* o, float* lse) {
  thread_local std::vector<float> scores;
  scores.resize(static_cast<size_t>(h) * n);
  float* s = scores.data();
  ScoreAll(q, h, k, ldk, n, d, scale, s);
  std::vector<double> sums(static_cast<size_t>(h));
  for (int hh = 0; hh < h; ++hh) {
    auto [mx, sum] = ExpInPlace(s + hh * n, n);
    sums[hh] = sum;
    lse[hh] = mx + static_cast<float>(std::log(sum));
  }
  std::fill(o, o + static_cast<int64_t>(h) * d, 0.0f);
  WeightedAll(s, h, n, v, ldv, d, o);
  for (int hh = 0; hh < h; ++hh) {
    const float inv = static_cast<float>(1.0 / sums[hh]);
    for (int i = 0; i < d; ++i) o[static_cast<int64_t>(hh) * d + i] *= inv;
  }
}

}  // namespace

void KeyScores(const float* q, int h, const float* k, int64_t ldk, int64_t n, int d, float scale,
               float* s) {
  if (HasAvx2() && d % 8 == 0) {
    ScoreAll(q, h, k, ldk, n, d, scale, s);
    return;
  }
  for (int hh = 0; hh < h; ++hh) {
    for (int64_t j = 0; j < n; ++j) {
      s[hh * n + j] = scale * Dot(q + static_cast<int64_t>(hh) * d, k + j * ldk, d);
    }
  }
}

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
  if (n > 0 && d % 8 == 0 && HasAvx2()) {
    AttendDenseAvx2(q, h, k, ldk, v, ldv, n, d, scale, o, lse);
    return;
  }
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
