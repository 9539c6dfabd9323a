// The block-quantized weight kernels (kernels/cpu/quant.h) against their references:
//  * every SIMD path (AVX-512 VNNI, AVX2, as far as this CPU has them) against the scalar
//    reference on the same quantized activations: bit-identical where the f32 sums are exact
//    (power-of-two scales), within float reordering otherwise;
//  * FastOps (quantized activations, integer dots) against RefOps (dequantize-then-f64) within
//    the activation-rounding bound sum_j |w_j| * d_a(j) / 2;
//  * the quantizers' round trip within a per-format error bound.
// Shapes: rows not a multiple of the 16-row task (and of the packed 16-row groups) or the
// 4-token tile, odd block counts (the AVX-512 two-block step's tail), decode m <= 8 and prefill
// m > 8 (the packed kernel's 16-token tile, whole and with a remainder). Seeded random inputs.
#include "kernels/cpu/quant.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/ops.h"

namespace ragserve::kernels {
namespace {

const DType kFormats[] = {DType::kQ8_0, DType::kQ4_0, DType::kQ4_K, DType::kQ6_K};

std::vector<float> Gauss(int64_t n, uint32_t seed, float sd = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, sd);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = d(rng);
  return v;
}

struct Quantized {
  std::vector<uint8_t> bytes;
  WeightView view;
};

Quantized Quantize(const std::vector<float>& f, DType t, int64_t rows, int64_t cols) {
  Quantized q;
  q.bytes.resize(static_cast<size_t>(rows * DTypeBytes(t, cols)));
  for (int64_t r = 0; r < rows; ++r) {
    QuantizeRef(f.data() + r * cols, t, cols, q.bytes.data() + r * DTypeBytes(t, cols));
  }
  q.view = {q.bytes.data(), t, rows, cols};
  return q;
}

// w with its packed form set (PackWeights) when this CPU's kernels read one for w's format.
Quantized WithPacked(const Quantized& w) {
  Quantized p;
  p.view = w.view;
  const int64_t n = PackedBytes(w.view);
  if (n == 0) return p;
  p.bytes.resize(static_cast<size_t>(n));
  PackWeights(w.view, p.bytes.data());
  p.view.packed = p.bytes.data();
  return p;
}

// The views of w that a path runs: the blocks, and the packed form where there is one.
std::vector<WeightView> Views(const Quantized& w, const Quantized& packed) {
  std::vector<WeightView> v = {w.view};
  if (packed.view.packed != nullptr) v.push_back(packed.view);
  return v;
}

// Random block bytes whose f16 scales are powers of two (and Q6_K scales small), so every f32
// sum of the dot products is exact whatever the order.
Quantized RandomExactBlocks(DType t, int64_t rows, int64_t cols, uint32_t seed) {
  std::mt19937 rng(seed);
  Quantized q;
  const int64_t rb = DTypeBytes(t, cols), bb = DTypeBlockBytes(t);
  q.bytes.resize(static_cast<size_t>(rows * rb));
  for (uint8_t& b : q.bytes) b = static_cast<uint8_t>(rng());
  auto put = [](uint8_t* p, uint16_t h) { std::memcpy(p, &h, 2); };
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t o = 0; o < rb; o += bb) {
      uint8_t* blk = q.bytes.data() + r * rb + o;
      switch (t) {
        case DType::kQ8_0:
        case DType::kQ4_0:
          put(blk, 0x2C00);  // 2^-4
          break;
        case DType::kQ4_K:
          put(blk, 0x2C00);
          put(blk + 2, 0x2800);  // 2^-5
          break;
        case DType::kQ6_K:
          for (int g = 0; g < 16; ++g) blk[192 + g] = static_cast<uint8_t>(rng() % 64 - 32);
          put(blk + 208, 0x2C00);
          break;
        default:
          break;
      }
    }
  }
  q.view = {q.bytes.data(), t, rows, cols};
  return q;
}

// Activations whose quantization is exact: small integers, every block holding a +-127 (d_a = 1).
std::vector<float> ExactActs(int64_t m, int64_t cols, int block, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<float> x(static_cast<size_t>(m * cols));
  for (float& v : x) v = static_cast<float>(static_cast<int>(rng() % 17) - 8);
  for (int64_t i = 0; i < m * cols; i += block) x[i + rng() % block] = rng() % 2 ? 127.0f : -127.0f;
  return x;
}

std::vector<SimdLevel> Levels() {
  std::vector<SimdLevel> l;
  const SimdLevel cpu = CpuSimdLevel();
  const bool vnni = __builtin_cpu_supports("avx512vnni");
  if (cpu == SimdLevel::kAvx512 && vnni) l.push_back(SimdLevel::kAvx512);
  if (cpu >= SimdLevel::kAvx2) l.push_back(SimdLevel::kAvx2);
  return l;
}

struct Shape {
  int64_t rows, cols;
};

std::vector<Shape> Shapes(DType t) {
  const int64_t b = DTypeBlockValues(t);
  // One block; an odd number of blocks (AVX-512's two-block step leaves one); Q4_0's four-block
  // step with and without leftovers; rows not a multiple of 16 (the task) or of 4.
  return {{1, b}, {3, b}, {17, 3 * b}, {33, 2 * b}, {5, 5 * b}, {7, 9 * b}, {2, 12 * b}};
}

TEST(QuantKernelTest, EveryPathEqualsScalarReferenceBitForBitWhenSumsAreExact) {
  int cases = 0;
  for (DType t : kFormats) {
    for (const Shape& s : Shapes(t)) {
      const Quantized w = RandomExactBlocks(t, s.rows, s.cols, 7 + cases);
      const Quantized packed = WithPacked(w);
      // 16 and 35: the packed kernel's whole tile of 16 tokens and a tile plus a remainder.
      for (int64_t m : {1, 2, 3, 4, 5, 8, 13, 16, 35}) {
        const std::vector<float> x = ExactActs(m, s.cols, ActBlock(t), 100 + cases);
        QuantizedActs a;
        QuantizeActs(x.data(), m, s.cols, ActBlock(t), &a);
        std::vector<float> want(static_cast<size_t>(m * s.rows));
        QuantMatMulRef(a, w.view, want.data(), s.rows);
        // The reference itself against the integers computed in f64 from the dequantized blocks.
        std::vector<float> row(static_cast<size_t>(s.cols));
        for (int64_t r = 0; r < s.rows; ++r) {
          DequantizeRef(w.view.Row(r), t, s.cols, row.data());
          for (int64_t i = 0; i < m; ++i) {
            double e = 0.0;
            for (int64_t c = 0; c < s.cols; ++c) e += double{row[c]} * x[i * s.cols + c];
            ASSERT_EQ(want[i * s.rows + r], static_cast<float>(e))
                << DTypeName(t) << " ref r=" << r << " i=" << i;
          }
        }
        for (SimdLevel level : Levels()) {
          for (const WeightView& v : Views(w, packed)) {
            std::vector<float> got(static_cast<size_t>(m * s.rows), -1.0f);
            QuantGemvRows(level, a, v, 0, s.rows, got.data(), s.rows);
            // Rows from the second 16-row group on (a task that does not start at row 0).
            std::vector<float> tail(got.size(), -1.0f);
            if (s.rows > 16) QuantGemvRows(level, a, v, 16, s.rows, tail.data(), s.rows);
            for (size_t k = 0; k < got.size(); ++k) {
              ASSERT_EQ(got[k], want[k])
                  << DTypeName(t) << " " << SimdLevelName(level) << (v.packed ? " packed" : "")
                  << " m=" << m << " [" << s.rows << "," << s.cols << "] at " << k;
              if (static_cast<int64_t>(k) % s.rows >= 16) {
                ASSERT_EQ(tail[k], want[k]) << DTypeName(t) << " rows from 16, at " << k;
              }
            }
          }
        }
        ++cases;
      }
    }
  }
  EXPECT_GT(cases, 100);
}

TEST(QuantKernelTest, EveryPathMatchesScalarReferenceOnRandomWeights) {
  int cases = 0;
  for (DType t : kFormats) {
    for (const Shape& s : Shapes(t)) {
      const std::vector<float> wf = Gauss(s.rows * s.cols, 11 + cases, 0.05f);
      const Quantized w = Quantize(wf, t, s.rows, s.cols);
      const Quantized packed = WithPacked(w);
      for (int64_t m : {1, 4, 7, 9, 21}) {
        const std::vector<float> x = Gauss(m * s.cols, 300 + cases);
        QuantizedActs a;
        QuantizeActs(x.data(), m, s.cols, ActBlock(t), &a);
        std::vector<float> want(static_cast<size_t>(m * s.rows));
        QuantMatMulRef(a, w.view, want.data(), s.rows);
        for (SimdLevel level : Levels()) {
          for (const WeightView& v : Views(w, packed)) {
            std::vector<float> got(static_cast<size_t>(m * s.rows));
            QuantGemvRows(level, a, v, 0, s.rows, got.data(), s.rows);
            for (int64_t i = 0; i < m; ++i) {
              for (int64_t r = 0; r < s.rows; ++r) {
                // Float reordering only: relative to the sum of |w| |x|.
                double mag = 0.0;
                for (int64_t c = 0; c < s.cols; ++c) {
                  mag += std::abs(double{wf[r * s.cols + c]} * x[i * s.cols + c]);
                }
                ASSERT_NEAR(got[i * s.rows + r], want[i * s.rows + r], 1e-5 * mag + 1e-6)
                    << DTypeName(t) << " " << SimdLevelName(level) << (v.packed ? " packed" : "")
                    << " m=" << m << " r=" << r;
              }
            }
          }
        }
        ++cases;
      }
    }
  }
}

TEST(QuantKernelTest, FastOpsMatMulWithinActivationRoundingOfDequantizedReference) {
  // Per format, the worst |fast - ref| seen divided by the bound (reported, must be <= 1).
  for (DType t : kFormats) {
    double worst = 0.0;
    for (const Shape& s : {Shape{17, 3 * DTypeBlockValues(t)}, Shape{40, 2 * DTypeBlockValues(t)},
                           Shape{300, 4 * DTypeBlockValues(t)}}) {
      const Quantized w = Quantize(Gauss(s.rows * s.cols, 5, 0.05f), t, s.rows, s.cols);
      // FastOps on the packed form where this CPU has one (what the loader gives it).
      const Quantized packed = WithPacked(w);
      for (int64_t m : {1, 3, 8, 9, 37}) {  // GEMV and the prefill path
        const std::vector<float> x = Gauss(m * s.cols, 77 + m);
        std::vector<float> fast(static_cast<size_t>(m * s.rows)), ref(fast.size());
        FastOps().MatMul(x.data(), m, packed.view, nullptr, fast.data());
        RefOps().MatMul(x.data(), m, w.view, nullptr, ref.data());
        QuantizedActs a;
        QuantizeActs(x.data(), m, s.cols, ActBlock(t), &a);
        const int64_t nb = s.cols / a.block;
        std::vector<float> row(static_cast<size_t>(s.cols));
        for (int64_t r = 0; r < s.rows; ++r) {
          DequantizeRef(w.view.Row(r), t, s.cols, row.data());
          for (int64_t i = 0; i < m; ++i) {
            double bound = 0.0, mag = 0.0;
            for (int64_t c = 0; c < s.cols; ++c) {
              bound += std::abs(double{row[c]}) * a.d[i * nb + c / a.block] / 2;
              mag += std::abs(double{row[c]} * x[i * s.cols + c]);
            }
            bound += 1e-5 * mag;
            const double err = std::abs(double{fast[i * s.rows + r]} - ref[i * s.rows + r]);
            ASSERT_LE(err, bound) << DTypeName(t) << " m=" << m << " r=" << r;
            worst = std::max(worst, err / bound);
          }
        }
      }
    }
    std::printf("%s: worst |fast - dequantized ref| = %.2f of the activation-rounding bound\n",
                std::string(DTypeName(t)).c_str(), worst);
  }
}

// BF16 packed (AVX-512 BF16: PackedBytes > 0): the layout, and Bf16PackedMatMul in both
// activation modes against the exact f64 product within their bounds (quant.h, Bf16Acts;
// S = sum_j |w_j x_j|):
//   kSplit:   |y - w.x| <= 2^-16 S + (2 cols + 1) 2^-24 (1 + 2^-7) S,
//   kRounded: |y - w.x| <= 2^-8 S + (cols + 1) 2^-24 (1 + 2^-7) S, and against the f64 product
//             with x rounded to bf16 within the f32-summation part alone;
// FastOps' prefill (the loader's packed view) runs kSplit unless RAGSERVE_BF16_ACTS=1.
struct Bf16Matrix {
  std::vector<uint16_t> w;
  std::vector<uint8_t> packed;
  WeightView view;
};

Bf16Matrix MakeBf16(int64_t rows, int64_t cols, uint32_t seed) {
  Bf16Matrix b;
  const std::vector<float> f = Gauss(rows * cols, seed, 0.05f);
  b.w.resize(f.size());
  ConvertFromF32(f.data(), DType::kBF16, rows * cols, b.w.data());
  b.view = {b.w.data(), DType::kBF16, rows, cols};
  b.packed.resize(static_cast<size_t>(PackedBytes(b.view)));
  if (!b.packed.empty()) {
    PackWeights(b.view, b.packed.data());
    b.view.packed = b.packed.data();
  }
  return b;
}

TEST(QuantKernelTest, Bf16PackedLayoutInterleavesPairsOf16Rows) {
  const Bf16Matrix b = MakeBf16(21, 6, 3);
  if (b.view.packed == nullptr) GTEST_SKIP() << "no AVX-512 BF16 on this CPU";
  ASSERT_EQ(PackedBytes(b.view), 32 * 6 * 2);  // 2 groups of 16 rows
  const auto* p = static_cast<const uint16_t*>(b.view.packed);
  for (int64_t g = 0; g < 2; ++g) {
    for (int64_t pair = 0; pair < 3; ++pair) {
      for (int64_t r = 0; r < 16; ++r) {
        for (int64_t e = 0; e < 2; ++e) {
          const int64_t row = g * 16 + r;
          const uint16_t want = row < 21 ? b.w[row * 6 + 2 * pair + e] : 0;
          ASSERT_EQ(p[g * 16 * 6 + pair * 32 + 2 * r + e], want) << g << " " << pair << " " << r;
        }
      }
    }
  }
  const WeightView odd = {b.w.data(), DType::kBF16, 2, 5};
  EXPECT_EQ(PackedBytes(odd), 0);  // odd cols: no pairs, the f32 GEMM serves it
}

TEST(QuantKernelTest, Bf16PackedFormIsIgnoredBelowAvx512) {
  // Capped below AVX-512 (SetFastOpsMaxSimd), a packed bf16 view runs the sgemm of the rows it
  // also carries: the same result as the view without its packed form.
  const Bf16Matrix b = MakeBf16(40, 64, 5);
  if (b.view.packed == nullptr) GTEST_SKIP() << "no AVX-512 BF16 on this CPU";
  WeightView plain = b.view;
  plain.packed = nullptr;
  const int64_t m = 20;
  const std::vector<float> x = Gauss(m * 64, 8);
  std::vector<float> y(static_cast<size_t>(m * 40)), want(y.size());
  SetFastOpsMaxSimd(SimdLevel::kAvx2);
  FastOps().MatMul(x.data(), m, b.view, nullptr, y.data());
  FastOps().MatMul(x.data(), m, plain, nullptr, want.data());
  SetFastOpsMaxSimd(SimdLevel::kAvx512);
  EXPECT_EQ(std::memcmp(y.data(), want.data(), y.size() * sizeof(float)), 0);
}

TEST(QuantKernelTest, Bf16PackedPrefillWithinItsErrorBound) {
  for (Bf16Acts mode : {Bf16Acts::kSplit, Bf16Acts::kRounded}) {
    const bool split = mode == Bf16Acts::kSplit;
    double worst = 0.0, worst_sum = 0.0;
    for (const Shape& s : {Shape{17, 64}, Shape{40, 70}, Shape{300, 96}, Shape{16, 2}}) {
      const Bf16Matrix b = MakeBf16(s.rows, s.cols, 11);
      if (b.view.packed == nullptr) GTEST_SKIP() << "no AVX-512 BF16 on this CPU";
      for (int64_t m : {9, 16, 37}) {  // the prefill path: tiles of 16 tokens, whole and partial
        const std::vector<float> x = Gauss(m * s.cols, 91 + m);
        std::vector<float> y(static_cast<size_t>(m * s.rows)), y1(y.size());
        Bf16PackedMatMul(x.data(), m, b.view, y.data(), 2, mode);
        Bf16PackedMatMul(x.data(), m, b.view, y1.data(), 1, mode);
        ASSERT_EQ(std::memcmp(y.data(), y1.data(), y.size() * sizeof(float)), 0)
            << "threads change the result";
        if (split && Bf16ActsFromEnv() == Bf16Acts::kSplit) {
          FastOps().MatMul(x.data(), m, b.view, nullptr, y1.data());
          ASSERT_EQ(std::memcmp(y.data(), y1.data(), y.size() * sizeof(float)), 0)
              << "FastOps' prefill is not the kSplit kernel";
        }
        std::vector<uint16_t> xb(x.size());
        ConvertFromF32(x.data(), DType::kBF16, m * s.cols, xb.data());
        for (int64_t r = 0; r < s.rows; ++r) {
          for (int64_t i = 0; i < m; ++i) {
            double exact = 0.0, rounded = 0.0, mag = 0.0, wsum = 0.0;
            for (int64_t c = 0; c < s.cols; ++c) {
              const double w = Bf16ToF32(b.w[r * s.cols + c]);
              exact += w * x[i * s.cols + c];
              rounded += w * Bf16ToF32(xb[i * s.cols + c]);
              mag += std::abs(w * x[i * s.cols + c]);
              wsum += std::abs(w);
            }
            const double sum_bound =
                ((split ? 2 : 1) * s.cols + 1) * std::ldexp(mag, -24) * (1 + std::ldexp(1.0, -7)) +
                std::ldexp(wsum, -125);
            const double bound = std::ldexp(mag, split ? -16 : -8) + sum_bound;
            const double got = y[i * s.rows + r];
            ASSERT_LE(std::abs(got - exact), bound)
                << (split ? "split" : "rounded") << " m=" << m << " r=" << r << " i=" << i;
            worst = std::max(worst, std::abs(got - exact) / bound);
            if (!split) {
              ASSERT_LE(std::abs(got - rounded), sum_bound) << "m=" << m << " r=" << r;
              worst_sum = std::max(worst_sum, std::abs(got - rounded) / sum_bound);
            }
          }
        }
      }
    }
    std::printf("bf16 packed %s: worst |y - w.x| = %.2f of the bound", split ? "split" : "rounded",
                worst);
    if (!split) std::printf(", |y - w.bf16(x)| = %.2f of the f32-summation bound", worst_sum);
    std::printf("\n");
  }
}

TEST(QuantKernelTest, MatMulSharedOfQuantizedMatricesEqualsMatMulEach) {
  const int64_t cols = 512;
  const Quantized a = Quantize(Gauss(40 * cols, 1, 0.05f), DType::kQ4_K, 40, cols);
  const Quantized b = Quantize(Gauss(24 * cols, 2, 0.05f), DType::kQ6_K, 24, cols);
  const Quantized c = Quantize(Gauss(8 * cols, 3, 0.05f), DType::kQ8_0, 8, cols);
  for (int64_t m : {1, 5, 20}) {
    const std::vector<float> x = Gauss(m * cols, 9);
    const WeightView* ws[] = {&a.view, &b.view, &c.view};
    const WeightView* bs[] = {nullptr, nullptr, nullptr};
    std::vector<float> ya(m * 40), yb(m * 24), yc(m * 8), ea(m * 40), eb(m * 24), ec(m * 8);
    float* ys[] = {ya.data(), yb.data(), yc.data()};
    FastOps().MatMulShared(x.data(), m, 3, ws, bs, ys);
    FastOps().MatMul(x.data(), m, a.view, nullptr, ea.data());
    FastOps().MatMul(x.data(), m, b.view, nullptr, eb.data());
    FastOps().MatMul(x.data(), m, c.view, nullptr, ec.data());
    EXPECT_EQ(ya, ea);
    EXPECT_EQ(yb, eb);
    EXPECT_EQ(yc, ec);
  }
}

TEST(QuantKernelTest, QuantizeRoundTripWithinPerFormatError) {
  // Relative L2 error of dequantize(quantize(x)) for Gaussian x.
  const std::pair<DType, double> bounds[] = {
      {DType::kQ8_0, 0.01}, {DType::kQ6_K, 0.03}, {DType::kQ4_0, 0.15}, {DType::kQ4_K, 0.12}};
  for (auto [t, bound] : bounds) {
    const int64_t n = 4096;
    const std::vector<float> x = Gauss(n, 42);
    std::vector<uint8_t> q(static_cast<size_t>(DTypeBytes(t, n)));
    QuantizeRef(x.data(), t, n, q.data());
    std::vector<float> back(static_cast<size_t>(n));
    DequantizeRef(q.data(), t, n, back.data());
    double err = 0.0, norm = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      err += (x[i] - back[i]) * double{x[i] - back[i]};
      norm += x[i] * double{x[i]};
    }
    const double rel = std::sqrt(err / norm);
    std::printf("%s round trip: relative L2 error %.4f (bound %.2f)\n",
                std::string(DTypeName(t)).c_str(), rel, bound);
    EXPECT_LT(rel, bound) << DTypeName(t);
    // ConvertToF32 / ConvertFromF32 are the same functions for the block formats.
    std::vector<uint8_t> q2(q.size());
    ConvertFromF32(x.data(), t, n, q2.data());
    EXPECT_EQ(q, q2);
  }
}

TEST(QuantKernelTest, ActivationQuantizationIsSymmetricPerBlock) {
  const std::vector<float> x = Gauss(2 * 512, 3);
  for (int block : {32, 256}) {
    QuantizedActs a;
    QuantizeActs(x.data(), 2, 512, block, &a);
    ASSERT_EQ(reinterpret_cast<uintptr_t>(a.Q(0)) % 64, 0u);
    for (int64_t i = 0; i < 2; ++i) {
      for (int64_t c = 0; c < 512; ++c) {
        const float d = a.d[i * (512 / block) + c / block];
        EXPECT_LE(std::abs(a.Q(i)[c] * d - x[i * 512 + c]), d / 2 * 1.0001f);
      }
      for (int64_t c = 0; c < 512 / 4; ++c) {
        EXPECT_EQ(a.lsum[i * 128 + c],
                  a.Q(i)[4 * c] + a.Q(i)[4 * c + 1] + a.Q(i)[4 * c + 2] + a.Q(i)[4 * c + 3]);
      }
    }
  }
}

TEST(QuantKernelTest, ActivationQuantizerPathsWriteTheSameBytes) {
  if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw")) {
    GTEST_SKIP() << "no AVX-512 on this CPU: only the scalar activation quantizer runs";
  }
  for (int block : {32, 256}) {
    for (int64_t cols : {int64_t{block}, int64_t{3} * block, int64_t{5} * block}) {
      std::vector<float> x = Gauss(cols, static_cast<uint32_t>(cols + block));
      x[1] = 40.0f;  // the block maximum (q = 127) and an exact zero
      x[2] = 0.0f;
      std::vector<int8_t> q1(static_cast<size_t>((cols + 63) / 64 * 64)), q2(q1.size());
      std::vector<float> d1(static_cast<size_t>(cols / block)), d2(d1.size());
      std::vector<int32_t> l1(static_cast<size_t>(cols / 4)), l2(l1.size() + 16, 7);
      internal::QuantizeActRowScalar(x.data(), cols, block, q1.data(), d1.data(), l1.data());
      internal::QuantizeActRowAvx512(x.data(), cols, block, q2.data(), d2.data(), l2.data());
      EXPECT_TRUE(std::equal(q1.begin(), q1.begin() + cols, q2.begin())) << block << " " << cols;
      EXPECT_EQ(d1, d2);
      EXPECT_TRUE(std::equal(l1.begin(), l1.end(), l2.begin()));
      EXPECT_EQ(l2[l1.size()], 7) << "wrote past the row's lane sums";
    }
  }
}

TEST(QuantKernelTest, DTypeNamesAndSizes) {
  DType t;
  ASSERT_TRUE(DTypeFromName("q4_k", &t));
  EXPECT_EQ(t, DType::kQ4_K);
  ASSERT_TRUE(DTypeFromName("BF16", &t));
  EXPECT_EQ(t, DType::kBF16);
  EXPECT_FALSE(DTypeFromName("q5_k", &t));
  EXPECT_EQ(DTypeBytes(DType::kQ8_0, 64), 68);
  EXPECT_EQ(DTypeBytes(DType::kQ6_K, 512), 420);
  EXPECT_EQ(DTypeBytes(DType::kBF16, 10), 20);
  const WeightView w{nullptr, DType::kQ4_0, 3, 96};
  EXPECT_EQ(w.RowBytes(), 54);
  EXPECT_EQ(w.Bytes(), 162);
}

}  // namespace
}  // namespace ragserve::kernels
