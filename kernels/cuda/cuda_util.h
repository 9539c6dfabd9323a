// Internal helpers of the CUDA kernels (included by kernels/cuda/*.cu and CUDA-only tests/benches):
// the one CUDA_CHECK macro, element loads/stores by dtype, a growable device buffer.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kernels/cpu/ops.h"
#include "services/common/status.h"

namespace ragserve::kernels::cuda {

// Turns a CUDA error into Internal("<expr>: <cuda message> at file:line") and returns it.
#define CUDA_CHECK(expr)                                                                    \
  do {                                                                                      \
    const cudaError_t rs_cuda_err_ = (expr);                                                \
    if (rs_cuda_err_ != cudaSuccess) {                                                      \
      return ::ragserve::Internal(::ragserve::StrCat(                                       \
          #expr, ": ", cudaGetErrorString(rs_cuda_err_), " at ", __FILE__, ":", __LINE__)); \
    }                                                                                       \
  } while (0)

// The last launch's error as a Status (launches report configuration errors asynchronously).
inline Status LaunchStatus(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err == cudaSuccess) return OkStatus();
  return Internal(StrCat(what, ": launch failed: ", cudaGetErrorString(err)));
}

// Element i of a buffer of dtype t as float (f32, f16 or bf16).
__device__ __forceinline__ float LoadAsFloat(const void* p, DType t, int64_t i) {
  switch (t) {
    case DType::kF16:
      return __half2float(static_cast<const __half*>(p)[i]);
    case DType::kBF16:
      return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
    default:
      return static_cast<const float*>(p)[i];
  }
}

// Stores v as element i of a buffer of dtype t (round to nearest even when narrowing).
__device__ __forceinline__ void StoreFromFloat(void* p, DType t, int64_t i, float v) {
  switch (t) {
    case DType::kF16:
      static_cast<__half*>(p)[i] = __float2half_rn(v);
      break;
    case DType::kBF16:
      static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v);
      break;
    default:
      static_cast<float*>(p)[i] = v;
  }
}

// A device allocation that only grows (scratch space reused across calls). Not thread-safe.
class DeviceScratch {
 public:
  DeviceScratch() = default;
  DeviceScratch(const DeviceScratch&) = delete;
  DeviceScratch& operator=(const DeviceScratch&) = delete;
  ~DeviceScratch() {
    if (ptr_ != nullptr) cudaFree(ptr_);
  }
  // At least `bytes` bytes of device memory (contents not preserved when it grows).
  StatusOr<void*> Get(size_t bytes) {
    if (bytes <= size_) return ptr_;
    if (ptr_ != nullptr) cudaFree(ptr_);
    ptr_ = nullptr;
    size_ = 0;
    CUDA_CHECK(cudaMalloc(&ptr_, bytes));
    size_ = bytes;
    return ptr_;
  }

 private:
  void* ptr_ = nullptr;
  size_t size_ = 0;
};

inline int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace ragserve::kernels::cuda
