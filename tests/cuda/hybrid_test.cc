// The GPU hybrid path (services/kvr/device_retrieval_source.h) against full attention on the CPU:
// sinks + window in GPU pages, the middle in an in-process KV retrieval store. With top_k covering
// the middle the decode must equal a plain KV cache decode; the middle's GPU pages must be gone.
// Runs only on a CUDA device (gpu_test_main.cc skips visibly otherwise).
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <span>
#include <vector>

#include "kernels/cuda/ops.h"
#include "services/engine/model.h"
#include "services/engine/sampling.h"
#include "services/kvr/device_retrieval_source.h"
#include "services/kvr/kv_retrieval.h"
#include "tests/cuda/gpu_test_util.h"
#include "tests/engine/engine_test_util.h"

namespace ragserve::kvr {
namespace {

using engine::testing::DecodeStep;
using engine::testing::RandomTokens;

struct HybridCase {
  const char* name;
  KeyIndexKind kind;
  int top_k;
};

class DeviceHybridTest : public ::testing::TestWithParam<HybridCase> {};

TEST_P(DeviceHybridTest, DecodeMatchesFullAttentionAndTheMiddleLeavesTheGpu) {
  const HybridCase& hc = GetParam();
  engine::testing::TempDir dir;
  const engine::TinyModelOptions mo = kernels::cuda::testing::Head64Options();  // head_dim 64
  kernels::cuda::testing::ModelPair models = kernels::cuda::testing::LoadModelPair(dir, mo);
  ASSERT_TRUE(models.cpu && models.gpu);
  engine::Model* cpu = models.cpu.get();
  engine::Model* gpu = models.gpu.get();
  const kernels::Ops* gpu_ops = models.gpu_ops;
  kernels::cuda::testing::GemmModeScope gemm(kernels::cuda::CudaGemmMode::kF32);

  KvRetrievalOptions ko;
  ko.defaults.sink_tokens = 16;
  ko.defaults.window_tokens = 64;
  ko.defaults.index_kind = hc.kind;
  KvRetrieval store(ko);
  LocalKvrClient client(&store);
  const std::vector<int32_t> prompt = RandomTokens(700, mo.vocab_size, 3);
  RetrievalSourceOptions ro;
  ro.prefill_tokens = static_cast<int64_t>(prompt.size());
  ro.attend.top_k = hc.top_k;
  ro.sink_tokens = 16;
  ro.window_tokens = 64;
  auto pool = gpu->DeviceKvPool(kernels::DType::kF32, 64 << 20);
  ASSERT_TRUE(pool.ok()) << pool.status().ToString();
  auto src = DeviceRetrievalKvSource::Create(&client, "seq", gpu->geometry(), ro, *pool, gpu_ops);
  ASSERT_TRUE(src.ok()) << src.status().ToString();

  auto full = cpu->NewKvCache();
  std::vector<float> lf, lg;
  ASSERT_TRUE(cpu->Prefill(prompt, 0, full.get(), 128, &lf).ok());
  ASSERT_TRUE(gpu->Prefill(prompt, 0, src->get(), 128, &lg).ok());
  ASSERT_TRUE((*src)->status().ok()) << (*src)->status().ToString();
  ASSERT_TRUE((*src)->decoding());
  float scale = 1e-3f;
  for (float v : lf) scale = std::max(scale, std::abs(v));
  EXPECT_LE(engine::testing::MaxAbsDiff(lf, lg), 2e-3f * scale);
  // Teacher-forced with the full-attention greedy tokens: every step compares the same history.
  int agree = 0;
  const int steps = 24;
  float worst = 0.0f;
  for (int i = 0; i < steps; ++i) {
    const int32_t tok = engine::ArgMax(lf);
    agree += engine::ArgMax(lg) == tok;
    const auto pos = static_cast<int32_t>(prompt.size()) + i;
    ASSERT_TRUE(DecodeStep(*cpu, full.get(), tok, pos, &lf).ok());
    ASSERT_TRUE(DecodeStep(*gpu, src->get(), tok, pos, &lg).ok());
    ASSERT_TRUE((*src)->status().ok()) << (*src)->status().ToString();
    worst = std::max(worst, engine::testing::MaxAbsDiff(lf, lg));
  }
  std::printf("[ %s ] top-1 agreement %d/%d, max logit error %.3g (scale %.3g)\n", hc.name, agree,
              steps, worst, scale);
  if (hc.top_k >= 1 << 20) {  // covering: exact up to float rounding
    EXPECT_EQ(agree, steps);
    EXPECT_LE(worst, 2e-3f * scale);
  } else {
    EXPECT_GE(agree, steps * 3 / 4);
  }
  // The middle moved off the GPU: per layer, the pages of [0, len) minus those wholly inside the
  // evicted range [S, S + cpu_only_tokens) (700 + 24 tokens, S = 16, W = 64, 64-token pages:
  // 12 pages less 9 evicted).
  const int64_t P = (*pool)->geometry().page_size;
  const int64_t len = static_cast<int64_t>(prompt.size()) + steps;
  const int64_t evicted_end = 16 + (*src)->cpu_only_tokens();
  EXPECT_EQ(evicted_end, len - 1 - 64);  // the store holds all but the newest token
  const int64_t held = (len + P - 1) / P - (evicted_end / P - (16 + P - 1) / P);
  EXPECT_EQ((*src)->gpu_bytes(), mo.num_layers * held * (*pool)->geometry().page_bytes());
  EXPECT_EQ((*src)->stats().decode_attends, steps * mo.num_layers);
}

INSTANTIATE_TEST_SUITE_P(
    Kinds, DeviceHybridTest,
    ::testing::Values(HybridCase{"exact_covering", KeyIndexKind::kExact, 1 << 20},
                      HybridCase{"attention_aware_covering", KeyIndexKind::kAttentionAware,
                                 1 << 20},
                      HybridCase{"attention_aware_top32", KeyIndexKind::kAttentionAware, 32}),
    [](const ::testing::TestParamInfo<HybridCase>& i) { return std::string(i.param.name); });

}  // namespace
}  // namespace ragserve::kvr
