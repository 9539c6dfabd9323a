// Weights quantized (or converted) at load (WeightsLoadOptions::weights_dtype, --weights-dtype):
// every matrix equals the reference quantizer's output for the checkpoint's values, vectors stay
// f32, the LM head of a 4-bit format is Q6_K, fingerprints tell the dtypes apart, k-quant matrices
// that are not whole 256-value blocks fall back to Q8_0, matrices that are not whole 32-value
// blocks are refused by name, a device backend refuses block formats, and a quantized model's
// forward pass stays within the activation-rounding error of the same weights run through the
// dequantizing reference backend; Q4_0 repacked at load gives the logits of its blocks.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <set>
#include <vector>

#include "kernels/cpu/quant.h"
#include "services/engine/model.h"
#include "tests/engine/engine_test_util.h"

namespace ragserve::engine {
namespace {

using kernels::DType;
using testing::TempDir;

TinyModelOptions QuantOptions() {
  TinyModelOptions o;
  o.num_layers = 2;
  o.hidden_size = 256;
  o.num_heads = 4;
  o.num_kv_heads = 2;
  o.intermediate_size = 512;
  o.vocab_size = 300;
  o.seed = 5;
  return o;
}

WeightsLoadOptions As(DType t) {
  WeightsLoadOptions o;
  o.weights_dtype = t;
  return o;
}

// Every matrix of m, with its name.
std::vector<std::pair<std::string, const WeightView*>> Matrices(const ModelWeights& m) {
  std::vector<std::pair<std::string, const WeightView*>> out = {{"embed", &m.embed()},
                                                                {"lm_head", &m.lm_head()}};
  for (size_t i = 0; i < m.layers().size(); ++i) {
    const LayerWeights& l = m.layers()[i];
    const std::string p = "layer " + std::to_string(i) + " ";
    for (auto [n, w] : {std::pair{"q", &l.q},
                        {"k", &l.k},
                        {"v", &l.v},
                        {"o", &l.o},
                        {"gate", &l.gate},
                        {"up", &l.up},
                        {"down", &l.down}}) {
      out.push_back({p + n, w});
    }
  }
  return out;
}

TEST(QuantizedWeightsTest, SafetensorsQuantizedAtLoadEqualReferenceQuantizerPerRow) {
  TempDir dir;
  ASSERT_TRUE(WriteTinyModel(QuantOptions(), {}, dir.path()).ok());
  auto f32 = ModelWeights::Load(dir.path());
  ASSERT_TRUE(f32.ok()) << f32.status().ToString();
  std::set<std::string> fingerprints = {(*f32)->fingerprint()};
  for (DType t : {DType::kQ8_0, DType::kQ4_0, DType::kQ4_K, DType::kQ6_K, DType::kBF16}) {
    SCOPED_TRACE(std::string(kernels::DTypeName(t)));
    auto q = ModelWeights::Load(dir.path(), As(t));
    ASSERT_TRUE(q.ok()) << q.status().ToString();
    EXPECT_EQ((*q)->dtype(), t);
    EXPECT_TRUE(fingerprints.insert((*q)->fingerprint()).second) << "fingerprint reused";
    EXPECT_LT((*q)->BytesReadPerToken(), (*f32)->BytesReadPerToken());
    // The LM head of a 4-bit format is kept at Q6_K (as llama.cpp's quantizer does).
    const bool four_bit = t == DType::kQ4_0 || t == DType::kQ4_K;
    const auto want = Matrices(**f32);
    const auto got = Matrices(**q);
    for (size_t k = 0; k < want.size(); ++k) {
      const WeightView& a = *want[k].second;
      const WeightView& b = *got[k].second;
      const DType expected = got[k].first == "lm_head" && four_bit ? DType::kQ6_K : t;
      ASSERT_EQ(b.dtype, expected) << got[k].first;
      ASSERT_EQ(b.rows, a.rows);
      ASSERT_EQ(b.cols, a.cols);
      std::vector<uint8_t> row(static_cast<size_t>(b.RowBytes()));
      for (int64_t r = 0; r < a.rows; ++r) {
        kernels::ConvertFromF32(static_cast<const float*>(a.Row(r)), expected, a.cols, row.data());
        ASSERT_EQ(std::memcmp(row.data(), b.Row(r), row.size()), 0) << got[k].first << " row " << r;
      }
    }
    EXPECT_EQ((*q)->final_norm().dtype, DType::kF32);
    EXPECT_EQ((*q)->layers()[0].input_norm.dtype, DType::kF32);
  }
}

TEST(QuantizedWeightsTest, TiedEmbeddingServesAsTheLmHeadAndKeepsItsDType) {
  TempDir dir;
  TinyModelOptions o = QuantOptions();
  o.tie_word_embeddings = true;
  ASSERT_TRUE(WriteTinyModel(o, {}, dir.path()).ok());
  for (auto [t, head] : {std::pair{DType::kQ4_0, DType::kQ6_K},
                         {DType::kQ4_K, DType::kQ6_K},
                         {DType::kQ8_0, DType::kQ8_0}}) {
    SCOPED_TRACE(std::string(kernels::DTypeName(t)));
    auto q = ModelWeights::Load(dir.path(), As(t));
    ASSERT_TRUE(q.ok()) << q.status().ToString();
    EXPECT_EQ((*q)->embed().dtype, head);
    EXPECT_EQ((*q)->lm_head().data, (*q)->embed().data);
    EXPECT_EQ((*q)->layers()[0].q.dtype, t);
  }
}

TEST(QuantizedWeightsTest, MatrixThatIsNotWholeKQuantBlocksFallsBackToQ8_0) {
  TempDir dir;
  TinyModelOptions o = QuantOptions();
  o.intermediate_size = 320;  // down_proj has 320 columns: whole Q8_0 blocks, not Q4_K ones
  ASSERT_TRUE(WriteTinyModel(o, {}, dir.path()).ok());
  auto f32 = ModelWeights::Load(dir.path());
  ASSERT_TRUE(f32.ok()) << f32.status().ToString();
  for (DType t : {DType::kQ4_K, DType::kQ6_K}) {
    SCOPED_TRACE(std::string(kernels::DTypeName(t)));
    auto q = ModelWeights::Load(dir.path(), As(t));
    ASSERT_TRUE(q.ok()) << q.status().ToString();
    const auto want = Matrices(**f32);
    const auto got = Matrices(**q);
    for (size_t k = 0; k < want.size(); ++k) {
      const WeightView& a = *want[k].second;
      const WeightView& b = *got[k].second;
      const bool down = got[k].first.find("down") != std::string::npos;
      const DType head = t == DType::kQ4_K ? DType::kQ6_K : t;
      ASSERT_EQ(b.dtype, down                        ? DType::kQ8_0
                         : got[k].first == "lm_head" ? head
                                                     : t)
          << got[k].first;
      std::vector<uint8_t> row(static_cast<size_t>(b.RowBytes()));
      for (int64_t r = 0; r < a.rows; ++r) {
        kernels::ConvertFromF32(static_cast<const float*>(a.Row(r)), b.dtype, a.cols, row.data());
        ASSERT_EQ(std::memcmp(row.data(), b.Row(r), row.size()), 0) << got[k].first << " row " << r;
      }
    }
  }
}

TEST(QuantizedWeightsTest, MatrixThatIsNotWholeBlocksIsRefusedByName) {
  TempDir dir;
  TinyModelOptions o = QuantOptions();
  o.intermediate_size = 300;  // down_proj has 300 columns: not whole 32-value blocks
  ASSERT_TRUE(WriteTinyModel(o, {}, dir.path()).ok());
  EXPECT_TRUE(ModelWeights::Load(dir.path(), As(DType::kBF16)).ok());
  for (auto [t, message] : {std::pair{DType::kQ8_0, "not a multiple of the Q8_0 block (32 values)"},
                            {DType::kQ4_K, "not a multiple of the Q4_K block (256 values)"}}) {
    auto w = ModelWeights::Load(dir.path(), As(t));
    ASSERT_FALSE(w.ok());
    EXPECT_EQ(w.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(w.status().message().find("model.layers.0.mlp.down_proj.weight"), std::string::npos)
        << w.status().message();
    EXPECT_NE(w.status().message().find(message), std::string::npos) << w.status().message();
  }
}

TEST(QuantizedWeightsTest, ParseWeightsDtypeAcceptsTheFlagsSpellings) {
  for (const char* s : {"", "auto"}) {
    auto o = ParseWeightsDtype(s);
    ASSERT_TRUE(o.ok());
    EXPECT_FALSE(o->weights_dtype.has_value());
  }
  auto o = ParseWeightsDtype("Q4_K");
  ASSERT_TRUE(o.ok());
  EXPECT_EQ(*o->weights_dtype, DType::kQ4_K);
  auto bad = ParseWeightsDtype("q5_k");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("'q5_k'"), std::string::npos);
}

// FastOps forwarding everything, but claiming device memory (what CudaOps does).
class FakeDeviceOps final : public kernels::Ops {
 public:
  std::string_view name() const override { return "fake-device"; }
  kernels::MemorySpace memory() const override { return kernels::MemorySpace::kDevice; }
  void MatMul(const float* x, int64_t m, const WeightView& w, const WeightView* bias,
              float* y) const override {
    kernels::FastOps().MatMul(x, m, w, bias, y);
  }
  void RmsNorm(const float* x, int64_t m, int64_t n, const WeightView& g, float eps,
               float* y) const override {
    kernels::FastOps().RmsNorm(x, m, n, g, eps, y);
  }
  void Rope(float* x, int64_t m, int heads, int head_dim, const int32_t* positions,
            const float* inv_freq) const override {
    kernels::FastOps().Rope(x, m, heads, head_dim, positions, inv_freq);
  }
  void SiluMul(const float* gate, const float* up, int64_t n, float* out) const override {
    kernels::FastOps().SiluMul(gate, up, n, out);
  }
  void Add(float* y, const float* x, int64_t n) const override { kernels::FastOps().Add(y, x, n); }
  void Embed(const WeightView& table, const int32_t* ids, int64_t m, float* out) const override {
    kernels::FastOps().Embed(table, ids, m, out);
  }
  void Attention(const float* q, int h, const float* k, int64_t ldk, const float* v, int64_t ldv,
                 int64_t n, int d, float scale, float* o, float* lse) const override {
    kernels::FastOps().Attention(q, h, k, ldk, v, ldv, n, d, scale, o, lse);
  }
};

TEST(QuantizedWeightsTest, DeviceBackendRefusesBlockQuantizedWeights) {
  TempDir dir;
  ASSERT_TRUE(WriteTinyModel(QuantOptions(), {}, dir.path()).ok());
  FakeDeviceOps dev;
  auto m = Model::Load(dir.path(), &dev, As(DType::kQ8_0));
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(m.status().message().find("Q8_0 weights (CPU only)"), std::string::npos)
      << m.status().message();
  EXPECT_TRUE(Model::Load(dir.path(), &dev, As(DType::kBF16)).ok());
}

// Last-token logits of a prompt prefilled in one chunk, then of 6 decode steps. tokens: the
// tokens to feed (teacher forcing) or, when empty, filled with the greedy choices.
std::vector<std::vector<float>> PrefillAndDecode(Model& m, std::vector<int32_t>* tokens) {
  const bool greedy = tokens->empty();
  std::vector<std::vector<float>> out;
  auto kv = m.NewKvCache();
  std::vector<float> logits;
  std::vector<int32_t> prompt = {3, 17, 42, 99, 200, 7, 256, 11, 5, 64, 128, 31};
  EXPECT_TRUE(m.Prefill(prompt, 0, kv.get(), 0, &logits).ok());
  out.push_back(logits);
  int32_t pos = static_cast<int32_t>(prompt.size());
  for (int s = 0; s < 6; ++s) {
    if (greedy) {
      tokens->push_back(
          static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin()));
    }
    const int32_t next = (*tokens)[s];
    const SequenceStep st{std::span<const int32_t>(&next, 1), pos++, kv.get()};
    EXPECT_TRUE(m.Forward(std::span<const SequenceStep>(&st, 1), LogitsMode::kLast, &logits).ok());
    out.push_back(logits);
  }
  return out;
}

TEST(QuantizedWeightsTest, QuantizedModelTracksTheDequantizingReferenceBackend) {
  TempDir dir;
  ASSERT_TRUE(WriteTinyModel(QuantOptions(), {}, dir.path()).ok());
  for (DType t : {DType::kQ8_0, DType::kQ4_0, DType::kQ4_K, DType::kQ6_K}) {
    SCOPED_TRACE(std::string(kernels::DTypeName(t)));
    auto w = ModelWeights::Load(dir.path(), As(t));
    ASSERT_TRUE(w.ok());
    std::shared_ptr<const ModelWeights> shared(std::move(*w));
    auto fast = Model::Create(shared, &kernels::FastOps());
    auto ref = Model::Create(shared, &kernels::RefOps());
    ASSERT_TRUE(fast.ok() && ref.ok());
    // The reference's greedy tokens, fed to both (a near-tie of a random model's top logits
    // may flip one argmax; what must hold is that every step's logits stay close).
    std::vector<int32_t> tokens;
    const auto lr = PrefillAndDecode(**ref, &tokens);
    const auto lf = PrefillAndDecode(**fast, &tokens);
    double worst = 0.0, scale = 0.0;
    for (size_t s = 0; s < lf.size(); ++s) {
      for (size_t j = 0; j < lf[s].size(); ++j) {
        worst = std::max(worst, std::abs(double{lf[s][j]} - lr[s][j]));
        scale = std::max(scale, std::abs(double{lr[s][j]}));
      }
    }
    std::printf("%s: max |fast - ref logit| %.3g of max |logit| %.3g (%.2f%%)\n",
                std::string(kernels::DTypeName(t)).c_str(), worst, scale, 100 * worst / scale);
    EXPECT_LT(worst, 0.03 * scale);
  }
}

TEST(QuantizedWeightsTest, RepackedAtLoadGivesTheLogitsOfTheBlocks) {
  // With AVX-512 VNNI the loader repacks every Q4_0 / Q8_0 matrix (kernels::PackWeights) and
  // FastOps reads that copy, prefill and decode; RAGSERVE_NO_REPACK=1 keeps the blocks alone. The
  // same integer sums either way, added in another order: the logits agree to f32 rounding.
  TempDir dir;
  ASSERT_TRUE(WriteTinyModel(QuantOptions(), {}, dir.path()).ok());
  for (DType t : {DType::kQ4_0, DType::kQ8_0}) {
    SCOPED_TRACE(std::string(kernels::DTypeName(t)));
    auto packed = ModelWeights::Load(dir.path(), As(t));
    ASSERT_EQ(setenv("RAGSERVE_NO_REPACK", "1", 1), 0);
    auto blocks = ModelWeights::Load(dir.path(), As(t));
    unsetenv("RAGSERVE_NO_REPACK");
    ASSERT_TRUE(packed.ok() && blocks.ok());
    bool any = false;
    for (auto [name, w] : Matrices(**packed)) {
      if (name == "embed") continue;  // the embedding op reads rows of the blocks
      EXPECT_EQ(w->packed != nullptr, kernels::PackedBytes(*w) > 0) << name;
      any = any || w->packed != nullptr;
    }
    for (auto [name, w] : Matrices(**blocks)) EXPECT_EQ(w->packed, nullptr) << name;
    if (!any) GTEST_SKIP() << "no AVX-512 VNNI on this CPU: nothing is repacked";
    auto mp =
        Model::Create(std::shared_ptr<const ModelWeights>(std::move(*packed)), &kernels::FastOps());
    auto mb =
        Model::Create(std::shared_ptr<const ModelWeights>(std::move(*blocks)), &kernels::FastOps());
    ASSERT_TRUE(mp.ok() && mb.ok());
    std::vector<int32_t> tokens;
    const auto lb = PrefillAndDecode(**mb, &tokens);
    const auto lp = PrefillAndDecode(**mp, &tokens);
    ASSERT_EQ(lp.size(), lb.size());
    for (size_t s = 0; s < lp.size(); ++s) {
      double scale = 0.0;
      for (float v : lb[s]) scale = std::max(scale, std::abs(double{v}));
      for (size_t j = 0; j < lp[s].size(); ++j) {
        ASSERT_NEAR(lp[s][j], lb[s][j], 1e-4 * scale) << "step " << s << " logit " << j;
      }
    }
  }
}

}  // namespace
}  // namespace ragserve::engine
