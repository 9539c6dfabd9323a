// The model's memory-space plumbing (Ops::memory, weight upload, activation buffers, host KV
// sources staged under a device backend), exercised on the CPU: ShadowDeviceOps runs FastOps but
// declares device memory and keeps its own allocations, and every op checks that each pointer
// it gets lies inside one of them. A host pointer reaching a "device" op (a missed upload or
// copy in Model) fails the test here, on every CI run, before a real GPU is involved.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <span>
#include <vector>

#include "kernels/cpu/ops.h"
#include "kernels/cuda/device.h"
#include "services/common/mutex.h"
#include "services/engine/model.h"
#include "tests/engine/engine_test_util.h"

namespace ragserve::engine {
namespace {

class ShadowDeviceOps final : public kernels::Ops {
 public:
  std::string_view name() const override { return "shadow-device"; }
  kernels::MemorySpace memory() const override { return kernels::MemorySpace::kDevice; }
  void* Allocate(size_t bytes) const override {
    void* p = Ops::Allocate(bytes);
    MutexLock lock(mu_);
    live_[static_cast<const char*>(p)] = std::max<size_t>(bytes, 1);
    return p;
  }
  void Free(void* p) const override {
    if (p == nullptr) return;
    {
      MutexLock lock(mu_);
      EXPECT_EQ(live_.erase(static_cast<const char*>(p)), 1u) << "Free of a foreign pointer";
    }
    Ops::Free(p);
  }
  void CopyToBackend(void* dst, const void* src, size_t bytes) const override {
    Check(dst, bytes, "CopyToBackend dst");
    ExpectHost(src, "CopyToBackend src");
    Ops::CopyToBackend(dst, src, bytes);
  }
  void CopyToHost(void* dst, const void* src, size_t bytes) const override {
    Check(src, bytes, "CopyToHost src");
    ExpectHost(dst, "CopyToHost dst");
    Ops::CopyToHost(dst, src, bytes);
  }
  void CopyWithin(void* dst, const void* src, size_t bytes) const override {
    Check(dst, bytes, "CopyWithin dst");
    Check(src, bytes, "CopyWithin src");
    Ops::CopyWithin(dst, src, bytes);
  }
  void MatMul(const float* x, int64_t m, const kernels::WeightView& w,
              const kernels::WeightView* bias, float* y) const override {
    Check(x, m * w.cols * 4, "MatMul x");
    CheckW(w, "MatMul w");
    if (bias != nullptr) CheckW(*bias, "MatMul bias");
    Check(y, m * w.rows * 4, "MatMul y");
    fast().MatMul(x, m, w, bias, y);
  }
  void RmsNorm(const float* x, int64_t m, int64_t n, const kernels::WeightView& g, float eps,
               float* y) const override {
    Check(x, m * n * 4, "RmsNorm x");
    CheckW(g, "RmsNorm g");
    Check(y, m * n * 4, "RmsNorm y");
    fast().RmsNorm(x, m, n, g, eps, y);
  }
  void Rope(float* x, int64_t m, int heads, int head_dim, const int32_t* positions,
            const float* inv_freq) const override {
    Check(x, m * heads * head_dim * 4, "Rope x");
    Check(positions, m * 4, "Rope positions");
    Check(inv_freq, head_dim / 2 * 4, "Rope inv_freq");
    fast().Rope(x, m, heads, head_dim, positions, inv_freq);
  }
  void SiluMul(const float* gate, const float* up, int64_t n, float* out) const override {
    Check(gate, n * 4, "SiluMul gate");
    Check(up, n * 4, "SiluMul up");
    Check(out, n * 4, "SiluMul out");
    fast().SiluMul(gate, up, n, out);
  }
  void Add(float* y, const float* x, int64_t n) const override {
    Check(y, n * 4, "Add y");
    Check(x, n * 4, "Add x");
    fast().Add(y, x, n);
  }
  void Embed(const kernels::WeightView& table, const int32_t* ids, int64_t m,
             float* out) const override {
    CheckW(table, "Embed table");
    Check(ids, m * 4, "Embed ids");
    Check(out, m * table.cols * 4, "Embed out");
    fast().Embed(table, ids, m, out);
  }
  void Attention(const float* q, int h, const float* k, int64_t ldk, const float* v, int64_t ldv,
                 int64_t n, int d, float scale, float* o, float* lse) const override {
    ADD_FAILURE() << "the model never calls Ops::Attention itself";
    fast().Attention(q, h, k, ldk, v, ldv, n, d, scale, o, lse);
  }

  size_t live_allocations() const {
    MutexLock lock(mu_);
    return live_.size();
  }
  int64_t checks() const {
    MutexLock lock(mu_);
    return checks_;
  }

 private:
  static const kernels::Ops& fast() { return kernels::FastOps(); }
  // [p, p + bytes) must lie inside one live allocation.
  void Check(const void* p, int64_t bytes, const char* what) const {
    MutexLock lock(mu_);
    ++checks_;
    const char* c = static_cast<const char*>(p);
    auto it = live_.upper_bound(c);
    const bool inside =
        it != live_.begin() && (--it, c >= it->first && c + bytes <= it->first + it->second);
    EXPECT_TRUE(inside) << what << ": " << p << " (+" << bytes << " bytes) is not backend memory";
  }
  void CheckW(const kernels::WeightView& w, const char* what) const {
    Check(w.data, w.rows * w.cols * static_cast<int64_t>(kernels::DTypeSize(w.dtype)), what);
  }
  void ExpectHost(const void* p, const char* what) const {
    MutexLock lock(mu_);
    const char* c = static_cast<const char*>(p);
    auto it = live_.upper_bound(c);
    const bool inside = it != live_.begin() && (--it, c >= it->first && c < it->first + it->second);
    EXPECT_FALSE(inside) << what << ": " << p << " is backend memory, expected host memory";
  }

  mutable Mutex mu_;
  mutable std::map<const char*, size_t> live_ ABSL_GUARDED_BY(mu_);
  mutable int64_t checks_ ABSL_GUARDED_BY(mu_) = 0;
};

TEST(MemorySpaceTest, DeviceBackendModelMatchesHostModelWithStagedHostKv) {
  for (kernels::DType t : {kernels::DType::kF32, kernels::DType::kBF16}) {
    SCOPED_TRACE(kernels::DTypeName(t));
    testing::TempDir dir;
    TinyModelOptions o = testing::SmallOptions();
    o.dtype = t;
    o.model_type = "qwen2";  // q/k/v biases go through the upload too
    auto host = testing::MakeModel(dir, o, "m");
    ASSERT_NE(host, nullptr);
    ShadowDeviceOps shadow;
    {
      auto dev_or = Model::Load(dir.path() + "/m", &shadow);
      ASSERT_TRUE(dev_or.ok()) << dev_or.status().ToString();
      auto dev = std::move(dev_or).value();
      EXPECT_GT(shadow.live_allocations(), 10u);  // the weights were uploaded
      // NewKvSource without a real GPU: the device page pool reports why it cannot exist.
      if (kernels::cuda::DeviceCount() == 0) {
        EXPECT_FALSE(dev->NewKvSource().ok());
      }
      // Two sequences in one batch, both with host caches (staged per layer), prefill + decode.
      auto ha = host->NewKvCache(), hb = host->NewKvCache();
      auto da = dev->NewKvCache(), db = dev->NewKvCache();
      std::vector<int32_t> pa = {1, 5, 9, 200, 17, 3, 250, 41, 42, 43, 44};
      std::vector<int32_t> pb = {7, 7, 8};
      std::vector<float> lh, ld;
      for (int step = 0; step < 6; ++step) {
        std::vector<SequenceStep> bh = {{pa, 0, ha.get()}, {pb, 0, hb.get()}};
        std::vector<SequenceStep> bd = {{pa, 0, da.get()}, {pb, 0, db.get()}};
        if (step > 0) {
          const int32_t pos_a = static_cast<int32_t>(ha->length()),
                        pos_b = static_cast<int32_t>(hb->length());
          bh = {{std::span(pa).last(1), pos_a, ha.get()}, {std::span(pb).last(1), pos_b, hb.get()}};
          bd = {{std::span(pa).last(1), pos_a, da.get()}, {std::span(pb).last(1), pos_b, db.get()}};
        }
        const LogitsMode mode = step % 2 == 0 ? LogitsMode::kLast : LogitsMode::kAll;
        ASSERT_TRUE(host->Forward(bh, mode, &lh).ok());
        ASSERT_TRUE(dev->Forward(bd, mode, &ld).ok());
        ASSERT_EQ(lh.size(), ld.size());
        EXPECT_LE(testing::MaxAbsDiff(lh, ld), 1e-6f) << "step " << step;
        pa.push_back(static_cast<int32_t>(std::max_element(lh.begin(), lh.end()) - lh.begin()) %
                     o.vocab_size);
        pb.push_back((pb.back() * 31 + 7) % o.vocab_size);
      }
      EXPECT_EQ(da->length(), ha->length());
      EXPECT_GT(shadow.checks(), 100);
    }
    EXPECT_EQ(shadow.live_allocations(), 0u);  // the model freed everything it allocated
  }
}

}  // namespace
}  // namespace ragserve::engine
