// Helpers of the GPU tests: the CUDA ops, the same random tiny model loaded on the CPU and on
// the GPU, and a scoped GEMM mode.
#pragma once

#include <gtest/gtest.h>

#include <memory>
#include <string>

#include "kernels/cuda/ops.h"
#include "services/engine/model.h"
#include "tests/engine/engine_test_util.h"

namespace ragserve::kernels::cuda::testing {

// Sets the process-wide GEMM mode for a scope (restored even when an ASSERT returns early).
class GemmModeScope {
 public:
  explicit GemmModeScope(CudaGemmMode mode) : saved_(GetCudaGemmMode()) { SetCudaGemmMode(mode); }
  ~GemmModeScope() { SetCudaGemmMode(saved_); }
  GemmModeScope(const GemmModeScope&) = delete;
  GemmModeScope& operator=(const GemmModeScope&) = delete;

 private:
  CudaGemmMode saved_;
};

// One model directory loaded twice: FastOps (cpu) and CudaOps (gpu); either is null after a
// test failure was recorded.
struct ModelPair {
  std::unique_ptr<engine::Model> cpu, gpu;
  const Ops* gpu_ops = nullptr;
};

inline ModelPair LoadModelPair(const engine::testing::TempDir& dir,
                               const engine::TinyModelOptions& options) {
  ModelPair p;
  StatusOr<const Ops*> ops = CudaOps();
  EXPECT_TRUE(ops.ok()) << ops.status().ToString();
  if (!ops.ok()) return p;
  p.gpu_ops = *ops;
  p.cpu = engine::testing::MakeModel(dir, options, "m");
  if (p.cpu == nullptr) return p;
  auto gpu = engine::Model::Load(dir.path() + "/m", p.gpu_ops);
  EXPECT_TRUE(gpu.ok()) << gpu.status().ToString();
  if (gpu.ok()) p.gpu = std::move(gpu).value();
  return p;
}

// The small GQA model of the GPU tests with head_dim 64 (hidden 256 over 4 heads, 2 kv heads).
inline engine::TinyModelOptions Head64Options() {
  engine::TinyModelOptions o = engine::testing::SmallOptions();
  o.hidden_size = 256;
  o.intermediate_size = 512;
  return o;
}

}  // namespace ragserve::kernels::cuda::testing
