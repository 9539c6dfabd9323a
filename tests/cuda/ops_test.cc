// CudaOps against the CPU reference (STYLE.md rule 5): one table of ops x shapes x dtypes with
// seeded random inputs and stated tolerances; the paged KV cache against the host KvCache; the
// whole tiny model on the GPU against the CPU engine (logits within tolerance, 64 greedy tokens
// identical). Runs only on a CUDA device (gpu_test_main.cc skips visibly otherwise).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/attention.h"
#include "kernels/cpu/ops.h"
#include "kernels/cuda/ops.h"
#include "kernels/cuda/paged_kv.h"
#include "services/engine/model.h"
#include "services/engine/sampling.h"
#include "tests/cuda/gpu_test_util.h"
#include "tests/engine/engine_test_util.h"

namespace ragserve::kernels::cuda {
namespace {

const Ops& Gpu() {
  static const Ops* ops = [] {
    StatusOr<const Ops*> o = CudaOps();
    EXPECT_TRUE(o.ok()) << o.status().ToString();
    return o.ok() ? *o : nullptr;
  }();
  return *ops;
}

// A device array of T owned through the GPU ops.
template <typename T>
class DeviceArray {
 public:
  explicit DeviceArray(int64_t n) : n_(n), p_(static_cast<T*>(Gpu().Allocate(Bytes()))) {}
  explicit DeviceArray(const std::vector<T>& host)
      : DeviceArray(static_cast<int64_t>(host.size())) {
    Gpu().CopyToBackend(p_, host.data(), Bytes());
  }
  ~DeviceArray() { Gpu().Free(p_); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  T* get() const { return p_; }
  std::vector<T> Download() const {
    std::vector<T> h(static_cast<size_t>(n_));
    Gpu().CopyToHost(h.data(), p_, Bytes());
    return h;
  }

 private:
  size_t Bytes() const { return static_cast<size_t>(std::max<int64_t>(n_, 1)) * sizeof(T); }
  int64_t n_;
  T* p_;
};

std::vector<float> Random(int64_t n, uint64_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = d(rng);
  return v;
}

// A weight matrix in dtype t on the host (stored bytes + the exact float values they hold) and
// its device copy.
struct TestWeight {
  std::vector<uint8_t> bytes;
  std::vector<float> values;  // dequantized: what both backends must multiply by
  std::unique_ptr<DeviceArray<uint8_t>> dev;
  WeightView host_view, dev_view;
};

std::unique_ptr<TestWeight> MakeWeight(int64_t rows, int64_t cols, DType t, uint64_t seed) {
  auto w = std::make_unique<TestWeight>();
  std::vector<float> f = Random(rows * cols, seed, -0.5f, 0.5f);
  w->bytes.resize(static_cast<size_t>(rows * cols) * DTypeSize(t));
  ConvertFromF32(f.data(), t, rows * cols, w->bytes.data());
  w->values.resize(f.size());
  ConvertToF32(w->bytes.data(), t, rows * cols, w->values.data());
  w->dev = std::make_unique<DeviceArray<uint8_t>>(w->bytes);
  w->host_view = WeightView{w->bytes.data(), t, rows, cols};
  w->dev_view = WeightView{w->dev->get(), t, rows, cols};
  return w;
}

using testing::GemmModeScope;

void ExpectSynced() {
  Status s = Gpu().Synchronize();
  ASSERT_TRUE(s.ok()) << s.ToString();
}

// ---- MatMul -------------------------------------------------------------------------------------

struct MatMulCase {
  int64_t m, rows, cols;
  DType dtype;
  bool bias;
  CudaGemmMode mode;
};

std::string Name(const MatMulCase& c) {
  return StrCat("m=", c.m, " W=[", c.rows, ",", c.cols, "] ", DTypeName(c.dtype),
                c.bias ? " +bias" : "", c.mode == CudaGemmMode::kF32 ? " gemm=f32" : " gemm=tc");
}

TEST(CudaOpsTest, MatMulMatchesReferenceOverShapesDtypesAndModes) {
  std::vector<MatMulCase> cases;
  const std::pair<int64_t, int64_t> shapes[] = {{1, 1},     {7, 13},    {33, 65},  {256, 1000},
                                                {96, 4096}, {1000, 64}, {130, 257}};
  for (DType t : {DType::kF32, DType::kF16, DType::kBF16}) {
    for (auto [rows, cols] : shapes) {
      for (int64_t m : {1, 2, 3, 5, 8, 9, 17, 64}) {
        for (CudaGemmMode mode : {CudaGemmMode::kTensorCore, CudaGemmMode::kF32}) {
          if (m <= kGemvMaxRows && mode == CudaGemmMode::kF32) continue;  // GEMV: mode unused
          cases.push_back({m, rows, cols, t, (rows + m) % 2 == 0, mode});
        }
      }
    }
  }
  GemmModeScope scope(GetCudaGemmMode());
  uint64_t seed = 11;
  for (const MatMulCase& c : cases) {
    SCOPED_TRACE(Name(c));
    SetCudaGemmMode(c.mode);
    auto w = MakeWeight(c.rows, c.cols, c.dtype, ++seed);
    auto b = MakeWeight(1, c.rows, c.dtype, ++seed);
    const std::vector<float> x = Random(c.m * c.cols, ++seed);
    DeviceArray<float> dx(x), dy(c.m * c.rows);
    Gpu().MatMul(dx.get(), c.m, w->dev_view, c.bias ? &b->dev_view : nullptr, dy.get());
    ExpectSynced();
    const std::vector<float> y = dy.Download();
    // Tolerance scaled by sum |x||w| of each dot product: f32 accumulation everywhere; with
    // tensor cores the activations are rounded to the weight dtype first (bf16: 2^-9, f16: 2^-12).
    const bool rounded = c.m > kGemvMaxRows && c.mode == CudaGemmMode::kTensorCore;
    const double tol = !rounded || c.dtype == DType::kF32 ? 2e-5
                       : c.dtype == DType::kBF16          ? 4e-3
                                                          : 6e-4;
    double worst = 0.0;
    for (int64_t i = 0; i < c.m; ++i) {
      for (int64_t r = 0; r < c.rows; ++r) {
        double ref = 0.0, mag = 1e-6;
        for (int64_t k = 0; k < c.cols; ++k) {
          const double p = double{x[i * c.cols + k]} * w->values[r * c.cols + k];
          ref += p;
          mag += std::abs(p);
        }
        if (c.bias) ref += b->values[r];
        worst = std::max(worst, std::abs(y[i * c.rows + r] - ref) / mag);
      }
    }
    EXPECT_LE(worst, tol);
  }
}

// ---- Element-wise ops ---------------------------------------------------------------------------

TEST(CudaOpsTest, RmsNormMatchesReference) {
  for (DType t : {DType::kF32, DType::kF16, DType::kBF16}) {
    for (int64_t m : {1, 3, 17}) {
      for (int64_t n : {1, 64, 1000, 4097}) {
        SCOPED_TRACE(StrCat(DTypeName(t), " m=", m, " n=", n));
        auto g = MakeWeight(1, n, t, 3 + n);
        const std::vector<float> x = Random(m * n, 7 + m, -3.0f, 3.0f);
        DeviceArray<float> dx(x), dy(m * n);
        Gpu().RmsNorm(dx.get(), m, n, g->dev_view, 1e-5f, dy.get());
        ExpectSynced();
        std::vector<float> ref(x.size());
        RefOps().RmsNorm(x.data(), m, n, g->host_view, 1e-5f, ref.data());
        const std::vector<float> y = dy.Download();
        for (size_t i = 0; i < y.size(); ++i) {
          ASSERT_NEAR(y[i], ref[i], 2e-5 * (1.0 + std::abs(ref[i]))) << "at " << i;
        }
      }
    }
  }
}

TEST(CudaOpsTest, RmsNormInPlace) {
  const int64_t m = 2, n = 300;
  auto g = MakeWeight(1, n, DType::kF32, 1);
  const std::vector<float> x = Random(m * n, 2);
  DeviceArray<float> dx(x);
  Gpu().RmsNorm(dx.get(), m, n, g->dev_view, 1e-6f, dx.get());
  ExpectSynced();
  std::vector<float> ref(x.size());
  RefOps().RmsNorm(x.data(), m, n, g->host_view, 1e-6f, ref.data());
  const std::vector<float> y = dx.Download();
  for (size_t i = 0; i < y.size(); ++i) ASSERT_NEAR(y[i], ref[i], 2e-5 * (1.0 + std::abs(ref[i])));
}

TEST(CudaOpsTest, RopeMatchesReferenceAtLargePositions) {
  for (int head_dim : {2, 64, 128, 96}) {
    for (int heads : {1, 3}) {
      for (int64_t m : {1, 5}) {
        SCOPED_TRACE(StrCat("head_dim=", head_dim, " heads=", heads, " m=", m));
        std::vector<float> inv(static_cast<size_t>(head_dim / 2));
        for (int j = 0; j < head_dim / 2; ++j) {
          inv[j] = static_cast<float>(std::pow(500000.0, -2.0 * j / head_dim));
        }
        std::vector<int32_t> pos(static_cast<size_t>(m));
        for (int64_t i = 0; i < m; ++i) pos[i] = static_cast<int32_t>(i * 40000 + 3);
        const std::vector<float> x = Random(m * heads * head_dim, 9);
        DeviceArray<float> dx(x), dinv(inv);
        DeviceArray<int32_t> dpos(pos);
        Gpu().Rope(dx.get(), m, heads, head_dim, dpos.get(), dinv.get());
        ExpectSynced();
        std::vector<float> ref = x;
        RefOps().Rope(ref.data(), m, heads, head_dim, pos.data(), inv.data());
        const std::vector<float> y = dx.Download();
        for (size_t i = 0; i < y.size(); ++i) ASSERT_NEAR(y[i], ref[i], 1e-5) << "at " << i;
      }
    }
  }
}

TEST(CudaOpsTest, SiluMulAddEmbedMatchReference) {
  for (int64_t n : {1, 1000, 100003}) {
    SCOPED_TRACE(StrCat("n=", n));
    const std::vector<float> gate = Random(n, 1, -8.0f, 8.0f), up = Random(n, 2);
    DeviceArray<float> dg(gate), du(up), dout(n);
    Gpu().SiluMul(dg.get(), du.get(), n, dout.get());
    Gpu().Add(dg.get(), du.get(), n);  // gate += up
    ExpectSynced();
    std::vector<float> ref(static_cast<size_t>(n));
    RefOps().SiluMul(gate.data(), up.data(), n, ref.data());
    const std::vector<float> out = dout.Download(), sum = dg.Download();
    for (int64_t i = 0; i < n; ++i) {
      ASSERT_NEAR(out[i], ref[i], 2e-6 * (1.0 + std::abs(ref[i]))) << "silu at " << i;
      ASSERT_EQ(sum[i], gate[i] + up[i]) << "add at " << i;
    }
  }
  for (DType t : {DType::kF32, DType::kF16, DType::kBF16}) {
    SCOPED_TRACE(DTypeName(t));
    auto table = MakeWeight(50, 33, t, 5);
    const std::vector<int32_t> ids = {0, 49, 7, 7, 21};
    DeviceArray<int32_t> dids(ids);
    DeviceArray<float> dout(static_cast<int64_t>(ids.size()) * 33);
    Gpu().Embed(table->dev_view, dids.get(), static_cast<int64_t>(ids.size()), dout.get());
    ExpectSynced();
    std::vector<float> ref(ids.size() * 33);
    RefOps().Embed(table->host_view, ids.data(), static_cast<int64_t>(ids.size()), ref.data());
    EXPECT_EQ(dout.Download(), ref);
  }
}

TEST(CudaOpsTest, StridedAttentionOpMatchesReference) {
  const int h = 4, d = 64;
  const int64_t ld = 3 * d;
  for (int64_t n : {0, 1, 100}) {
    SCOPED_TRACE(StrCat("n=", n));
    const std::vector<float> q = Random(h * d, 1), k = Random(std::max<int64_t>(n, 1) * ld, 2),
                             v = Random(std::max<int64_t>(n, 1) * ld, 3);
    DeviceArray<float> dq(q), dk(k), dv(v), dout(h * d), dlse(h);
    Gpu().Attention(dq.get(), h, dk.get(), ld, dv.get(), ld, n, d, 0.125f, dout.get(), dlse.get());
    ExpectSynced();
    std::vector<float> o(h * d), lse(h);
    AttentionPartialRef(q.data(), h, k.data(), ld, v.data(), ld, n, d, 0.125f, o.data(),
                        lse.data());
    const std::vector<float> go = dout.Download(), gl = dlse.Download();
    for (int i = 0; i < h * d; ++i) ASSERT_NEAR(go[i], o[i], 1e-5) << "o at " << i;
    for (int i = 0; i < h; ++i) {
      if (std::isinf(lse[i])) {
        EXPECT_TRUE(std::isinf(gl[i]) && gl[i] < 0) << "lse at " << i;
      } else {
        EXPECT_NEAR(gl[i], lse[i], 1e-5) << "lse at " << i;
      }
    }
  }
}

// ---- Paged KV cache -----------------------------------------------------------------------------

TEST(PagedKvCacheTest, AppendReadAttendMatchTheHostCache) {
  const int layers = 2, heads = 8, kv_heads = 2, hd = 64;
  const int64_t row = int64_t{kv_heads} * hd;
  for (DType t : {DType::kF32, DType::kF16, DType::kBF16}) {
    for (int64_t page : {1, 16, 64}) {
      SCOPED_TRACE(StrCat(DTypeName(t), " page_size=", page));
      KvPageGeometry g{kv_heads, hd, t, page};
      auto pool = KvPagePool::Create(g, 4 << 20);
      ASSERT_TRUE(pool.ok()) << pool.status().ToString();
      auto cache = PagedKvCache::Create(*pool, layers, 0);
      ASSERT_TRUE(cache.ok()) << cache.status().ToString();
      engine::KvCache host(engine::KvGeometry{layers, heads, kv_heads, hd}, 0, &RefOps());
      int64_t len = 0;
      uint64_t seed = 100;
      for (int n : {5, 1, 1, 70, 1, 3}) {
        std::vector<float> k = Random(n * row, ++seed), v = Random(n * row, ++seed);
        // The host cache gets the values as stored (rounded to t), so both attend the same keys.
        std::vector<float> kr(k.size()), vr(v.size());
        std::vector<uint16_t> tmp(k.size());
        if (t == DType::kF32) {
          kr = k;
          vr = v;
        } else {
          ConvertFromF32(k.data(), t, static_cast<int64_t>(k.size()), tmp.data());
          ConvertToF32(tmp.data(), t, static_cast<int64_t>(k.size()), kr.data());
          ConvertFromF32(v.data(), t, static_cast<int64_t>(v.size()), tmp.data());
          ConvertToF32(tmp.data(), t, static_cast<int64_t>(v.size()), vr.data());
        }
        const std::vector<float> q = Random(int64_t{n} * heads * hd, ++seed);
        std::vector<int32_t> pos(static_cast<size_t>(n));
        DeviceArray<float> dk(k), dv(v), dq(q), dout(int64_t{n} * heads * hd),
            dlse(int64_t{n} * heads);
        for (int l = 0; l < layers; ++l) {
          ASSERT_TRUE((*cache)->Append(l, dk.get(), dv.get(), n).ok());
          ASSERT_TRUE(host.Append(l, kr.data(), vr.data(), n, pos.data()).ok());
          ASSERT_TRUE((*cache)->Attend(l, dq.get(), n, heads, 0.125f, dout.get(), dlse.get()).ok());
          std::vector<float> o(q.size()), lse(static_cast<size_t>(n) * heads);
          ASSERT_TRUE(host.Attend(l, q.data(), n, 0.125f, o.data(), lse.data()).ok());
          ExpectSynced();
          const std::vector<float> go = dout.Download(), gl = dlse.Download();
          for (size_t i = 0; i < o.size(); ++i) ASSERT_NEAR(go[i], o[i], 2e-5) << "o at " << i;
          for (size_t i = 0; i < lse.size(); ++i) ASSERT_NEAR(gl[i], lse[i], 2e-5) << "lse " << i;
        }
        len += n;
        std::vector<float> rk(static_cast<size_t>(len * row)), rv(rk.size());
        ASSERT_TRUE((*cache)->Read(1, 0, len, rk.data(), rv.data()).ok());
        EXPECT_EQ(0, std::memcmp(rk.data(), host.keys(1), rk.size() * sizeof(float)));
        EXPECT_EQ(0, std::memcmp(rv.data(), host.values(1), rv.size() * sizeof(float)));
      }
      EXPECT_EQ((*cache)->length(0), len);
      const int64_t free_before = (*pool)->free_pages();
      (*cache)->Truncate(10);
      host.Truncate(10);
      EXPECT_EQ((*cache)->length(1), 10);
      auto pages_of = [&](int64_t tokens) { return (tokens + page - 1) / page; };
      EXPECT_EQ((*pool)->free_pages(), free_before + layers * (pages_of(len) - pages_of(10)));
      // Appending after the truncation reuses the device page table past the kept pages.
      const int n = 7;
      std::vector<float> k = Random(n * row, 900), v = Random(n * row, 901),
                         q = Random(n * heads * hd, 902);
      std::vector<float> kr = k, vr = v;
      if (t != DType::kF32) {
        std::vector<uint16_t> tmp(k.size());
        ConvertFromF32(k.data(), t, static_cast<int64_t>(k.size()), tmp.data());
        ConvertToF32(tmp.data(), t, static_cast<int64_t>(k.size()), kr.data());
        ConvertFromF32(v.data(), t, static_cast<int64_t>(v.size()), tmp.data());
        ConvertToF32(tmp.data(), t, static_cast<int64_t>(v.size()), vr.data());
      }
      std::vector<int32_t> pos(n);
      DeviceArray<float> dk(k), dv(v), dq(q), dout(int64_t{n} * heads * hd),
          dlse(int64_t{n} * heads);
      std::vector<float> o(q.size()), lse(static_cast<size_t>(n) * heads);
      for (int l = 0; l < layers; ++l) {
        ASSERT_TRUE((*cache)->Append(l, dk.get(), dv.get(), n).ok());
        ASSERT_TRUE(host.Append(l, kr.data(), vr.data(), n, pos.data()).ok());
      }
      ASSERT_TRUE((*cache)->Attend(1, dq.get(), n, heads, 0.125f, dout.get(), dlse.get()).ok());
      ASSERT_TRUE(host.Attend(1, q.data(), n, 0.125f, o.data(), lse.data()).ok());
      ExpectSynced();
      const std::vector<float> go = dout.Download();
      for (size_t i = 0; i < o.size(); ++i)
        ASSERT_NEAR(go[i], o[i], 2e-5) << "o after truncate " << i;
      std::vector<float> rk(static_cast<size_t>(17 * row)), rv(rk.size());
      ASSERT_TRUE((*cache)->Read(0, 0, 17, rk.data(), rv.data()).ok());
      EXPECT_EQ(0, std::memcmp(rk.data(), host.keys(0), rk.size() * sizeof(float)));
    }
  }
}

TEST(PagedKvCacheTest, ExhaustedPoolFailsTheAppendAndStoresNothing) {
  KvPageGeometry g{1, 64, DType::kF32, 16};
  auto pool = KvPagePool::Create(g, 2 * g.page_bytes());  // two pages: 32 tokens
  ASSERT_TRUE(pool.ok());
  auto cache = PagedKvCache::Create(*pool, 1, 0);
  ASSERT_TRUE(cache.ok());
  DeviceArray<float> k(40 * 64), v(40 * 64);
  ASSERT_TRUE((*cache)->Append(0, k.get(), v.get(), 30).ok());
  Status s = (*cache)->Append(0, k.get(), v.get(), 10);
  EXPECT_EQ(s.code(), StatusCode::kResourceExhausted) << s.ToString();
  EXPECT_EQ((*cache)->length(0), 30);
  EXPECT_TRUE((*cache)->Append(0, k.get(), v.get(), 2).ok());
  cache->reset();
  EXPECT_EQ((*pool)->free_pages(), 2);  // pages return on destruction
}

// ---- Whole model ------------------------------------------------------------------------------

struct ModelCase {
  std::string name;
  engine::TinyModelOptions options;
  DType kv_dtype;
  bool device_kv;  // device pages, else a host KvCache staged per layer
};

class CudaModelTest : public ::testing::TestWithParam<ModelCase> {};

// Prefill (cuBLAS path, f32 GEMM mode) then 64 greedy decode steps (GEMV path + flash-decoding):
// the GPU model's logits stay within tolerance of the CPU engine's and the tokens are identical.
TEST_P(CudaModelTest, LogitsWithinToleranceAndGreedyTokensIdenticalFor64Steps) {
  const ModelCase& c = GetParam();
  engine::testing::TempDir dir;
  auto cpu = engine::testing::MakeModel(dir, c.options, "m");
  ASSERT_NE(cpu, nullptr);
  auto gpu_or = engine::Model::Load(dir.path() + "/m", &Gpu());
  ASSERT_TRUE(gpu_or.ok()) << gpu_or.status().ToString();
  std::unique_ptr<engine::Model> gpu = std::move(gpu_or).value();
  GemmModeScope scope(CudaGemmMode::kF32);

  std::unique_ptr<engine::KvSource> gkv;
  if (c.device_kv) {
    auto s = gpu->NewKvSource(c.kv_dtype, 64 << 20);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    gkv = std::move(s).value();
  } else {
    gkv = gpu->NewKvCache();
  }
  auto ckv = cpu->NewKvCache();
  std::vector<int32_t> prompt;
  for (int i = 0; i < 37; ++i) prompt.push_back((i * 37 + 11) % c.options.vocab_size);
  std::vector<float> gl, cl;
  ASSERT_TRUE(gpu->Prefill(prompt, 0, gkv.get(), 16, &gl).ok());
  ASSERT_TRUE(cpu->Prefill(prompt, 0, ckv.get(), 16, &cl).ok());
  // f16/bf16 KV storage rounds K/V; the CPU keeps f32, so the tolerance follows the KV dtype.
  const float tol = c.kv_dtype == DType::kF32 ? 2e-3f : 3e-2f;
  auto check = [&](int step) {
    float scale = 1e-3f;
    for (float v : cl) scale = std::max(scale, std::abs(v));
    ASSERT_LE(engine::testing::MaxAbsDiff(gl, cl), tol * scale) << "step " << step;
  };
  check(-1);
  // Teacher-forced with the CPU's greedy tokens (both see the same history): when every step's
  // argmax agrees, the two free-running greedy sequences are identical.
  int32_t pos = static_cast<int32_t>(prompt.size());
  int same = 0;
  for (int step = 0; step < 64; ++step, ++pos) {
    const int32_t tg = static_cast<int32_t>(std::max_element(gl.begin(), gl.end()) - gl.begin());
    const int32_t tc = static_cast<int32_t>(std::max_element(cl.begin(), cl.end()) - cl.begin());
    same += tg == tc;
    engine::SequenceStep sg{std::span<const int32_t>(&tc, 1), pos, gkv.get()};
    engine::SequenceStep sc{std::span<const int32_t>(&tc, 1), pos, ckv.get()};
    ASSERT_TRUE(gpu->Forward(std::span(&sg, 1), engine::LogitsMode::kLast, &gl).ok());
    ASSERT_TRUE(cpu->Forward(std::span(&sc, 1), engine::LogitsMode::kLast, &cl).ok());
    check(step);
  }
  // f32 KV: identical greedy tokens. f16/bf16 KV storage rounds K/V (the CPU keeps f32), so a
  // near-tie may flip: allowed on at most 4 of 64 steps, with the logits still within tolerance.
  if (c.kv_dtype == DType::kF32) {
    EXPECT_EQ(same, 64);
  } else {
    EXPECT_GE(same, 60);
  }
}

engine::TinyModelOptions Opts(DType t, int head_dim_hidden, int window, const char* type) {
  engine::TinyModelOptions o = engine::testing::SmallOptions();
  o.hidden_size = head_dim_hidden;
  o.intermediate_size = 2 * head_dim_hidden + 8;
  o.num_heads = 4;
  o.num_kv_heads = 2;
  o.dtype = t;
  o.sliding_window = window;
  o.model_type = type;
  return o;
}

INSTANTIATE_TEST_SUITE_P(
    TinyModels, CudaModelTest,
    ::testing::Values(
        ModelCase{"f32_devicekv_f32", Opts(DType::kF32, 256, 0, "llama"), DType::kF32, true},
        ModelCase{"bf16_devicekv_f32", Opts(DType::kBF16, 256, 0, "llama"), DType::kF32, true},
        ModelCase{"f16_devicekv_f16", Opts(DType::kF16, 256, 0, "llama"), DType::kF16, true},
        ModelCase{"qwen2_bias_hostkv", Opts(DType::kF32, 128, 0, "qwen2"), DType::kF32, false},
        ModelCase{"mistral_window_devicekv", Opts(DType::kF32, 256, 24, "mistral"), DType::kF32,
                  true}),
    [](const ::testing::TestParamInfo<ModelCase>& i) { return i.param.name; });

}  // namespace
}  // namespace ragserve::kernels::cuda
