// Element-wise kernels of the CUDA backend: embedding gather, RMSNorm, RoPE, SwiGLU, residual add,
// bias add and dtype conversion. f32 activations; weights read in their stored dtype.
#include "kernels/cuda/cuda_util.h"
#include "kernels/cuda/launchers.h"

namespace ragserve::kernels::cuda {
namespace {

constexpr int kThreads = 256;

int Blocks(int64_t n) {
  return static_cast<int>(std::min<int64_t>(CeilDiv(n, kThreads), int64_t{1} << 20));
}

// table: [vocab, cols] (dtype t), ids: [m] -> out: [m, cols]
__global__ void EmbedKernel(const void* table, DType t, int64_t cols, const int32_t* ids, int64_t m,
                            float* out) {
  const int64_t total = m * cols;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t r = i / cols, c = i % cols;
    out[i] = LoadAsFloat(table, t, int64_t{ids[r]} * cols + c);
  }
}

// Block-wide sum of one value per thread (blockDim.x a multiple of 32, <= 1024).
__device__ float BlockSum(float v) {
  __shared__ float warp_sums[32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  const int warps = blockDim.x / 32;
  v = lane < warps ? warp_sums[lane] : 0.0f;
  if (warp == 0) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (lane == 0) warp_sums[0] = v;
  }
  __syncthreads();
  const float total = warp_sums[0];
  __syncthreads();  // warp_sums is reused by the next call
  return total;
}

// x: [m, n], g: [n] -> y: [m, n]; one block per row.
__global__ void RmsNormKernel(const float* x, int64_t n, const void* g, DType gt, float eps,
                              float* y) {
  const float* xr = x + blockIdx.x * n;
  float* yr = y + blockIdx.x * n;
  float ss = 0.0f;
  for (int64_t c = threadIdx.x; c < n; c += blockDim.x) ss += xr[c] * xr[c];
  ss = BlockSum(ss);
  const float inv = rsqrtf(ss / static_cast<float>(n) + eps);
  for (int64_t c = threadIdx.x; c < n; c += blockDim.x) yr[c] = xr[c] * inv * LoadAsFloat(g, gt, c);
}

// x: [m, heads, head_dim] in place; positions: [m]; inv_freq: [head_dim / 2].
// One thread per rotated pair (i, h, j < half).
__global__ void RopeKernel(float* x, int64_t m, int heads, int head_dim, const int32_t* positions,
                           const float* inv_freq) {
  const int half = head_dim / 2;
  const int64_t total = m * heads * half;
  for (int64_t t = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; t < total;
       t += int64_t{gridDim.x} * blockDim.x) {
    const int j = static_cast<int>(t % half);
    const int64_t row = t / half;  // i * heads + h
    const int64_t i = row / heads;
    // The angle in double, as the CPU reference: positions reach 1e5+ and f32 loses the phase.
    double s, c;
    sincos(static_cast<double>(positions[i]) * inv_freq[j], &s, &c);
    float* v = x + row * head_dim;
    const double a = v[j], b = v[j + half];
    v[j] = static_cast<float>(a * c - b * s);
    v[j + half] = static_cast<float>(b * c + a * s);
  }
}

// gate, up: [n] -> out: [n]
__global__ void SiluMulKernel(const float* gate, const float* up, int64_t n, float* out) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const float g = gate[i];
    out[i] = g / (1.0f + expf(-g)) * up[i];
  }
}

// y, x: [n]
__global__ void AddKernel(float* y, const float* x, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    y[i] += x[i];
  }
}

// y: [m, cols], bias: [cols]
__global__ void AddBiasKernel(float* y, int64_t m, int64_t cols, const void* bias, DType bt) {
  const int64_t total = m * cols;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total;
       i += int64_t{gridDim.x} * blockDim.x) {
    y[i] += LoadAsFloat(bias, bt, i % cols);
  }
}

// src: [n] f32 -> dst: [n] dtype t. f16 saturates at +-65504 (the largest finite f16): an
// activation beyond f16's range becomes the largest value instead of inf, which a GEMM would
// turn into inf/NaN outputs (NaN stays NaN).
__global__ void FromF32Kernel(const float* src, DType t, int64_t n, void* dst) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    float v = src[i];
    if (t == DType::kF16 && !isnan(v)) v = fminf(fmaxf(v, -65504.0f), 65504.0f);
    StoreFromFloat(dst, t, i, v);
  }
}

// src: [n] dtype t -> dst: [n] f32
__global__ void ToF32Kernel(const void* src, DType t, int64_t n, float* dst) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    dst[i] = LoadAsFloat(src, t, i);
  }
}

}  // namespace

void LaunchEmbed(const WeightView& table, const int32_t* ids, int64_t m, float* out,
                 cudaStream_t stream) {
  if (m <= 0) return;
  EmbedKernel<<<Blocks(m * table.cols), kThreads, 0, stream>>>(table.data, table.dtype, table.cols,
                                                               ids, m, out);
}

void LaunchRmsNorm(const float* x, int64_t m, int64_t n, const WeightView& g, float eps, float* y,
                   cudaStream_t stream) {
  if (m <= 0) return;
  const int threads = n >= 1024 ? 1024 : (n >= 256 ? 256 : 128);
  RmsNormKernel<<<static_cast<unsigned>(m), threads, 0, stream>>>(x, n, g.data, g.dtype, eps, y);
}

void LaunchRope(float* x, int64_t m, int heads, int head_dim, const int32_t* positions,
                const float* inv_freq, cudaStream_t stream) {
  const int64_t total = m * heads * (head_dim / 2);
  if (total <= 0) return;
  RopeKernel<<<Blocks(total), kThreads, 0, stream>>>(x, m, heads, head_dim, positions, inv_freq);
}

void LaunchSiluMul(const float* gate, const float* up, int64_t n, float* out, cudaStream_t stream) {
  if (n <= 0) return;
  SiluMulKernel<<<Blocks(n), kThreads, 0, stream>>>(gate, up, n, out);
}

void LaunchAdd(float* y, const float* x, int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  AddKernel<<<Blocks(n), kThreads, 0, stream>>>(y, x, n);
}

void LaunchAddBias(float* y, int64_t m, const WeightView& bias, cudaStream_t stream) {
  const int64_t total = m * bias.cols;
  if (total <= 0) return;
  AddBiasKernel<<<Blocks(total), kThreads, 0, stream>>>(y, m, bias.cols, bias.data, bias.dtype);
}

void LaunchConvertFromF32(const float* src, DType t, int64_t n, void* dst, cudaStream_t stream) {
  if (n <= 0) return;
  FromF32Kernel<<<Blocks(n), kThreads, 0, stream>>>(src, t, n, dst);
}

void LaunchConvertToF32(const void* src, DType t, int64_t n, float* dst, cudaStream_t stream) {
  if (n <= 0) return;
  ToF32Kernel<<<Blocks(n), kThreads, 0, stream>>>(src, t, n, dst);
}

}  // namespace ragserve::kernels::cuda
