// The CUDA backend of the op interface (kernels/cpu/ops.h): every op on device pointers, queued
// on the calling thread's stream (cudaStreamPerThread), so threads never share a stream, a
// cuBLAS handle or scratch. Decode GEMVs (m <= kGemvMaxRows) are our own kernel reading f32/f16/
// bf16 weights with f32 activations; larger matmuls go through cuBLAS (see CudaGemmMode).
#pragma once

#include <string>

#include "kernels/cpu/ops.h"
#include "services/common/status.h"

namespace ragserve::kernels::cuda {

// The CUDA ops, or FailedPrecondition naming why there are none (no CUDA compiled in, no
// driver, no device). Device 0; the object lives for the whole process.
StatusOr<const Ops*> CudaOps();

// How matmuls with more than kGemvMaxRows rows (prefill) use cuBLAS for f16/bf16 weights:
//   kTensorCore: activations rounded to the weight dtype, cublasGemmEx with f32 accumulation
//                (tensor cores; the default, what serving stacks do);
//   kF32:        weights widened to f32 a slab at a time and cublasSgemm (slower, keeps f32
//                activations like the CPU backend; the tests' tight whole-model comparison).
// f32 weights always use cublasSgemm (no TF32). Process-wide.
enum class CudaGemmMode { kTensorCore = 0, kF32 = 1 };
void SetCudaGemmMode(CudaGemmMode mode);
CudaGemmMode GetCudaGemmMode();

}  // namespace ragserve::kernels::cuda
