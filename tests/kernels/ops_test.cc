// Every fast CPU op against the plain reference (RefOps) over a table of shapes and dtypes:
// sizes 1, odd, and non-multiples of the SIMD width / unroll, the GEMV path (m <= 8) and the sgemm
// path (m > 8), f32 / f16 / bf16 weights. Seeded random inputs.
#include "kernels/cpu/ops.h"

#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/attention.h"

namespace ragserve::kernels {
namespace {

std::vector<float> Rand(int64_t n, uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = d(rng);
  return v;
}

struct Stored {
  std::vector<uint8_t> bytes;
  WeightView view;
};
Stored Store(const std::vector<float>& f, DType t, int64_t rows, int64_t cols) {
  Stored s;
  s.bytes.resize(f.size() * DTypeSize(t));
  ConvertFromF32(f.data(), t, static_cast<int64_t>(f.size()), s.bytes.data());
  s.view = {s.bytes.data(), t, rows, cols};
  return s;
}

float MaxRelErr(const std::vector<float>& a, const std::vector<float>& b) {
  float m = 0.0f;
  for (size_t i = 0; i < a.size(); ++i) {
    m = std::max(m, std::abs(a[i] - b[i]) / (1.0f + std::abs(b[i])));
  }
  return m;
}

const DType kDtypes[] = {DType::kF32, DType::kF16, DType::kBF16};

TEST(OpsTest, MatMulFastMatchesReferenceForEveryPathShapeAndDtype) {
  int cases = 0;
  for (DType t : kDtypes) {
    for (int64_t m : {1, 2, 3, 4, 5, 7, 8, 9, 33}) {
      for (auto [rows, cols] : {std::pair<int64_t, int64_t>{1, 1},
                                {17, 7},
                                {33, 33},
                                {64, 100},
                                {300, 257},
                                {5, 512},
                                {9, 48}}) {
        const Stored w = Store(Rand(rows * cols, 1 + cases), t, rows, cols);
        const Stored b = Store(Rand(rows, 2 + cases), t, 1, rows);
        const std::vector<float> x = Rand(m * cols, 3 + cases);
        for (bool bias : {false, true}) {
          std::vector<float> yr(m * rows), yf(m * rows, 123.0f);
          RefOps().MatMul(x.data(), m, w.view, bias ? &b.view : nullptr, yr.data());
          FastOps().MatMul(x.data(), m, w.view, bias ? &b.view : nullptr, yf.data());
          EXPECT_LT(MaxRelErr(yf, yr), 2e-5f) << DTypeName(t) << " m=" << m << " rows=" << rows
                                              << " cols=" << cols << " bias=" << bias;
        }
        ++cases;
      }
    }
  }
}

// Every SIMD level the CPU has (scalar, AVX2, AVX-512: SetFastOpsMaxSimd caps the run-time
// choice), every batch size of the GEMV path, and shapes that hit each part of the kernels: column
// counts below one SIMD block, exact multiples of the AVX2 (16) and AVX-512 (32) blocks, multiples
// of 16 but not 32 (the AVX-512 bf16 tail), odd counts; row counts that leave a remainder after
// the 2- and 4-row passes; and matrices large enough (>= 512 KiB) to be split across threads.
class SimdCap {
 public:
  explicit SimdCap(SimdLevel l) { SetFastOpsMaxSimd(l); }
  ~SimdCap() { SetFastOpsMaxSimd(SimdLevel::kAvx512); }
};

TEST(OpsTest, GemvEverySimdLevelMatchesReference) {
  const SimdLevel best = CpuSimdLevel();
  std::vector<SimdLevel> levels = {SimdLevel::kScalar};
  if (best >= SimdLevel::kAvx2) levels.push_back(SimdLevel::kAvx2);
  if (best >= SimdLevel::kAvx512) levels.push_back(SimdLevel::kAvx512);
  if (best < SimdLevel::kAvx512) {
    std::printf("note: this CPU has no AVX-512 (best %s); that level is not covered here\n",
                std::string(SimdLevelName(best)).c_str());
  }
  int cases = 0;
  for (SimdLevel level : levels) {
    SimdCap cap(level);
    ASSERT_EQ(FastOpsSimdLevel(), level);
    for (DType t : kDtypes) {
      for (auto [rows, cols] : {std::pair<int64_t, int64_t>{1, 5},
                                {3, 15},
                                {5, 16},
                                {7, 31},
                                {9, 32},
                                {17, 48},
                                {6, 64},
                                {13, 97},
                                {33, 257},
                                {11, 2055},
                                {301, 1000}}) {
        const Stored w = Store(Rand(rows * cols, 100 + cases), t, rows, cols);
        for (int64_t m = 1; m <= kGemvMaxRows; ++m) {
          const std::vector<float> x = Rand(m * cols, 200 + cases);
          std::vector<float> yr(m * rows), yf(m * rows, 123.0f);
          RefOps().MatMul(x.data(), m, w.view, nullptr, yr.data());
          FastOps().MatMul(x.data(), m, w.view, nullptr, yf.data());
          ASSERT_LT(MaxRelErr(yf, yr), 2e-5f) << SimdLevelName(level) << " " << DTypeName(t)
                                              << " m=" << m << " rows=" << rows << " cols=" << cols;
          ++cases;
        }
      }
    }
  }
}

// One shared call over matrices of different dtypes (bf16 wants the activations permuted, f32
// and f16 do not) equals one reference matmul per matrix, at every SIMD level.
TEST(OpsTest, MatMulSharedMixedDtypesEveryLevel) {
  const int64_t cols = 200;
  const Stored a = Store(Rand(40 * cols, 60), DType::kBF16, 40, cols);
  const Stored b = Store(Rand(24 * cols, 61), DType::kF32, 24, cols);
  const Stored c = Store(Rand(9 * cols, 62), DType::kF16, 9, cols);
  for (SimdLevel level : {SimdLevel::kScalar, SimdLevel::kAvx2, SimdLevel::kAvx512}) {
    if (level > CpuSimdLevel()) continue;
    SimdCap cap(level);
    for (int64_t m : {1, 4, 8}) {
      const std::vector<float> x = Rand(m * cols, 63);
      const WeightView* ws[] = {&a.view, &b.view, &c.view};
      const WeightView* bs[] = {nullptr, nullptr, nullptr};
      std::vector<float> ya(m * 40), yb(m * 24), yc(m * 9);
      float* ys[] = {ya.data(), yb.data(), yc.data()};
      FastOps().MatMulShared(x.data(), m, 3, ws, bs, ys);
      for (int i = 0; i < 3; ++i) {
        std::vector<float> want(m * ws[i]->rows);
        RefOps().MatMul(x.data(), m, *ws[i], nullptr, want.data());
        std::vector<float> got(ys[i], ys[i] + want.size());
        EXPECT_LT(MaxRelErr(got, want), 2e-5f)
            << SimdLevelName(level) << " m=" << m << " matrix " << i;
      }
    }
  }
}

TEST(OpsTest, MatMulSharedEqualsOneMatMulPerWeight) {
  for (DType t : kDtypes) {
    for (int64_t m : {1, 3, 8, 12}) {
      const int64_t cols = 200;
      const Stored a = Store(Rand(96 * cols, 50), t, 96, cols);
      const Stored b = Store(Rand(33 * cols, 51), t, 33, cols);
      const Stored c = Store(Rand(700 * cols, 52), t, 700, cols);
      const Stored bias = Store(Rand(33, 53), t, 1, 33);
      const std::vector<float> x = Rand(m * cols, 54);
      const WeightView* ws[] = {&a.view, &b.view, &c.view};
      const WeightView* bs[] = {nullptr, &bias.view, nullptr};
      std::vector<float> ya(m * 96), yb(m * 33), yc(m * 700);
      float* ys[] = {ya.data(), yb.data(), yc.data()};
      FastOps().MatMulShared(x.data(), m, 3, ws, bs, ys);
      for (int i = 0; i < 3; ++i) {
        std::vector<float> want(m * ws[i]->rows);
        RefOps().MatMul(x.data(), m, *ws[i], bs[i], want.data());
        std::vector<float> got(ys[i], ys[i] + want.size());
        EXPECT_LT(MaxRelErr(got, want), 2e-5f) << DTypeName(t) << " m=" << m << " matrix " << i;
      }
    }
  }
}

TEST(OpsTest, RmsNormSiluMulAddEmbedFastMatchReference) {
  for (DType t : kDtypes) {
    for (auto [m, n] : {std::pair<int64_t, int64_t>{1, 1}, {3, 37}, {9, 256}, {70, 1024}}) {
      const std::vector<float> x = Rand(m * n, 10, -3.0f, 3.0f);
      const Stored g = Store(Rand(n, 11, 0.5f, 1.5f), t, 1, n);
      std::vector<float> yr(m * n), yf(m * n);
      RefOps().RmsNorm(x.data(), m, n, g.view, 1e-5f, yr.data());
      FastOps().RmsNorm(x.data(), m, n, g.view, 1e-5f, yf.data());
      EXPECT_LT(MaxRelErr(yf, yr), 1e-5f) << "rmsnorm " << m << "x" << n;
      // In place (y aliases x) gives the same.
      std::vector<float> xi = x;
      FastOps().RmsNorm(xi.data(), m, n, g.view, 1e-5f, xi.data());
      EXPECT_LT(MaxRelErr(xi, yr), 1e-5f);

      const std::vector<float> up = Rand(m * n, 12, -3.0f, 3.0f);
      RefOps().SiluMul(x.data(), up.data(), m * n, yr.data());
      FastOps().SiluMul(x.data(), up.data(), m * n, yf.data());
      EXPECT_LT(MaxRelErr(yf, yr), 1e-5f) << "silu_mul " << m * n;
      // silu(g) * u at one point, by hand.
      EXPECT_NEAR(yr[0], x[0] / (1.0f + std::exp(-x[0])) * up[0], 1e-5f);

      std::vector<float> ar = x, af = x;
      RefOps().Add(ar.data(), up.data(), m * n);
      FastOps().Add(af.data(), up.data(), m * n);
      EXPECT_EQ(ar, af);
      EXPECT_FLOAT_EQ(ar[0], x[0] + up[0]);

      const Stored table = Store(Rand(50 * n, 13), t, 50, n);
      const std::vector<int32_t> ids = {0, 49, 7, 7};
      std::vector<float> er(4 * n), ef(4 * n);
      RefOps().Embed(table.view, ids.data(), 4, er.data());
      FastOps().Embed(table.view, ids.data(), 4, ef.data());
      EXPECT_EQ(er, ef);
    }
  }
}

TEST(OpsTest, RopeFastMatchesReferenceAndPreservesNorms) {
  for (int hd : {2, 16, 64, 128}) {
    const int heads = 3;
    const int64_t m = 11;
    std::vector<float> inv(hd / 2);
    for (int i = 0; i < hd / 2; ++i) inv[i] = std::pow(10000.0f, -2.0f * i / hd);
    std::vector<int32_t> pos(m);
    for (int64_t i = 0; i < m; ++i) pos[i] = static_cast<int32_t>(i * 97 + 3);
    const std::vector<float> x = Rand(m * heads * hd, 20 + hd);
    std::vector<float> r = x, f = x;
    RefOps().Rope(r.data(), m, heads, hd, pos.data(), inv.data());
    FastOps().Rope(f.data(), m, heads, hd, pos.data(), inv.data());
    EXPECT_LT(MaxRelErr(f, r), 1e-5f) << "head_dim " << hd;
    // A rotation keeps each pair's length and moves the vector (position 3 > 0).
    EXPECT_NEAR(r[0] * r[0] + r[hd / 2] * r[hd / 2], x[0] * x[0] + x[hd / 2] * x[hd / 2], 1e-5f);
    EXPECT_GT(std::abs(r[0] - x[0]), 1e-4f);
  }
}

TEST(OpsTest, AttentionFastMatchesReferenceIncludingEmptyAndStridedKeys) {
  for (int d : {1, 8, 64, 100}) {
    for (int64_t n : {0, 1, 5, 130}) {
      for (int h : {1, 4}) {
        const int64_t ld = d + 3;  // strided rows
        const std::vector<float> q = Rand(h * d, 30), k = Rand(std::max<int64_t>(n, 1) * ld, 31),
                                 v = Rand(std::max<int64_t>(n, 1) * ld, 32);
        std::vector<float> orf(h * d), of(h * d), lr(h), lf(h);
        const float scale = 1.0f / std::sqrt(static_cast<float>(d));
        RefOps().Attention(q.data(), h, k.data(), ld, v.data(), ld, n, d, scale, orf.data(),
                           lr.data());
        FastOps().Attention(q.data(), h, k.data(), ld, v.data(), ld, n, d, scale, of.data(),
                            lf.data());
        EXPECT_LT(MaxRelErr(of, orf), 1e-5f) << "d=" << d << " n=" << n << " h=" << h;
        if (n == 0) {
          EXPECT_EQ(lf[0], -std::numeric_limits<float>::infinity());
        } else {
          EXPECT_LT(MaxRelErr(lf, lr), 1e-5f);
        }
      }
    }
  }
}

TEST(OpsTest, TiledCausalAndBlockAttentionMatchThePerRowReference) {
  struct Shape {
    int n;
    int64_t extra;  // cached keys before the queries
    int heads, kv_heads, d;
    int64_t window;
  };
  const Shape shapes[] = {{16, 0, 4, 2, 64, 0},  {17, 5, 4, 2, 64, 0},      {33, 300, 8, 1, 80, 0},
                          {100, 0, 3, 3, 17, 0}, {64, 700, 4, 2, 64, 50},   {40, 20, 4, 4, 32, 7},
                          {257, 3, 2, 1, 64, 0}, {16, 1000, 6, 2, 128, 300}};
  uint32_t seed = 40;
  for (const Shape& sh : shapes) {
    SCOPED_TRACE(::testing::Message()
                 << "n=" << sh.n << " cached=" << sh.extra << " heads=" << sh.heads << "/"
                 << sh.kv_heads << " d=" << sh.d << " window=" << sh.window);
    const int64_t len = sh.n + sh.extra;
    const int64_t row = int64_t{sh.kv_heads} * sh.d;
    const std::vector<float> q = Rand(int64_t{sh.n} * sh.heads * sh.d, ++seed, -2.0f, 2.0f);
    const std::vector<float> k = Rand(len * row, ++seed, -2.0f, 2.0f), v = Rand(len * row, ++seed);
    std::vector<float> o(q.size()), lse(static_cast<size_t>(sh.n) * sh.heads);
    std::vector<float> ro(q.size()), rlse(lse.size());
    const float scale = 1.0f / std::sqrt(static_cast<float>(sh.d));
    ASSERT_GE(sh.n, kTiledAttentionMinQueries);  // FastOps takes the tiled path
    FastOps().CausalAttention(q.data(), sh.n, sh.heads, sh.kv_heads, sh.d, k.data(), v.data(), len,
                              sh.window, scale, o.data(), lse.data(), 2);
    RefOps().CausalAttention(q.data(), sh.n, sh.heads, sh.kv_heads, sh.d, k.data(), v.data(), len,
                             sh.window, scale, ro.data(), rlse.data(), 1);
    for (size_t i = 0; i < o.size(); ++i) ASSERT_NEAR(o[i], ro[i], 2e-5) << "o at " << i;
    for (size_t i = 0; i < lse.size(); ++i) {
      ASSERT_NEAR(lse[i], rlse[i], 2e-5 * (1.0f + std::abs(rlse[i]))) << "lse at " << i;
    }
    // The same queries against the cache as a block (every key visible; `extra` = 0 gives an
    // empty block only when n = 0, so the block here is the first `extra` keys when present).
    const int64_t blen = sh.extra;
    FastOps().BlockAttention(q.data(), sh.n, sh.heads, sh.kv_heads, sh.d, k.data(), v.data(), blen,
                             scale, o.data(), lse.data(), 2);
    RefOps().BlockAttention(q.data(), sh.n, sh.heads, sh.kv_heads, sh.d, k.data(), v.data(), blen,
                            scale, ro.data(), rlse.data(), 1);
    for (size_t i = 0; i < o.size(); ++i) ASSERT_NEAR(o[i], ro[i], 2e-5) << "block o at " << i;
    for (size_t i = 0; i < lse.size(); ++i) {
      if (std::isinf(rlse[i])) {
        ASSERT_TRUE(std::isinf(lse[i]) && lse[i] < 0) << "empty block lse at " << i;
      } else {
        ASSERT_NEAR(lse[i], rlse[i], 2e-5 * (1.0f + std::abs(rlse[i]))) << "block lse at " << i;
      }
    }
  }
}

// The bandwidth kernels (one read of K and of V for all heads of a group, split-K over threads,
// the exact key scan) against the f64 reference: shapes on and off the SIMD paths (d % 16, heads
// not a multiple of 4, key counts around the 8-key and block edges, strided rows, long n where
// the float sums and the vectorized exp accumulate error).
TEST(OpsTest, BandwidthAttentionKernelsMatchTheReferenceOnEdgeAndLongShapes) {
  struct Shape {
    int h, d;
    int64_t n, ld;
  };
  const Shape shapes[] = {{1, 16, 1, 16},      {4, 128, 7, 128},   {4, 128, 9, 131},
                          {3, 64, 255, 64},    {5, 32, 257, 40},   {7, 48, 1000, 48},
                          {8, 128, 4099, 256}, {2, 96, 20000, 96}, {4, 128, 40000, 128}};
  uint32_t seed = 90;
  for (const Shape& sh : shapes) {
    SCOPED_TRACE(::testing::Message()
                 << "h=" << sh.h << " d=" << sh.d << " n=" << sh.n << " ld=" << sh.ld);
    const std::vector<float> q = Rand(int64_t{sh.h} * sh.d, ++seed, -2.0f, 2.0f);
    const std::vector<float> k = Rand(sh.n * sh.ld, ++seed, -2.0f, 2.0f);
    const std::vector<float> v = Rand(sh.n * sh.ld, ++seed);
    const float scale = 1.0f / std::sqrt(static_cast<float>(sh.d));
    std::vector<float> ro(q.size()), rl(sh.h), o(q.size()), l(sh.h), po(q.size()), pl(sh.h);
    AttentionPartialRef(q.data(), sh.h, k.data(), sh.ld, v.data(), sh.ld, sh.n, sh.d, scale,
                        ro.data(), rl.data());
    AttentionPartial(q.data(), sh.h, k.data(), sh.ld, v.data(), sh.ld, sh.n, sh.d, scale, o.data(),
                     l.data());
    AttentionPartialParallel(q.data(), sh.h, k.data(), sh.ld, v.data(), sh.ld, sh.n, sh.d, scale,
                             po.data(), pl.data(), 2);
    for (size_t i = 0; i < o.size(); ++i) {
      ASSERT_NEAR(o[i], ro[i], 2e-5) << "o at " << i;
      ASSERT_NEAR(po[i], ro[i], 2e-5) << "split-K o at " << i;
    }
    for (int i = 0; i < sh.h; ++i) {
      ASSERT_NEAR(l[i], rl[i], 2e-5 * (1.0f + std::abs(rl[i]))) << "lse at " << i;
      ASSERT_NEAR(pl[i], rl[i], 2e-5 * (1.0f + std::abs(rl[i]))) << "split-K lse at " << i;
    }
    // The exact key scan's scores.
    std::vector<float> sc(static_cast<size_t>(sh.h) * sh.n);
    KeyScores(q.data(), sh.h, k.data(), sh.ld, sh.n, sh.d, scale, sc.data());
    for (int hh = 0; hh < sh.h; ++hh) {
      for (int64_t j = 0; j < sh.n; ++j) {
        double dot = 0;
        for (int c = 0; c < sh.d; ++c) {
          dot += static_cast<double>(q[hh * sh.d + c]) * k[j * sh.ld + c];
        }
        ASSERT_NEAR(sc[hh * sh.n + j], scale * dot, 2e-5 * (1.0 + std::abs(scale * dot)))
            << "score of head " << hh << " key " << j;
      }
    }
  }
}

TEST(OpsTest, DecodeAttentionOverALongCacheOfOneKvHeadMatchesTheReference) {
  // One kv head and one query row: FastOps splits the keys across the threads.
  const int heads = 4, kv_heads = 1, d = 64;
  const int64_t len = 20000;
  const std::vector<float> q = Rand(heads * d, 70, -2.0f, 2.0f);
  const std::vector<float> k = Rand(len * d, 71, -2.0f, 2.0f), v = Rand(len * d, 72);
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  for (int64_t window : {int64_t{0}, int64_t{9000}}) {
    std::vector<float> o(q.size()), lse(heads), ro(q.size()), rlse(heads);
    FastOps().CausalAttention(q.data(), 1, heads, kv_heads, d, k.data(), v.data(), len, window,
                              scale, o.data(), lse.data(), 2);
    RefOps().CausalAttention(q.data(), 1, heads, kv_heads, d, k.data(), v.data(), len, window,
                             scale, ro.data(), rlse.data(), 1);
    for (size_t i = 0; i < o.size(); ++i) ASSERT_NEAR(o[i], ro[i], 2e-5) << "window " << window;
    for (int i = 0; i < heads; ++i) {
      ASSERT_NEAR(lse[i], rlse[i], 2e-5 * (1.0f + std::abs(rlse[i]))) << "window " << window;
    }
  }
}

TEST(OpsTest, MergingPartialsOverASplitEqualsAttentionOverAllKeys) {
  const int h = 3, d = 16;
  const int64_t n = 40;
  const std::vector<float> q = Rand(h * d, 40, -2.0f, 2.0f), k = Rand(n * d, 41),
                           v = Rand(n * d, 42);
  std::vector<float> ow(h * d), lw(h), oa(h * d), la(h), ob(h * d), lb(h);
  AttentionPartialRef(q.data(), h, k.data(), d, v.data(), d, n, d, 0.25f, ow.data(), lw.data());
  AttentionPartial(q.data(), h, k.data(), d, v.data(), d, 13, d, 0.25f, oa.data(), la.data());
  AttentionPartial(q.data(), h, k.data() + 13 * d, d, v.data() + 13 * d, d, n - 13, d, 0.25f,
                   ob.data(), lb.data());
  MergePartial(oa.data(), la.data(), ob.data(), lb.data(), h, d);
  EXPECT_LT(MaxRelErr(oa, ow), 1e-5f);
  EXPECT_LT(MaxRelErr(la, lw), 1e-5f);
}

TEST(OpsTest, DtypeConversionsRoundToNearestEvenAndKeepSpecials) {
  EXPECT_EQ(F32ToBf16(1.0f), 0x3f80);
  EXPECT_EQ(Bf16ToF32(0x3f80), 1.0f);
  EXPECT_EQ(F32ToBf16(1.0f + 0x1.0p-8f), 0x3f80);      // tie -> even (down)
  EXPECT_EQ(F32ToBf16(1.0f + 3 * 0x1.0p-8f), 0x3f82);  // tie -> even (up)
  EXPECT_TRUE(std::isnan(Bf16ToF32(F32ToBf16(std::nanf("")))));
  EXPECT_EQ(F32ToF16(1.0f), 0x3c00);
  EXPECT_EQ(F16ToF32(0x3c00), 1.0f);
  EXPECT_EQ(F16ToF32(0x0001), 0x1.0p-24f);  // smallest subnormal
  EXPECT_EQ(F32ToF16(0x1.0p-24f), 0x0001);
  EXPECT_EQ(F32ToF16(65520.0f), 0x7c00);  // overflow -> inf
  EXPECT_EQ(F32ToF16(-2.0f), 0xc000);
  EXPECT_TRUE(std::isnan(F16ToF32(F32ToF16(std::nanf("")))));
  // Every f16 value survives f16 -> f32 -> f16.
  for (uint32_t b = 0; b < 0x10000; ++b) {
    const uint16_t h = static_cast<uint16_t>(b);
    if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff)) continue;  // NaN payloads
    ASSERT_EQ(F32ToF16(F16ToF32(h)), h) << std::hex << b;
  }
}

}  // namespace
}  // namespace ragserve::kernels
