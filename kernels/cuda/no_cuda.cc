// Stub of kernels/cuda/device.h for builds without the CUDA language (RAGSERVE_CUDA=OFF or no
// nvcc).
#include "kernels/cuda/device.h"

namespace ragserve::kernels::cuda {

bool CompiledWithCuda() { return false; }
int DeviceCount() { return 0; }
std::string NoDeviceReason() {
  return "this build has no CUDA backend (configured with RAGSERVE_CUDA=OFF or nvcc not found)";
}
std::string DeviceDescription(int) { return ""; }

}  // namespace ragserve::kernels::cuda
