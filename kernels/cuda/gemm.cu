// Decode GEMV of the CUDA backend: y[m, rows] = x[m, cols] . W^T for m <= kGemvMaxRows, reading
// f32/f16/bf16 weights once for all m activation rows (decode is bound by the weight stream).
// Larger matmuls go through cuBLAS in ops.cu.
#include "kernels/cuda/cuda_util.h"
#include "kernels/cuda/launchers.h"

namespace ragserve::kernels::cuda {
namespace {

constexpr int kWarpsPerBlock = 8;

template <typename T>
__device__ __forceinline__ float ToF(T v);
template <>
__device__ __forceinline__ float ToF<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ float ToF<__half>(__half v) {
  return __half2float(v);
}
template <>
__device__ __forceinline__ float ToF<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

// x: [M, cols] f32, w: [rows, cols] T, bias: [rows] (dtype bt) or null -> y: [M, rows].
// One warp per output row; lanes stride the row in 16-byte vectors when `vec` (row starts and x
// rows 16-byte aligned), element by element otherwise.
template <typename T, int M>
__global__ void GemvKernel(const float* __restrict__ x, int64_t cols, const T* __restrict__ w,
                           int64_t rows, const void* bias, DType bt, float* __restrict__ y,
                           bool vec) {
  const int lane = threadIdx.x % 32;
  const int64_t r = int64_t{blockIdx.x} * kWarpsPerBlock + threadIdx.x / 32;
  if (r >= rows) return;
  const T* wr = w + r * cols;
  float acc[M];
#pragma unroll
  for (int i = 0; i < M; ++i) acc[i] = 0.0f;
  int64_t c_done = 0;
  if (vec) {
    constexpr int V = 16 / sizeof(T);  // elements per 16-byte load
    const int64_t nvec = cols / V;
    const uint4* wv = reinterpret_cast<const uint4*>(wr);
#pragma unroll 4
    for (int64_t j = lane; j < nvec; j += 32) {
      const uint4 raw = __ldg(wv + j);
      const T* e = reinterpret_cast<const T*>(&raw);
      float wf[V];
#pragma unroll
      for (int t = 0; t < V; ++t) wf[t] = ToF<T>(e[t]);
#pragma unroll
      for (int i = 0; i < M; ++i) {
        const float4* xv = reinterpret_cast<const float4*>(x + i * cols + j * V);
#pragma unroll
        for (int t = 0; t < V / 4; ++t) {
          const float4 xx = __ldg(xv + t);
          acc[i] +=
              wf[4 * t] * xx.x + wf[4 * t + 1] * xx.y + wf[4 * t + 2] * xx.z + wf[4 * t + 3] * xx.w;
        }
      }
    }
    c_done = nvec * V;
  }
  for (int64_t c = c_done + lane; c < cols; c += 32) {
    const float wf = ToF<T>(wr[c]);
#pragma unroll
    for (int i = 0; i < M; ++i) acc[i] += wf * x[i * cols + c];
  }
#pragma unroll
  for (int i = 0; i < M; ++i) {
    float v = acc[i];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (lane == 0) y[i * rows + r] = v + (bias != nullptr ? LoadAsFloat(bias, bt, r) : 0.0f);
  }
}

template <typename T, int M>
void Launch(const float* x, const WeightView& w, const WeightView* bias, float* y, bool vec,
            cudaStream_t stream) {
  const unsigned blocks = static_cast<unsigned>(CeilDiv(w.rows, kWarpsPerBlock));
  GemvKernel<T, M><<<blocks, kWarpsPerBlock * 32, 0, stream>>>(
      x, w.cols, static_cast<const T*>(w.data), w.rows, bias != nullptr ? bias->data : nullptr,
      bias != nullptr ? bias->dtype : DType::kF32, y, vec);
}

template <typename T>
void LaunchRows(const float* x, int64_t m, const WeightView& w, const WeightView* bias, float* y,
                bool vec, cudaStream_t stream) {
  switch (m) {
    case 1:
      return Launch<T, 1>(x, w, bias, y, vec, stream);
    case 2:
      return Launch<T, 2>(x, w, bias, y, vec, stream);
    case 3:
      return Launch<T, 3>(x, w, bias, y, vec, stream);
    case 4:
      return Launch<T, 4>(x, w, bias, y, vec, stream);
    case 5:
      return Launch<T, 5>(x, w, bias, y, vec, stream);
    case 6:
      return Launch<T, 6>(x, w, bias, y, vec, stream);
    case 7:
      return Launch<T, 7>(x, w, bias, y, vec, stream);
    default:
      return Launch<T, 8>(x, w, bias, y, vec, stream);
  }
}

bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

void LaunchGemv(const float* x, int64_t m, const WeightView& w, const WeightView* bias, float* y,
                cudaStream_t stream) {
  static_assert(kGemvMaxRows == 8, "GemvKernel is instantiated for 1..8 rows");
  if (m <= 0 || w.rows <= 0) return;
  const int64_t elem = static_cast<int64_t>(DTypeSize(w.dtype));
  // 16-byte vectors need every weight row and every x row to start 16-byte aligned.
  const bool vec =
      (w.cols * elem) % 16 == 0 && w.cols % 4 == 0 && Aligned16(w.data) && Aligned16(x);
  switch (w.dtype) {
    case DType::kF16:
      return LaunchRows<__half>(x, m, w, bias, y, vec, stream);
    case DType::kBF16:
      return LaunchRows<__nv_bfloat16>(x, m, w, bias, y, vec, stream);
    default:
      return LaunchRows<float>(x, m, w, bias, y, vec, stream);
  }
}

}  // namespace ragserve::kernels::cuda
