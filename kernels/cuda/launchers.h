// Entry points of the element-wise and matmul kernels (kernels/cuda/elementwise.cu, gemm.cu) that
// CudaOps (ops.cu), the tests and the benchmark call. Device pointers; asynchronous on `stream`.
// Shapes are the op interface's (kernels/cpu/ops.h); these launchers trust them (CudaOps' callers
// validate at load time) except where noted.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cpu/ops.h"

namespace ragserve::kernels::cuda {

// out[i, :] = float(table row ids[i]); table: [vocab, cols].
void LaunchEmbed(const WeightView& table, const int32_t* ids, int64_t m, float* out,
                 cudaStream_t stream);
// y[m, n] = x / sqrt(mean(x^2) + eps) * g per row. y may alias x.
void LaunchRmsNorm(const float* x, int64_t m, int64_t n, const WeightView& g, float eps, float* y,
                   cudaStream_t stream);
// Rotary embedding in place, "rotate_half": x: [m, heads, head_dim]; positions: [m];
// inv_freq: [head_dim / 2].
void LaunchRope(float* x, int64_t m, int heads, int head_dim, const int32_t* positions,
                const float* inv_freq, cudaStream_t stream);
// out[i] = silu(gate[i]) * up[i]; out may alias gate.
void LaunchSiluMul(const float* gate, const float* up, int64_t n, float* out, cudaStream_t stream);
// y[i] += x[i].
void LaunchAdd(float* y, const float* x, int64_t n, cudaStream_t stream);
// y[m, cols] += bias[cols] on every row.
void LaunchAddBias(float* y, int64_t m, const WeightView& bias, cudaStream_t stream);
// dst[i] = dtype(src[i]) / float(src[i]) for n elements (to f16: saturating at +-65504).
void LaunchConvertFromF32(const float* src, DType t, int64_t n, void* dst, cudaStream_t stream);
void LaunchConvertToF32(const void* src, DType t, int64_t n, float* dst, cudaStream_t stream);

// y[m, w.rows] = x[m, w.cols] . W^T (+ bias) for 1 <= m <= kGemvMaxRows: one warp per output
// row streams W once for all m rows (f32/f16/bf16 weights, f32 activations and accumulation).
void LaunchGemv(const float* x, int64_t m, const WeightView& w, const WeightView* bias, float* y,
                cudaStream_t stream);

}  // namespace ragserve::kernels::cuda
