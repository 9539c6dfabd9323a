// The fast CPU backend (FastOps): OpenMP over output rows, GEMV kernels for AVX-512 and
// AVX2/FMA/F16C chosen at run time (per-function target attributes: the CI build has no
// -march=native; the kernels live in gemv_simd.inc, compiled once per instruction set), a scalar
// fallback, OpenBLAS sgemm for prefill (BF16 packed at load on CPUs with AVX-512 BF16: the
// vdpbf16ps kernel of quant.h's Bf16PackedMatMul).
#include <cblas.h>
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/cpu/attention.h"
#include "kernels/cpu/blas_util.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/quant.h"
#include "kernels/cpu/simd_sum.h"
#include "kernels/cpu/spin_pool.h"

// OpenBLAS's thread count (a weak reference: absent when another BLAS is linked).
extern "C" void openblas_set_num_threads(int) __attribute__((weak));

namespace ragserve::kernels {

void internal::SingleThreadedBlas() {
  static const bool once = [] {
    if (openblas_set_num_threads != nullptr) openblas_set_num_threads(1);
    return true;
  }();
  (void)once;
}

namespace {

thread_local int t_threads = 0;  // SetFastOpsThreads

std::atomic<bool> g_gemv_openmp{false};  // SetFastOpsGemvOpenMp

std::atomic<int> g_max_simd{static_cast<int>(SimdLevel::kAvx512)};  // SetFastOpsMaxSimd

// y[i * ldy + r] = x[i, :] . W[r, :] for rows r in [r0, r1) and i < m; W stored as T. xs is x as
// the SIMD kernels read it (PrepareX: aligned rows of stride ldxs, permuted for bf16); the scalar
// kernels and the SIMD kernels' column tails read x.
using GemvFn = void (*)(const float* xs, int64_t ldxs, const float* x, int64_t ldx, const void* w,
                        int64_t cols, int64_t r0, int64_t r1, float* y, int64_t ldy);

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

template <DType T, int M>
void GemvScalar(const float* /*xs*/, int64_t /*ldxs*/, const float* x, int64_t ldx, const void* w,
                int64_t cols, int64_t r0, int64_t r1, float* y, int64_t ldy) {
  constexpr int64_t kEsize = T == DType::kF32 ? 4 : 2;
  constexpr int64_t kChunk = 256;
  float row[kChunk];
  for (int64_t r = r0; r < r1; ++r) {
    const char* wr = static_cast<const char*>(w) + r * cols * kEsize;
    float s[M] = {};
    for (int64_t c0 = 0; c0 < cols; c0 += kChunk) {
      const int64_t n = std::min(kChunk, cols - c0);
      for (int64_t c = 0; c < n; ++c) row[c] = Elem<T>(wr, c0 + c);
      for (int i = 0; i < M; ++i) {
        const float* xi = x + i * ldx + c0;
        float t = 0.0f;
#pragma omp simd reduction(+ : t)
        for (int64_t c = 0; c < n; ++c) t += row[c] * xi[c];
        s[i] += t;
      }
    }
    for (int i = 0; i < M; ++i) y[i * ldy + r] = s[i];
  }
}

template <DType T>
GemvFn PickScalar(int m) {
  switch (m) {
    case 1:
      return &GemvScalar<T, 1>;
    case 2:
      return &GemvScalar<T, 2>;
    case 3:
      return &GemvScalar<T, 3>;
    case 4:
      return &GemvScalar<T, 4>;
    case 5:
      return &GemvScalar<T, 5>;
    case 6:
      return &GemvScalar<T, 6>;
    case 7:
      return &GemvScalar<T, 7>;
    default:
      return &GemvScalar<T, 8>;
  }
}

#define RS_AVX2_TARGET __attribute__((target("avx2,fma,f16c")))
#define RS_AVX512_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))

struct Avx2Vec {
  using F = __m256;
  static constexpr int kW = 8;
  static constexpr int kRegs = 16;
  RS_AVX2_TARGET static F Zero() { return _mm256_setzero_ps(); }
  RS_AVX2_TARGET static F Load(const float* p) { return _mm256_loadu_ps(p); }
  RS_AVX2_TARGET static F Fma(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  RS_AVX2_TARGET static F Add(F a, F b) { return _mm256_add_ps(a, b); }
  RS_AVX2_TARGET static float Sum(F v) { return internal::HorizontalSum256(v); }
  // Weights [c, c + 2 * kW) of a row as two vectors: f32/f16 in order, bf16 even | odd columns.
  template <DType T>
  RS_AVX2_TARGET static void LoadW(const char* wr, int64_t c, F& a, F& b) {
    if constexpr (T == DType::kF32) {
      a = _mm256_loadu_ps(reinterpret_cast<const float*>(wr) + c);
      b = _mm256_loadu_ps(reinterpret_cast<const float*>(wr) + c + kW);
    } else if constexpr (T == DType::kF16) {
      a = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wr + 2 * c)));
      b = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wr + 2 * c + 16)));
    } else {
      __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wr + 2 * c));
      // One load for both halves (the compiler would otherwise fold it into both the shift and
      // the mask: two loads of a line that is usually still in flight from memory).
      asm("" : "+x"(v));
      a = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
      // Odd elements: the high halves, low halves zeroed by a blend with zero (an AND with a
      // constant got the constant spilled and reloaded from the stack on every step).
      b = _mm256_castsi256_ps(_mm256_blend_epi16(_mm256_setzero_si256(), v, 0xaa));
    }
  }
};

// GCC 12's AVX-512 intrinsics self-initialize their "undefined" operands (`__m512 __Y = __Y;`),
// which -Wuninitialized reports at every use: a known false positive.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

struct Avx512Vec {
  using F = __m512;
  static constexpr int kW = 16;
  static constexpr int kRegs = 32;
  RS_AVX512_TARGET static F Zero() { return _mm512_setzero_ps(); }
  RS_AVX512_TARGET static F Load(const float* p) { return _mm512_loadu_ps(p); }
  RS_AVX512_TARGET static F Fma(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  RS_AVX512_TARGET static F Add(F a, F b) { return _mm512_add_ps(a, b); }
  RS_AVX512_TARGET static float Sum(F v) {
    return internal::HorizontalSum256(
        _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1)));
  }
  template <DType T>
  RS_AVX512_TARGET static void LoadW(const char* wr, int64_t c, F& a, F& b) {
    if constexpr (T == DType::kF32) {
      a = _mm512_loadu_ps(reinterpret_cast<const float*>(wr) + c);
      b = _mm512_loadu_ps(reinterpret_cast<const float*>(wr) + c + kW);
    } else if constexpr (T == DType::kF16) {
      a = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wr + 2 * c)));
      b = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wr + 2 * c + 32)));
    } else {
      __m512i v = _mm512_loadu_si512(wr + 2 * c);
      asm("" : "+v"(v));  // one load for both halves (see Avx2Vec)
      a = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
      // Odd elements: the high halves, low halves zeroed by a mask register (see Avx2Vec).
      b = _mm512_castsi512_ps(_mm512_maskz_mov_epi16(0xaaaaaaaau, v));
    }
  }
};

namespace avx2 {
using Vec = Avx2Vec;
#define RS_TGT RS_AVX2_TARGET
#include "kernels/cpu/gemv_simd.inc"
#undef RS_TGT
}  // namespace avx2

namespace avx512 {
using Vec = Avx512Vec;
#define RS_TGT RS_AVX512_TARGET
#include "kernels/cpu/gemv_simd.inc"
#undef RS_TGT
}  // namespace avx512

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

// The GEMV kernel for one call: which function, and how it wants the activations laid out.
struct GemvKernel {
  GemvFn fn;
  bool simd;       // reads the activations through PrepareX
  int bf16_block;  // > 0: bf16 weights on a SIMD path; x permuted per block of this many columns
};

GemvKernel PickGemv(DType t, int m) {
  switch (FastOpsSimdLevel()) {
    case SimdLevel::kAvx512:
      return {avx512::PickGemv(t, m), true, t == DType::kBF16 ? 2 * Avx512Vec::kW : 0};
    case SimdLevel::kAvx2:
      return {avx2::PickGemv(t, m), true, t == DType::kBF16 ? 2 * Avx2Vec::kW : 0};
    case SimdLevel::kScalar:
      break;
  }
  switch (t) {
    case DType::kF32:
      return {PickScalar<DType::kF32>(m), false, 0};
    case DType::kBF16:
      return {PickScalar<DType::kBF16>(m), false, 0};
    case DType::kF16:
      return {PickScalar<DType::kF16>(m), false, 0};
    default:  // block formats never get here (QuantMatMul)
      break;
  }
  return {PickScalar<DType::kF32>(m), false, 0};
}

// A 64-byte aligned block of n floats inside v (resized as needed; the caller's thread's scratch).
float* AlignedScratch(std::vector<float>& v, int64_t n) {
  v.resize(static_cast<size_t>(std::max<int64_t>(1, n) + 16));
  const auto p = reinterpret_cast<uintptr_t>(v.data());
  return reinterpret_cast<float*>((p + 63) & ~uintptr_t{63});
}

// The activations as the SIMD kernels read them, in 64-byte aligned rows (a vector load that
// straddles two cache lines costs the kernels up to 30% of their streaming speed): a plain copy,
// or for bf16 weights (block > 0) per block of `block` columns the even columns then the odd ones
// (see gemv_simd.inc). Only the columns of full blocks are permuted (the kernels' scalar tail
// reads x). Returns the rows' stride in *ld.
const float* PrepareX(const float* x, int64_t m, int64_t cols, int block, int64_t* ld) {
  if (block == 0) {
    thread_local std::vector<float> plain;
    *ld = (cols + 15) / 16 * 16;
    float* out = AlignedScratch(plain, m * *ld);
    for (int64_t i = 0; i < m; ++i) std::memcpy(out + i * *ld, x + i * cols, cols * sizeof(float));
    return out;
  }
  thread_local std::vector<float> perm;
  const int64_t cmain = cols / block * block, half = block / 2;
  float* out = AlignedScratch(perm, m * cmain);
  for (int64_t i = 0; i < m; ++i) {
    const float* xi = x + i * cols;
    float* bi = out + i * cmain;
    for (int64_t c = 0; c < cmain; c += block) {
      for (int64_t t = 0; t < half; ++t) {
        bi[c + t] = xi[c + 2 * t];
        bi[c + half + t] = xi[c + 2 * t + 1];
      }
    }
  }
  *ld = cmain;
  return out;
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
    if (IsQuantized(w.dtype)) {
      const WeightView* ws[] = {&w};
      QuantMatMul(x, m, 1, ws, &y, FastOpsThreads());
    } else if (m <= kGemvMaxRows) {
      Gemv(x, m, w, y);
    } else {
      Gemm(x, m, w, y);
    }
    if (bias != nullptr) AddBias(*bias, m, w.rows, y);
  }

  // The ops below split across threads only for prefill-sized inputs, on the same pool as the
  // GEMVs (no OpenMP region, whose threads would go on spinning through the next decode step).
  void RmsNorm(const float* x, int64_t m, int64_t n, const WeightView& g, float eps,
               float* y) const override {
    thread_local std::vector<float> gbuf;
    gbuf.resize(static_cast<size_t>(n));
    ConvertToF32(g.data, g.dtype, n, gbuf.data());
    const float* gf = gbuf.data();
    ParallelFor(m * n >= (1 << 16) ? FastOpsThreads() : 1, m, [&](int64_t i) {
      const float* xi = x + i * n;
      float* yi = y + i * n;
      float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
      for (int64_t c = 0; c < n; ++c) ss += xi[c] * xi[c];
      const float inv = 1.0f / std::sqrt(ss / static_cast<float>(n) + eps);
#pragma omp simd
      for (int64_t c = 0; c < n; ++c) yi[c] = xi[c] * inv * gf[c];
    });
  }

  void Rope(float* x, int64_t m, int heads, int head_dim, const int32_t* positions,
            const float* inv_freq) const override {
    const int half = head_dim / 2;
    ParallelFor(m >= 16 ? FastOpsThreads() : 1, m, [&](int64_t i) {
      thread_local std::vector<float> cs;
      cs.resize(static_cast<size_t>(head_dim));
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
    });
  }

  void SiluMul(const float* gate, const float* up, int64_t n, float* out) const override {
    constexpr int64_t kChunk = 1 << 14;
    ParallelFor(n >= (1 << 16) ? FastOpsThreads() : 1, (n + kChunk - 1) / kChunk, [&](int64_t t) {
      const int64_t e = std::min(n, (t + 1) * kChunk);
#pragma omp simd
      for (int64_t i = t * kChunk; i < e; ++i) {
        const float g = gate[i];
        out[i] = g / (1.0f + std::exp(-g)) * up[i];
      }
    });
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

  void CausalAttention(const float* q, int n, int heads, int kv_heads, int d, const float* k,
                       const float* v, int64_t len, int64_t window, float scale, float* o,
                       float* lse, int threads) const override {
    Sequence(q, n, heads, kv_heads, d, k, v, len, true, window, scale, o, lse, threads);
  }
  void BlockAttention(const float* q, int n, int heads, int kv_heads, int d, const float* k,
                      const float* v, int64_t len, float scale, float* o, float* lse,
                      int threads) const override {
    Sequence(q, n, heads, kv_heads, d, k, v, len, false, 0, scale, o, lse, threads);
  }

 private:
  // Keys per cache below which a decode task is not split across threads.
  static constexpr int64_t kSplitKeysMinLen = 8192;
  // Tiles pay off once a block of queries shares its keys; decode-sized steps stay per row.
  void Sequence(const float* q, int n, int heads, int kv_heads, int d, const float* k,
                const float* v, int64_t len, bool causal, int64_t window, float scale, float* o,
                float* lse, int threads) const {
    if (n >= kTiledAttentionMinQueries) {
      AttentionTiled(q, n, heads, kv_heads, d, k, v, len, causal, window, scale, o, lse, threads);
      return;
    }
    const int64_t tasks = int64_t{n} * kv_heads;
    if (tasks < threads && len >= kSplitKeysMinLen) {
      // Fewer (query, kv head) tasks than threads over a long cache (one kv head, a decode
      // step): each task's keys are split across the threads instead (AttentionPartialParallel).
      const int group = heads / kv_heads;
      const int64_t row = int64_t{kv_heads} * d;
      for (int64_t t = 0; t < tasks; ++t) {
        const int64_t i = t / kv_heads;
        const int kvh = static_cast<int>(t % kv_heads);
        const int64_t end = causal ? len - n + i + 1 : len;
        const int64_t start = causal && window > 0 ? std::max<int64_t>(0, end - window) : 0;
        const int64_t head0 = i * heads + int64_t{kvh} * group;
        AttentionPartialParallel(q + head0 * d, group, k + start * row + int64_t{kvh} * d, row,
                                 v + start * row + int64_t{kvh} * d, row, end - start, d, scale,
                                 o + head0 * d, lse + head0, threads);
      }
      return;
    }
    ParallelFor(threads, tasks, [&](int64_t t) {
      AttentionRow(*this, q, n, heads, kv_heads, d, k, v, len, causal, window, scale, o, lse, t);
    });
  }

  void MatMulShared(const float* x, int64_t m, int count, const WeightView* const* ws,
                    const WeightView* const* biases, float* const* ys) const override {
    if (m <= 0) return;
    int quantized = 0;
    for (int i = 0; i < count; ++i) quantized += IsQuantized(ws[i]->dtype) ? 1 : 0;
    if (quantized == count) {  // one fork/join for all (decode and prefill alike)
      QuantMatMul(x, m, count, ws, ys, FastOpsThreads());
      for (int i = 0; i < count; ++i) {
        if (biases[i] != nullptr) AddBias(*biases[i], m, ws[i]->rows, ys[i]);
      }
      return;
    }
    if (m > kGemvMaxRows || count > kMaxShared || quantized > 0) {
      for (int i = 0; i < count; ++i) MatMul(x, m, *ws[i], biases[i], ys[i]);
      return;
    }
    GemvMany(x, m, count, ws, ys);
    for (int i = 0; i < count; ++i) {
      if (biases[i] != nullptr) AddBias(*biases[i], m, ws[i]->rows, ys[i]);
    }
  }

  static constexpr int64_t kGemvBlock = 16;
  static constexpr int64_t kTaskBytes = 96 << 10;
  // Fork/join costs microseconds (far more when other processes hold the cores): only matrices
  // of >= 512 KiB of weights (or as much multiply work) are split across threads.
  static constexpr int64_t kParallelWork = int64_t{1} << 19;

  static void Gemv(const float* x, int64_t m, const WeightView& w, float* y) {
    const WeightView* ws[] = {&w};
    float* ys[] = {y};
    GemvMany(x, m, 1, ws, ys);
  }

  // ys[i] = x . ws[i]^T for m <= kGemvMaxRows rows, every ws[i].cols equal: one task list over
  // the row blocks of every matrix, one parallel region.
  static void GemvMany(const float* x, int64_t m, int count, const WeightView* const* ws,
                       float* const* ys) {
    struct Task {
      int mat;
      int64_t r0, r1;
    };
    thread_local std::vector<Task> tasks;
    tasks.clear();
    GemvKernel kern[kMaxShared];
    int64_t work = 0;
    int bf16_block = 0;
    bool plain = false;  // some SIMD kernel reads the activations unpermuted
    const int64_t cols = ws[0]->cols;
    for (int i = 0; i < count; ++i) {
      const WeightView& w = *ws[i];
      kern[i] = PickGemv(w.dtype, static_cast<int>(m));
      bf16_block = std::max(bf16_block, kern[i].bf16_block);
      plain |= kern[i].simd && kern[i].bf16_block == 0;
      // Tasks of ~kTaskBytes of weights (a multiple of kGemvBlock rows): large enough that
      // claiming one (an atomic on a shared cache line) is noise, small enough to balance.
      const int64_t row_bytes = std::max<int64_t>(1, w.cols * DTypeSize(w.dtype));
      const int64_t block = std::max<int64_t>(1, kTaskBytes / row_bytes / kGemvBlock) * kGemvBlock;
      for (int64_t r = 0; r < w.rows; r += block) {
        tasks.push_back({i, r, std::min(w.rows, r + block)});
      }
      work += w.rows * w.cols * std::max<int64_t>(m, DTypeSize(w.dtype));
    }
    int64_t ldxa = cols, ldxp = cols;
    const float* xa = plain ? PrepareX(x, m, cols, 0, &ldxa) : x;
    const float* xp = bf16_block > 0 ? PrepareX(x, m, cols, bf16_block, &ldxp) : x;
    struct Job {
      const Task* tasks;
      const WeightView* const* ws;
      float* const* ys;
      const GemvKernel* kern;
      const float *x, *xa, *xp;  // as given, aligned copy, aligned and permuted for bf16
      int64_t cols, ldxa, ldxp;
      static void Run(void* ctx, int64_t t) {
        const Job& j = *static_cast<const Job*>(ctx);
        const Task& tk = j.tasks[t];
        const WeightView& w = *j.ws[tk.mat];
        const GemvKernel& k = j.kern[tk.mat];
        const bool perm = k.bf16_block > 0;
        k.fn(perm ? j.xp : j.xa, perm ? j.ldxp : j.ldxa, j.x, j.cols, w.data, j.cols, tk.r0, tk.r1,
             j.ys[tk.mat], w.rows);
      }
    } job{tasks.data(), ws, ys, kern, x, xa, xp, cols, ldxa, ldxp};
    const int64_t ntasks = static_cast<int64_t>(tasks.size());
    const int threads = work >= kParallelWork ? FastOpsThreads() : 1;
    if (!GemvUsesOpenMp()) {
      SpinPool::Get().Run(threads, ntasks, &Job::Run, &job);
      return;
    }
    // Dynamic: a thread that loses its core to another process does not hold the others up.
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (threads > 1)
    for (int64_t t = 0; t < ntasks; ++t) Job::Run(&job, t);
  }
  static constexpr int kMaxShared = 8;

  // Prefill: the output columns (weight rows) are split into tiles, one pool task each; a tile
  // is one single-threaded cblas_sgemm (narrow weights widened to f32 first, per thread).
  // OpenBLAS's own pthreads are switched off (SingleThreadedBlas): two thread pools spinning on
  // two cores cost 5x in prefill throughput.
  // BF16 weights packed at load (AVX-512 BF16) skip the widening: Bf16PackedMatMul.
  static void Gemm(const float* x, int64_t m, const WeightView& w, float* y) {
    if (w.dtype == DType::kBF16 && w.packed != nullptr && Bf16PackedAvailable()) {
      Bf16PackedMatMul(x, m, w, y, FastOpsThreads(), Bf16ActsFromEnv());
      return;
    }
    internal::SingleThreadedBlas();
    const int M = static_cast<int>(m), N = static_cast<int>(w.rows), K = static_cast<int>(w.cols);
    const int64_t kTile = w.dtype == DType::kF32 ? std::max<int64_t>(64, (N + 7) / 8) : 128;
    const int64_t ntiles = (w.rows + kTile - 1) / kTile;
    const bool parallel = ntiles > 1 && int64_t{M} * N * K >= (int64_t{1} << 22);
    ParallelFor(parallel ? FastOpsThreads() : 1, ntiles, [&](int64_t t) {
      thread_local std::vector<float> buf;
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
    });
  }
};

}  // namespace

SimdLevel FastOpsSimdLevel() {
  return static_cast<SimdLevel>(
      std::min(static_cast<int>(CpuSimdLevel()), g_max_simd.load(std::memory_order_relaxed)));
}

void SetFastOpsMaxSimd(SimdLevel level) {
  g_max_simd.store(static_cast<int>(level), std::memory_order_relaxed);
}

void SetFastOpsGemvOpenMp(bool on) { g_gemv_openmp.store(on, std::memory_order_relaxed); }
bool GemvUsesOpenMp() { return g_gemv_openmp.load(std::memory_order_relaxed); }

void SetFastOpsThreads(int n) { t_threads = n > 0 ? n : 0; }
int FastOpsThreads() { return t_threads > 0 ? t_threads : omp_get_max_threads(); }

const Ops& FastOps() {
  static const FastOpsImpl ops;
  return ops;
}

}  // namespace ragserve::kernels
