// APE on the GPU (DeviceApeKvSource) against the CPU's ApeKvSource: the same prefix and passage
// blocks, the same temperature and scaling; prompt prefill and 16 greedy decode steps with
// logits within tolerance and identical tokens. Runs only on a CUDA device.
#include <gtest/gtest.h>

#include <algorithm>
#include <span>
#include <vector>

#include "kernels/cuda/ops.h"
#include "services/engine/device_kv_cache.h"
#include "services/engine/model.h"
#include "services/engine/sampling.h"
#include "tests/cuda/gpu_test_util.h"
#include "tests/engine/engine_test_util.h"

namespace ragserve::engine {
namespace {

std::vector<int32_t> Tokens(int n, int vocab, int salt) {
  std::vector<int32_t> t;
  for (int i = 0; i < n; ++i) t.push_back((i * 53 + salt * 17 + 5) % vocab);
  return t;
}

struct ApeCase {
  const char* name;
  float temperature, scaling;
};

class DeviceApeTest : public ::testing::TestWithParam<ApeCase> {};

TEST_P(DeviceApeTest, MatchesTheCpuApeSource) {
  const ApeCase& c = GetParam();
  testing::TempDir dir;
  const TinyModelOptions mo = kernels::cuda::testing::Head64Options();
  kernels::cuda::testing::ModelPair models = kernels::cuda::testing::LoadModelPair(dir, mo);
  ASSERT_TRUE(models.cpu && models.gpu);
  Model* cpu = models.cpu.get();
  Model* gpu = models.gpu.get();
  const kernels::Ops* gpu_ops = models.gpu_ops;
  kernels::cuda::testing::GemmModeScope gemm(kernels::cuda::CudaGemmMode::kF32);

  // The blocks are encoded once on the CPU and given to both (as the passage cache would).
  auto prefix = cpu->EncodeBlock(nullptr, Tokens(8, mo.vocab_size, 0), 0);
  ASSERT_TRUE(prefix.ok());
  std::vector<KvBlock> passages;
  for (int p = 0; p < 3; ++p) {
    auto b = cpu->EncodeBlock(&*prefix, Tokens(40 + 7 * p, mo.vocab_size, p + 1), 8);
    ASSERT_TRUE(b.ok());
    passages.push_back(std::move(b).value());
  }
  std::vector<const KvBlock*> blocks;
  for (const KvBlock& b : passages) blocks.push_back(&b);
  const int32_t start = 8 + 54;  // after the prefix and the longest passage

  auto own = cpu->NewKvCache();
  ApeKvSource cpu_src(&*prefix, blocks, own.get(), c.temperature, c.scaling);
  auto pool = gpu->DeviceKvPool(kernels::DType::kF32, 32 << 20);
  ASSERT_TRUE(pool.ok()) << pool.status().ToString();
  auto gpu_src = DeviceApeKvSource::Create(*pool, gpu->geometry(), 0, &*prefix, blocks,
                                           c.temperature, c.scaling, gpu_ops);
  ASSERT_TRUE(gpu_src.ok()) << gpu_src.status().ToString();

  const std::vector<int32_t> prompt = Tokens(12, mo.vocab_size, 9);
  std::vector<float> lc, lg;
  ASSERT_TRUE(cpu->Prefill(prompt, start, &cpu_src, 0, &lc).ok());
  ASSERT_TRUE(gpu->Prefill(prompt, start, gpu_src->get(), 0, &lg).ok());
  float scale = 1e-3f;
  for (float v : lc) scale = std::max(scale, std::abs(v));
  EXPECT_LE(testing::MaxAbsDiff(lc, lg), 2e-3f * scale);
  int32_t pos = start + static_cast<int32_t>(prompt.size());
  for (int step = 0; step < 16; ++step, ++pos) {
    const int32_t tc = ArgMax(lc);
    ASSERT_EQ(ArgMax(lg), tc) << "step " << step;
    SequenceStep sc{std::span<const int32_t>(&tc, 1), pos, &cpu_src};
    SequenceStep sg{std::span<const int32_t>(&tc, 1), pos, gpu_src->get()};
    ASSERT_TRUE(cpu->Forward(std::span(&sc, 1), LogitsMode::kLast, &lc).ok());
    ASSERT_TRUE(gpu->Forward(std::span(&sg, 1), LogitsMode::kLast, &lg).ok());
    EXPECT_LE(testing::MaxAbsDiff(lc, lg), 2e-3f * scale) << "step " << step;
  }
}

TEST(DeviceEncodeBlockTest, MatchesTheCpuEncodeBlockAfterAPrefix) {
  testing::TempDir dir;
  const TinyModelOptions mo = kernels::cuda::testing::Head64Options();
  kernels::cuda::testing::ModelPair models = kernels::cuda::testing::LoadModelPair(dir, mo);
  ASSERT_TRUE(models.cpu && models.gpu);
  Model* cpu = models.cpu.get();
  Model* gpu = models.gpu.get();
  kernels::cuda::testing::GemmModeScope gemm(kernels::cuda::CudaGemmMode::kF32);
  auto cp = cpu->EncodeBlock(nullptr, Tokens(8, mo.vocab_size, 0), 0);
  auto gp = gpu->EncodeBlock(nullptr, Tokens(8, mo.vocab_size, 0), 0);
  ASSERT_TRUE(cp.ok() && gp.ok()) << gp.status().ToString();
  const std::vector<int32_t> passage = Tokens(77, mo.vocab_size, 4);
  auto cb = cpu->EncodeBlock(&*cp, passage, 8, 32);
  auto gb = gpu->EncodeBlock(&*cp, passage, 8, 32);
  ASSERT_TRUE(cb.ok() && gb.ok()) << gb.status().ToString();
  EXPECT_EQ(gb->tokens, cb->tokens);
  EXPECT_EQ(gb->positions, cb->positions);
  EXPECT_EQ(gb->fingerprint, cb->fingerprint);
  for (int l = 0; l < mo.num_layers; ++l) {
    EXPECT_LE(testing::MaxAbsDiff(gp->k[l], cp->k[l]), 1e-4f) << "prefix layer " << l;
    EXPECT_LE(testing::MaxAbsDiff(gb->k[l], cb->k[l]), 1e-3f) << "k layer " << l;
    EXPECT_LE(testing::MaxAbsDiff(gb->v[l], cb->v[l]), 1e-3f) << "v layer " << l;
  }
}

INSTANTIATE_TEST_SUITE_P(Settings, DeviceApeTest,
                         ::testing::Values(ApeCase{"plain", 1.0f, 1.0f},
                                           ApeCase{"paper_defaults", 0.9f, 0.9f},
                                           ApeCase{"sharp", 0.5f, 1.2f}),
                         [](const ::testing::TestParamInfo<ApeCase>& i) {
                           return std::string(i.param.name);
                         });

}  // namespace
}  // namespace ragserve::engine
