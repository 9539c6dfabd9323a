#include <cuda_runtime.h>

#include <cstdio>
#include <string>

#include "kernels/cuda/device.h"

namespace ragserve::kernels::cuda {

bool CompiledWithCuda() { return true; }

int DeviceCount() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver / no device" error
    return 0;
  }
  return n;
}

std::string NoDeviceReason() {
  int n = 0;
  cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    cudaGetLastError();
    return std::string("no usable CUDA device: ") + cudaGetErrorString(err);
  }
  return n > 0 ? "" : "no CUDA device present";
}

std::string DeviceDescription(int i) {
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, i) != cudaSuccess) {
    cudaGetLastError();
    return "";
  }
  char buf[768];
  std::snprintf(buf, sizeof(buf), "%s (sm_%d%d, %.0f GiB)", prop.name, prop.major, prop.minor,
                static_cast<double>(prop.totalGlobalMem) / (1024.0 * 1024.0 * 1024.0));
  return buf;
}

}  // namespace ragserve::kernels::cuda
