// The fast CPU backend (FastOps): OpenMP over output rows, AVX2/FMA/F16C GEMV selected at run time
// (function multiversioning: the CI build has no -march=native), OpenBLAS sgemm for prefill.
#include <cblas.h>
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/cpu/attention.h"
#include "kernels/cpu/ops.h"

namespace ragserve::kernels {
namespace {

thread_local int t_threads = 0;  // SetFastOpsThreads

// OpenBLAS's thread count (a weak reference: absent when another BLAS is linked).
extern "C" void openblas_set_num_threads(int) __attribute__((weak));

void SingleThreadedBlas() {
  static const bool once = [] {
    if (openblas_set_num_threads != nullptr) openblas_set_num_threads(1);
    return true;
  }();
  (void)once;
}

bool HasAvx2() {
  static const bool v = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                        __builtin_cpu_supports("f16c");
  return v;
}

// y[i * ldy + r] = x[i, :] . W[r, :] for rows r in [r0, r1) and i < m; W stored as T.
using GemvFn = void (*)(const float* x, int m, int64_t ldx, const void* w, int64_t cols, int64_t r0,
                        int64_t r1, float* y, int64_t ldy);

template <DType T>
inline float Elem(const void* base, int64_t i) {
  if constexpr (T == DType::kF32) {
    return static_cast<const float*>(base)[i];
  } else if constexpr (T == DType::kBF16) {
    return Bf16ToF32(static_cast<const uint16_t*>(base)[i]);
  } else {
    return F16ToF32(static_cast<const uint16_t*>(base)[i]);
  }
}

template <DType T>
void GemvScalar(const float* x, int m, int64_t ldx, const void* w, int64_t cols, int64_t r0,
                int64_t r1, float* y, int64_t ldy) {
  constexpr int64_t kEsize = T == DType::kF32 ? 4 : 2;
  std::vector<float> row(static_cast<size_t>(cols));
  for (int64_t r = r0; r < r1; ++r) {
    const char* wr = static_cast<const char*>(w) + r * cols * kEsize;
    if constexpr (T == DType::kF32) {
      std::memcpy(row.data(), wr, static_cast<size_t>(cols) * 4);
    } else {
      for (int64_t c = 0; c < cols; ++c) row[c] = Elem<T>(wr, c);
    }
    for (int i = 0; i < m; ++i) {
      const float* xi = x + i * ldx;
      float s = 0.0f;
#pragma omp simd reduction(+ : s)
      for (int64_t c = 0; c < cols; ++c) s += row[c] * xi[c];
      y[i * ldy + r] = s;
    }
  }
}

template <DType T>
__attribute__((target("avx2,fma,f16c"))) inline __m256 Load8(const char* wr, int64_t c) {
  if constexpr (T == DType::kF32) {
    return _mm256_loadu_ps(reinterpret_cast<const float*>(wr) + c);
  } else if constexpr (T == DType::kBF16) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(wr + 2 * c));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  } else {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(wr + 2 * c));
    return _mm256_cvtph_ps(h);
  }
}

__attribute__((target("avx2,fma,f16c"))) inline float HSum(__m256 v) {
  const __m128 lo = _mm256_castps256_ps128(v);
  const __m128 hi = _mm256_extractf128_ps(v, 1);
  __m128 s = _mm_add_ps(lo, hi);
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// One pass over each weight row serves all M activation rows: the weights are read once per call
// whatever the batch, which is what makes batched decode cheap.
template <DType T, int M>
__attribute__((target("avx2,fma,f16c"))) void GemvAvx2(const float* x, int m, int64_t ldx,
                                                       const void* w, int64_t cols, int64_t r0,
                                                       int64_t r1, float* y, int64_t ldy) {
  constexpr int U = M == 1 ? 4 : (M < 4 ? 2 : 1);
  constexpr int64_t kEsize = T == DType::kF32 ? 4 : 2;
  constexpr int64_t kStep = 8 * U;
  const int64_t cmain = cols / kStep * kStep;
  for (int64_t r = r0; r < r1; ++r) {
    const char* wr = static_cast<const char*>(w) + r * cols * kEsize;
    __m256 acc[M][U];
    for (int i = 0; i < M; ++i) {
      for (int u = 0; u < U; ++u) acc[i][u] = _mm256_setzero_ps();
    }
    for (int64_t c = 0; c < cmain; c += kStep) {
      for (int u = 0; u < U; ++u) {
        const __m256 wv = Load8<T>(wr, c + 8 * u);
        for (int i = 0; i < M; ++i) {
          acc[i][u] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + i * ldx + c + 8 * u), acc[i][u]);
        }
      }
    }
    for (int i = 0; i < M; ++i) {
      __m256 t = acc[i][0];
      for (int u = 1; u < U; ++u) t = _mm256_add_ps(t, acc[i][u]);
      float s = HSum(t);
      for (int64_t c = cmain; c < cols; ++c) s += Elem<T>(wr, c) * x[i * ldx + c];
      y[i * ldy + r] = s;
    }
  }
}

template <DType T>
GemvFn PickAvx2(int m) {
  switch (m) {
    case 1:
      return &GemvAvx2<T, 1>;
    case 2:
      return &GemvAvx2<T, 2>;
    case 3:
      return &GemvAvx2<T, 3>;
    case 4:
      return &GemvAvx2<T, 4>;
    case 5:
      return &GemvAvx2<T, 5>;
    case 6:
      return &GemvAvx2<T, 6>;
    case 7:
      return &GemvAvx2<T, 7>;
    default:
      return &GemvAvx2<T, 8>;
  }
}

GemvFn PickGemv(DType t, int m) {
  const bool avx2 = HasAvx2();
  switch (t) {
    case DType::kF32:
      return avx2 ? PickAvx2<DType::kF32>(m) : &GemvScalar<DType::kF32>;
    case DType::kBF16:
      return avx2 ? PickAvx2<DType::kBF16>(m) : &GemvScalar<DType::kBF16>;
    case DType::kF16:
      return avx2 ? PickAvx2<DType::kF16>(m) : &GemvScalar<DType::kF16>;
  }
  return &GemvScalar<DType::kF32>;
}

void AddBias(const WeightView& bias, int64_t m, int64_t n, float* y) {
  std::vector<float> b(static_cast<size_t>(n));
  ConvertToF32(bias.data, bias.dtype, n, b.data());
  for (int64_t i = 0; i < m; ++i) {
    float* yi = y + i * n;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) yi[j] += b[j];
  }
}

class FastOpsImpl final : public Ops {
 public:
  std::string_view name() const override { return "fast"; }

  void MatMul(const float* x, int64_t m, const WeightView& w, const WeightView* bias,
              float* y) const override {
    if (m <= 0 || w.rows <= 0) return;
    if (m <= kGemvMaxRows) {
      Gemv(x, m, w, y);
    } else {
      Gemm(x, m, w, y);
    }
    if (bias != nullptr) AddBias(*bias, m, w.rows, y);
  }

  void RmsNorm(const float* x, int64_t m, int64_t n, const WeightView& g, float eps,
               float* y) const override {
    std::vector<float> gf(static_cast<size_t>(n));
    ConvertToF32(g.data, g.dtype, n, gf.data());
#pragma omp parallel for schedule(static) num_threads(FastOpsThreads()) if (m * n >= (1 << 16))
    for (int64_t i = 0; i < m; ++i) {
      const float* xi = x + i * n;
      float* yi = y + i * n;
      float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
      for (int64_t c = 0; c < n; ++c) ss += xi[c] * xi[c];
      const float inv = 1.0f / std::sqrt(ss / static_cast<float>(n) + eps);
#pragma omp simd
      for (int64_t c = 0; c < n; ++c) yi[c] = xi[c] * inv * gf[c];
    }
  }

  void Rope(float* x, int64_t m, int heads, int head_dim, const int32_t* positions,
            const float* inv_freq) const override {
    const int half = head_dim / 2;
#pragma omp parallel for schedule(static) num_threads(FastOpsThreads()) if (m >= 16)
    for (int64_t i = 0; i < m; ++i) {
      std::vector<float> cs(static_cast<size_t>(head_dim));
      for (int j = 0; j < half; ++j) {
        const double ang = static_cast<double>(positions[i]) * inv_freq[j];
        cs[j] = static_cast<float>(std::cos(ang));
        cs[half + j] = static_cast<float>(std::sin(ang));
      }
      for (int h = 0; h < heads; ++h) {
        float* v = x + (i * heads + h) * head_dim;
#pragma omp simd
        for (int j = 0; j < half; ++j) {
          const float a = v[j], b = v[j + half], c = cs[j], s = cs[half + j];
          v[j] = a * c - b * s;
          v[j + half] = b * c + a * s;
        }
      }
    }
  }

  void SiluMul(const float* gate, const float* up, int64_t n, float* out) const override {
#pragma omp parallel for simd schedule(static) num_threads(FastOpsThreads()) if (n >= (1 << 16))
    for (int64_t i = 0; i < n; ++i) {
      const float g = gate[i];
      out[i] = g / (1.0f + std::exp(-g)) * up[i];
    }
  }

  void Add(float* y, const float* x, int64_t n) const override {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) y[i] += x[i];
  }

  void Embed(const WeightView& table, const int32_t* ids, int64_t m, float* out) const override {
    for (int64_t i = 0; i < m; ++i) {
      ConvertToF32(table.Row(ids[i]), table.dtype, table.cols, out + i * table.cols);
    }
  }

  void Attention(const float* q, int h, const float* k, int64_t ldk, const float* v, int64_t ldv,
                 int64_t n, int d, float scale, float* o, float* lse) const override {
    AttentionPartial(q, h, k, ldk, v, ldv, n, d, scale, o, lse);
  }

 private:
  void MatMulShared(const float* x, int64_t m, int count, const WeightView* const* ws,
                    const WeightView* const* biases, float* const* ys) const override {
    if (m <= 0) return;
    if (m > kGemvMaxRows) {
      for (int i = 0; i < count; ++i) MatMul(x, m, *ws[i], biases[i], ys[i]);
      return;
    }
    // One task list over the row blocks of every matrix, one parallel region.
    struct Task {
      int mat;
      int64_t r0, r1;
    };
    std::vector<Task> tasks;
    int64_t work = 0;
    for (int i = 0; i < count; ++i) {
      const WeightView& w = *ws[i];
      for (int64_t r = 0; r < w.rows; r += kGemvBlock) {
        tasks.push_back({i, r, std::min(w.rows, r + kGemvBlock)});
      }
      work += w.rows * w.cols * std::max<int64_t>(m, DTypeSize(w.dtype));
    }
    const int64_t ntasks = static_cast<int64_t>(tasks.size());
#pragma omp parallel for schedule(dynamic, 2) \
    num_threads(FastOpsThreads()) if (work >= kParallelWork)
    for (int64_t t = 0; t < ntasks; ++t) {
      const WeightView& w = *ws[tasks[t].mat];
      PickGemv(w.dtype, static_cast<int>(m))(x, static_cast<int>(m), w.cols, w.data, w.cols,
                                             tasks[t].r0, tasks[t].r1, ys[tasks[t].mat], w.rows);
    }
    for (int i = 0; i < count; ++i) {
      if (biases[i] != nullptr) AddBias(*biases[i], m, ws[i]->rows, ys[i]);
    }
  }

  static constexpr int64_t kGemvBlock = 16;
  // Fork/join costs microseconds (far more when other processes hold the cores): only matrices
  // of >= 512 KiB of weights (or as much multiply work) are split across threads.
  static constexpr int64_t kParallelWork = int64_t{1} << 19;

  static void Gemv(const float* x, int64_t m, const WeightView& w, float* y) {
    const GemvFn fn = PickGemv(w.dtype, static_cast<int>(m));
    const int64_t nblocks = (w.rows + kGemvBlock - 1) / kGemvBlock;
    const int64_t work = w.rows * w.cols * std::max<int64_t>(m, DTypeSize(w.dtype));
    // Dynamic: a thread that loses its core to another process does not hold the others up.
#pragma omp parallel for schedule(dynamic, 2) \
    num_threads(FastOpsThreads()) if (work >= kParallelWork)
    for (int64_t b = 0; b < nblocks; ++b) {
      fn(x, static_cast<int>(m), w.cols, w.data, w.cols, b * kGemvBlock,
         std::min(w.rows, (b + 1) * kGemvBlock), y, w.rows);
    }
  }

  // Prefill: OpenMP splits the output columns (weight rows) into tiles; each tile is one
  // single-threaded cblas_sgemm (narrow weights widened to f32 first, per thread). OpenBLAS's own
  // pthreads are switched off (SingleThreadedBlas): two thread pools spinning on two cores cost
  // 5x in prefill throughput.
  static void Gemm(const float* x, int64_t m, const WeightView& w, float* y) {
    SingleThreadedBlas();
    const int M = static_cast<int>(m), N = static_cast<int>(w.rows), K = static_cast<int>(w.cols);
    const int64_t kTile = w.dtype == DType::kF32 ? std::max<int64_t>(64, (N + 7) / 8) : 128;
    const int64_t ntiles = (w.rows + kTile - 1) / kTile;
    const bool parallel = ntiles > 1 && int64_t{M} * N * K >= (int64_t{1} << 22);
#pragma omp parallel num_threads(FastOpsThreads()) if (parallel)
    {
      std::vector<float> buf;
#pragma omp for schedule(dynamic, 1)
      for (int64_t t = 0; t < ntiles; ++t) {
        const int64_t r0 = t * kTile, nr = std::min(kTile, w.rows - r0);
        const float* b;
        if (w.dtype == DType::kF32) {
          b = static_cast<const float*>(w.Row(r0));
        } else {
          buf.resize(static_cast<size_t>(nr * w.cols));
          ConvertToF32(w.Row(r0), w.dtype, nr * w.cols, buf.data());
          b = buf.data();
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, static_cast<int>(nr), K, 1.0f, x, K,
                    b, K, 0.0f, y + r0, N);
      }
    }
  }
};

}  // namespace

void SetFastOpsThreads(int n) { t_threads = n > 0 ? n : 0; }
int FastOpsThreads() { return t_threads > 0 ? t_threads : omp_get_max_threads(); }

const Ops& FastOps() {
  static const FastOpsImpl ops;
  return ops;
}

}  // namespace ragserve::kernels
