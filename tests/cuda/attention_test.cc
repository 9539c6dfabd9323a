// CUDA attention (kernels/cuda/attention.cu) against the CPU reference
// (kernels::AttentionPartialRef and kernels::MergePartial): one table of shapes x dtypes x page
// layouts x masks, each case run through split-K flash-decoding (splits automatic, 1 and 3), the
// tiled prefill kernel and the automatic choice. K/V are rounded to the case's dtype on the host
// and the reference reads the same rounded values, so the tolerances only cover f32 accumulation
// order and exp2 approximation.
#include "kernels/cuda/attention.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/attention.h"
#include "kernels/cpu/ops.h"

namespace ragserve::kernels::cuda {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
// Max abs error of o (a convex combination of values in [-1, 1]) and of lse (scaled by
// max(1, |lse|)) against the double-precision reference.
constexpr float kOTol = 2e-4f;
constexpr float kLseTol = 2e-4f;

// Device allocation of T[n], freed on scope exit.
template <typename T>
class DeviceArray {
 public:
  explicit DeviceArray(size_t n) : n_(n) {
    if (n_ > 0) {
      EXPECT_EQ(cudaMalloc(&ptr_, n_ * sizeof(T)), cudaSuccess);
    }
  }
  explicit DeviceArray(const std::vector<T>& host) : DeviceArray(host.size()) { Upload(host); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  ~DeviceArray() {
    if (ptr_ != nullptr) cudaFree(ptr_);
  }
  T* get() const { return ptr_; }
  void Upload(const std::vector<T>& host) {
    ASSERT_EQ(host.size(), n_);
    if (n_ > 0) {
      ASSERT_EQ(cudaMemcpy(ptr_, host.data(), n_ * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
    }
  }
  std::vector<T> Download() const {
    std::vector<T> host(n_);
    if (n_ > 0) {
      EXPECT_EQ(cudaMemcpy(host.data(), ptr_, n_ * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
    }
    return host;
  }
  // Every byte 0xff: a NaN pattern for floats, so unwritten outputs fail the comparison.
  void Poison() {
    if (n_ > 0) {
      ASSERT_EQ(cudaMemset(ptr_, 0xff, n_ * sizeof(T)), cudaSuccess);
    }
  }

 private:
  T* ptr_ = nullptr;
  size_t n_ = 0;
};

struct Case {
  int n = 1;
  int64_t length = 1;
  int head_dim = 64;
  int heads = 1;
  int kv_heads = 1;
  bool causal = true;
  int64_t window = 0;
  DType dtype = DType::kF32;
  int64_t page_size = 16;  // 0: one contiguous buffer (page_size > length, pages = {0})

  std::string Name() const {
    return StrCat(
        "n=", n, " length=", length, " head_dim=", head_dim, " heads=", heads, "/", kv_heads,
        causal ? " causal" : " block", " window=", window, " ", DTypeName(dtype),
        " page_size=", page_size == 0 ? std::string("contiguous") : std::to_string(page_size));
  }
};

// Bits of one element of dtype t holding v (rounded), and the value it holds.
uint32_t Encode(DType t, float v) {
  switch (t) {
    case DType::kF16:
      return F32ToF16(v);
    case DType::kBF16:
      return F32ToBf16(v);
    default: {
      uint32_t bits;
      std::memcpy(&bits, &v, 4);
      return bits;
    }
  }
}
float Decode(DType t, uint32_t bits) {
  switch (t) {
    case DType::kF16:
      return F16ToF32(static_cast<uint16_t>(bits));
    case DType::kBF16:
      return Bf16ToF32(static_cast<uint16_t>(bits));
    default: {
      float v;
      std::memcpy(&v, &bits, 4);
      return v;
    }
  }
}
uint32_t NanBits(DType t) {
  switch (t) {
    case DType::kF16:
      return 0x7e00;
    case DType::kBF16:
      return 0x7fc0;
    default:
      return 0x7fc00000;
  }
}

void PutElem(std::vector<uint8_t>* pool, DType t, int64_t i, uint32_t bits) {
  const size_t es = DTypeSize(t);
  std::memcpy(pool->data() + i * es, &bits, es);  // little-endian: the low bytes
}

// The host side of one case: q, the rounded K/V as floats [length, kv_heads, head_dim], the paged
// pools (pages in shuffled order, unused rows and spare pages poisoned with NaN) and the reference.
struct Problem {
  Case c;
  float scale = 0.0f;
  std::vector<float> q;
  std::vector<float> k;  // dequantized, [length, kv_heads, head_dim]
  std::vector<float> v;
  std::vector<uint8_t> k_pool;
  std::vector<uint8_t> v_pool;
  std::vector<int32_t> pages;
  int64_t page_size = 0;
  std::vector<float> ref_o;
  std::vector<float> ref_lse;
};

Problem Build(const Case& c, uint32_t seed) {
  Problem p;
  p.c = c;
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> uni(-1.0f, 1.0f);
  const int d = c.head_dim;
  const int64_t row = static_cast<int64_t>(c.kv_heads) * d;
  p.scale = 1.5f / std::sqrt(static_cast<float>(d));  // a bit peakier than 1/sqrt(d)
  p.q.resize(static_cast<size_t>(c.n) * c.heads * d);
  for (float& x : p.q) x = uni(rng);
  p.k.resize(static_cast<size_t>(c.length * row));
  p.v.resize(p.k.size());

  int64_t num_pages;
  if (c.page_size == 0) {
    p.page_size = c.length + 3;  // larger than length: the contiguous view
    num_pages = 1;
    p.pages = {0};
  } else {
    p.page_size = c.page_size;
    num_pages = std::max<int64_t>(1, (c.length + c.page_size - 1) / c.page_size);
    const int64_t pool_pages = num_pages + 2;  // two spare pages nobody should read
    std::vector<int32_t> perm(static_cast<size_t>(pool_pages));
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    p.pages.assign(perm.begin(), perm.begin() + num_pages);
  }
  const int64_t pool_pages = c.page_size == 0 ? 1 : static_cast<int64_t>(p.pages.size()) + 2;
  const int64_t pool_elems = pool_pages * p.page_size * row;
  const size_t es = DTypeSize(c.dtype);
  p.k_pool.resize(static_cast<size_t>(pool_elems) * es);
  p.v_pool.resize(p.k_pool.size());
  for (int64_t i = 0; i < pool_elems; ++i) {
    PutElem(&p.k_pool, c.dtype, i, NanBits(c.dtype));
    PutElem(&p.v_pool, c.dtype, i, NanBits(c.dtype));
  }
  for (int64_t t = 0; t < c.length; ++t) {
    const int64_t base =
        (static_cast<int64_t>(p.pages[t / p.page_size]) * p.page_size + t % p.page_size) * row;
    for (int64_t x = 0; x < row; ++x) {
      const uint32_t kb = Encode(c.dtype, uni(rng));
      const uint32_t vb = Encode(c.dtype, uni(rng));
      p.k[t * row + x] = Decode(c.dtype, kb);
      p.v[t * row + x] = Decode(c.dtype, vb);
      PutElem(&p.k_pool, c.dtype, base + x, kb);
      PutElem(&p.v_pool, c.dtype, base + x, vb);
    }
  }

  // Reference: per query and kv head, the group's heads against the query's key range.
  const int group = c.heads / c.kv_heads;
  p.ref_o.resize(p.q.size());
  p.ref_lse.resize(static_cast<size_t>(c.n) * c.heads);
  for (int i = 0; i < c.n; ++i) {
    int64_t lo = c.window > 0 ? std::max<int64_t>(0, c.length - c.window) : 0;
    int64_t hi = c.length;
    if (c.causal) {
      const int64_t idx = c.length - c.n + i;
      hi = idx + 1;
      lo = c.window > 0 ? std::max<int64_t>(0, idx + 1 - c.window) : 0;
    }
    for (int kvh = 0; kvh < c.kv_heads; ++kvh) {
      const int64_t qrow = static_cast<int64_t>(i) * c.heads + static_cast<int64_t>(kvh) * group;
      AttentionPartialRef(p.q.data() + qrow * d, group, p.k.data() + lo * row + kvh * d, row,
                          p.v.data() + lo * row + kvh * d, row, hi - lo, d, p.scale,
                          p.ref_o.data() + qrow * d, p.ref_lse.data() + qrow);
    }
  }
  return p;
}

// The problem's pools and page table on the device.
struct DeviceKv {
  explicit DeviceKv(const Problem& p) : k(p.k_pool), v(p.v_pool), pages(p.pages) {}
  PagedKvView View(const Problem& p) const {
    PagedKvView kv;
    kv.k_pool = k.get();
    kv.v_pool = v.get();
    kv.pages = pages.get();
    kv.page_size = p.page_size;
    kv.length = p.c.length;
    kv.kv_heads = p.c.kv_heads;
    kv.head_dim = p.c.head_dim;
    kv.dtype = p.c.dtype;
    return kv;
  }
  DeviceArray<uint8_t> k;
  DeviceArray<uint8_t> v;
  DeviceArray<int32_t> pages;
};

// Runs one kernel choice on the problem and compares o and lse with the reference.
void RunAndCompare(const Problem& p, const AttentionTuning& tuning, AttentionWorkspace* ws) {
  SCOPED_TRACE(
      StrCat(p.c.Name(), " force_kernel=", tuning.force_kernel, " splits=", tuning.splits));
  const DeviceKv dkv(p);
  const DeviceArray<float> q(p.q);
  DeviceArray<float> o(p.ref_o.size());
  DeviceArray<float> lse(p.ref_lse.size());
  o.Poison();
  lse.Poison();
  AttentionArgs args;
  args.q = q.get();
  args.n = p.c.n;
  args.heads = p.c.heads;
  args.scale = p.scale;
  args.causal = p.c.causal;
  args.window = p.c.window;
  args.o = o.get();
  args.lse = lse.get();
  const Status s = Attention(args, dkv.View(p), ws, nullptr, tuning);
  ASSERT_TRUE(s.ok()) << s.ToString();
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const std::vector<float> got_o = o.Download();
  const std::vector<float> got_lse = lse.Download();

  const int d = p.c.head_dim;
  float max_o_err = 0.0f;
  float max_lse_err = 0.0f;
  int64_t bad_row = -1;
  for (size_t r = 0; r < p.ref_lse.size(); ++r) {
    const float ref = p.ref_lse[r];
    const float got = got_lse[r];
    float lse_err;
    if (ref == kNegInf) {
      lse_err = got == kNegInf ? 0.0f : std::numeric_limits<float>::infinity();
    } else {
      lse_err = std::isfinite(got) ? std::fabs(got - ref) / std::max(1.0f, std::fabs(ref))
                                   : std::numeric_limits<float>::infinity();
    }
    float o_err = 0.0f;
    for (int x = 0; x < d; ++x) {
      const float diff = std::fabs(got_o[r * d + x] - p.ref_o[r * d + x]);
      o_err = std::isnan(diff) ? std::numeric_limits<float>::infinity() : std::max(o_err, diff);
    }
    if ((o_err > kOTol || lse_err > kLseTol) && bad_row < 0) bad_row = static_cast<int64_t>(r);
    max_o_err = std::max(max_o_err, o_err);
    max_lse_err = std::max(max_lse_err, lse_err);
  }
  EXPECT_LE(max_o_err, kOTol) << "first bad (query, head) row " << bad_row;
  EXPECT_LE(max_lse_err, kLseTol) << "first bad (query, head) row " << bad_row;
  if (bad_row >= 0) {
    ADD_FAILURE() << "row " << bad_row << ": lse " << got_lse[bad_row] << " vs reference "
                  << p.ref_lse[bad_row] << ", o[0] " << got_o[bad_row * d] << " vs "
                  << p.ref_o[bad_row * d];
  }
}

// Every kernel choice: automatic, flash-decoding with automatic/1/3 splits, tiled prefill.
void RunAllKernels(const Case& c, uint32_t seed, AttentionWorkspace* ws) {
  const Problem p = Build(c, seed);
  const AttentionTuning tunings[] = {{0, 0}, {1, 0}, {1, 1}, {1, 3}, {2, 0}};
  for (const AttentionTuning& t : tunings) RunAndCompare(p, t, ws);
}

// The table: shapes hitting 1, odd sizes, tile and page boundaries; the other parameters cycle
// through head dims (vector and scalar-fallback rows), GQA groups, dtypes, page sizes and masks.
std::vector<Case> Table() {
  struct Shape {
    int n;
    int64_t length;
  };
  const Shape shapes[] = {{1, 1},     {1, 7},     {2, 7},    {3, 7},     {5, 7},    {1, 63},
                          {3, 63},    {17, 63},   {1, 64},   {2, 64},    {17, 64},  {64, 64},
                          {1, 65},    {5, 65},    {64, 65},  {130, 130}, {1, 1000}, {3, 1000},
                          {17, 1000}, {64, 1000}, {1, 4099}, {2, 4099},  {5, 300},  {130, 300}};
  const int dims[] = {64, 128, 40, 72, 128, 33, 64, 20, 128, 256};
  struct Heads {
    int heads;
    int kv_heads;
  };
  const Heads head_cfgs[] = {{8, 2}, {4, 4}, {1, 1}, {12, 4}};
  const DType dtypes[] = {DType::kF32, DType::kF16, DType::kBF16};
  const int64_t page_sizes[] = {16, 1, 64, 0};

  std::vector<Case> cases;
  int k = 0;
  for (const Shape& s : shapes) {
    for (int variant = 0; variant < 4; ++variant, ++k) {
      Case c;
      c.n = s.n;
      c.length = s.length;
      c.head_dim = dims[k % 10];
      c.heads = head_cfgs[(k / 3) % 4].heads;
      c.kv_heads = head_cfgs[(k / 3) % 4].kv_heads;
      c.dtype = dtypes[k % 3];
      c.page_size = page_sizes[(k / 2) % 4];
      // variant 0: causal; 1: block (non-causal); 2: causal with a window shorter than length;
      // 3: causal window of a few keys (or block when the shape has one key).
      c.causal = variant != 1;
      if (variant == 2) c.window = std::max<int64_t>(1, s.length / 3);
      if (variant == 3) c.window = 5;
      if (variant == 3 && s.length == 1) c.causal = false;
      // Keep the host reference (d * keys * queries * heads exps) small.
      const int64_t keys = c.window > 0 ? std::min(c.window, s.length) : s.length;
      if (static_cast<int64_t>(s.n) * keys * c.heads * c.head_dim > 16'000'000) {
        c.heads = c.kv_heads = (c.heads == 12 ? 4 : c.kv_heads);
        if (c.head_dim > 64) c.head_dim = 64;
      }
      cases.push_back(c);
    }
  }
  // Block mode over the last `window` keys only (the hybrid path's GPU window), both kernels.
  cases.push_back({1, 1000, 128, 8, 2, false, 65, DType::kF16, 16});
  cases.push_back({3, 4099, 64, 4, 4, false, 1025, DType::kBF16, 64});
  cases.push_back({17, 300, 128, 8, 2, false, 33, DType::kF32, 1});
  // Block mode with more queries than keys, and no keys at all (o = 0, lse = -inf).
  cases.push_back({5, 1, 64, 8, 2, false, 0, DType::kF16, 16});
  cases.push_back({17, 7, 72, 4, 4, false, 0, DType::kBF16, 1});
  cases.push_back({3, 0, 128, 12, 4, false, 0, DType::kF32, 16});
  cases.push_back({17, 0, 64, 4, 1, false, 0, DType::kF16, 0});
  // head_dim 256 and 1 in both kernels, and a group of 8 query heads per kv head (two head
  // subgroups in flash-decoding).
  cases.push_back({3, 200, 256, 4, 2, true, 0, DType::kBF16, 64});
  cases.push_back({20, 77, 256, 2, 1, true, 30, DType::kF32, 1});
  cases.push_back({4, 50, 1, 4, 2, true, 0, DType::kF32, 16});
  cases.push_back({2, 333, 128, 16, 2, true, 0, DType::kF16, 16});
  cases.push_back({33, 333, 64, 24, 3, true, 100, DType::kBF16, 16});
  return cases;
}

TEST(CudaAttention, MatchesCpuReferenceOnEveryShapeAndKernel) {
  AttentionWorkspace ws;
  const std::vector<Case> cases = Table();
  uint32_t seed = 1234;
  for (const Case& c : cases) RunAllKernels(c, seed++, &ws);
}

// Long contexts (split heuristic fills the GPU; page size 16 like the engine's cache).
TEST(CudaAttention, MatchesCpuReferenceOnLongContexts) {
  AttentionWorkspace ws;
  RunAllKernels({1, 32768, 128, 8, 1, true, 0, DType::kF16, 16}, 7, &ws);
  RunAllKernels({4, 16384, 64, 8, 2, true, 0, DType::kBF16, 16}, 8, &ws);
  RunAllKernels({1, 12289, 128, 4, 4, true, 4096, DType::kF32, 64}, 9, &ws);
}

// MergePartials against kernels::MergePartial (b's lse scaled by the factor first), with rows
// where a, b or both are empty.
TEST(CudaAttention, MergePartialsMatchesCpuMerge) {
  const int64_t rows = 37;
  const int d = 72;
  std::mt19937 rng(99);
  std::uniform_real_distribution<float> uni(-1.0f, 1.0f);
  for (const float factor : {1.0f, 0.7f, 1.3f}) {
    SCOPED_TRACE(StrCat("b_lse_factor=", factor));
    std::vector<float> oa(rows * d);
    std::vector<float> ob(rows * d);
    std::vector<float> la(rows);
    std::vector<float> lb(rows);
    for (float& x : oa) x = uni(rng);
    for (float& x : ob) x = uni(rng);
    for (int64_t r = 0; r < rows; ++r) {
      la[r] = 4.0f * uni(rng);
      lb[r] = 4.0f * uni(rng);
      if (r % 5 == 1) la[r] = kNegInf;
      if (r % 7 == 2) lb[r] = kNegInf;
      if (r == 10) la[r] = lb[r] = kNegInf;
      if (la[r] == kNegInf) std::fill(oa.begin() + r * d, oa.begin() + (r + 1) * d, 0.0f);
      if (lb[r] == kNegInf) std::fill(ob.begin() + r * d, ob.begin() + (r + 1) * d, 0.0f);
    }
    std::vector<float> ref_o = oa;
    std::vector<float> ref_l = la;
    std::vector<float> lb_scaled = lb;
    for (float& x : lb_scaled) {
      if (x != kNegInf) x *= factor;
    }
    MergePartial(ref_o.data(), ref_l.data(), ob.data(), lb_scaled.data(), static_cast<int>(rows),
                 d);

    DeviceArray<float> d_oa(oa);
    DeviceArray<float> d_la(la);
    const DeviceArray<float> d_ob(ob);
    const DeviceArray<float> d_lb(lb);
    const Status s =
        MergePartials(d_oa.get(), d_la.get(), d_ob.get(), d_lb.get(), rows, d, factor, nullptr);
    ASSERT_TRUE(s.ok()) << s.ToString();
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    const std::vector<float> got_o = d_oa.Download();
    const std::vector<float> got_l = d_la.Download();
    for (int64_t r = 0; r < rows; ++r) {
      SCOPED_TRACE(StrCat("row ", r, " lse_a=", la[r], " lse_b=", lb[r]));
      if (ref_l[r] == kNegInf) {
        EXPECT_EQ(got_l[r], kNegInf);
      } else {
        EXPECT_NEAR(got_l[r], ref_l[r], 1e-5f * std::max(1.0f, std::fabs(ref_l[r])));
      }
      for (int x = 0; x < d; ++x) {
        ASSERT_NEAR(got_o[r * d + x], ref_o[r * d + x], 1e-5f) << "dim " << x;
      }
    }
  }
}

// Bad arguments come back as InvalidArgument naming the value, and nothing is launched (the
// output keeps its sentinel).
TEST(CudaAttention, BadArgumentsAreInvalidArgumentWithoutLaunching) {
  const Problem p = Build({2, 10, 64, 4, 2, true, 0, DType::kF32, 16}, 5);
  const DeviceKv dkv(p);
  const DeviceArray<float> q(p.q);
  DeviceArray<float> o(p.ref_o.size());
  DeviceArray<float> lse(p.ref_lse.size());
  AttentionWorkspace ws;
  AttentionArgs good;
  good.q = q.get();
  good.n = p.c.n;
  good.heads = p.c.heads;
  good.scale = p.scale;
  good.o = o.get();
  good.lse = lse.get();
  const PagedKvView good_kv = dkv.View(p);
  ASSERT_TRUE(Attention(good, good_kv, &ws, nullptr).ok());

  struct Bad {
    std::string what;
    AttentionArgs args;
    PagedKvView kv;
    AttentionWorkspace* ws;
    std::string needle;  // expected in the message
  };
  std::vector<Bad> bad;
  auto add = [&](std::string what, auto mutate, std::string needle) {
    Bad b{std::move(what), good, good_kv, &ws, std::move(needle)};
    mutate(b);
    bad.push_back(std::move(b));
  };
  add(
      "head_dim 0", [](Bad& b) { b.kv.head_dim = 0; }, "0");
  add(
      "head_dim 257", [](Bad& b) { b.kv.head_dim = 257; }, "257");
  add(
      "heads not a multiple", [](Bad& b) { b.args.heads = 5; }, "5");
  add(
      "kv_heads 0", [](Bad& b) { b.kv.kv_heads = 0; }, "0");
  add(
      "causal n > length", [](Bad& b) { b.kv.length = 1; }, "length = 1");
  add(
      "negative length", [](Bad& b) { b.kv.length = -3; }, "-3");
  add(
      "page_size 0", [](Bad& b) { b.kv.page_size = 0; }, "page_size");
  add(
      "null q", [](Bad& b) { b.args.q = nullptr; }, "q is null");
  add(
      "null o", [](Bad& b) { b.args.o = nullptr; }, "o is null");
  add(
      "null lse", [](Bad& b) { b.args.lse = nullptr; }, "lse is null");
  add(
      "null k_pool", [](Bad& b) { b.kv.k_pool = nullptr; }, "k_pool");
  add(
      "null pages", [](Bad& b) { b.kv.pages = nullptr; }, "pages");
  add(
      "null workspace", [](Bad& b) { b.ws = nullptr; }, "workspace");
  add(
      "negative n", [](Bad& b) { b.args.n = -1; }, "-1");

  for (int force = 0; force <= 2; ++force) {
    for (const Bad& b : bad) {
      SCOPED_TRACE(StrCat(b.what, " force_kernel=", force));
      o.Poison();
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      const Status s = Attention(b.args, b.kv, b.ws, nullptr, AttentionTuning{force, 0});
      EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.ToString();
      EXPECT_NE(s.message().find(b.needle), std::string::npos) << s.ToString();
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      for (const float x : o.Download()) ASSERT_TRUE(std::isnan(x)) << "output was written";
    }
  }
  const Status bad_force = Attention(good, good_kv, &ws, nullptr, AttentionTuning{3, 0});
  EXPECT_EQ(bad_force.code(), StatusCode::kInvalidArgument) << bad_force.ToString();

  EXPECT_EQ(MergePartials(o.get(), lse.get(), o.get(), lse.get(), 4, 0, 1.0f, nullptr).code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(MergePartials(o.get(), lse.get(), nullptr, lse.get(), 4, 8, 1.0f, nullptr).code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(MergePartials(o.get(), lse.get(), o.get(), lse.get(), -1, 8, 1.0f, nullptr).code(),
            StatusCode::kInvalidArgument);
  EXPECT_TRUE(MergePartials(nullptr, nullptr, nullptr, nullptr, 0, 8, 1.0f, nullptr).ok());
}

}  // namespace
}  // namespace ragserve::kernels::cuda
