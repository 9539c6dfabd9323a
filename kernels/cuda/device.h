// CUDA device discovery. Compiled as CUDA when RAGSERVE_HAVE_CUDA, else as a stub.
#pragma once

#include <string>

namespace ragserve::kernels::cuda {

// True when this build has the CUDA backend compiled in.
bool CompiledWithCuda();
// Number of usable CUDA devices (0 without a driver, a device, or CUDA support).
int DeviceCount();
// Why no device can be used ("" when DeviceCount() > 0); for visible test skips and logs.
std::string NoDeviceReason();
// "NVIDIA H100 80GB HBM3 (sm_90, 79 GiB)" for device `i`, or "" when there is none.
std::string DeviceDescription(int i);

}  // namespace ragserve::kernels::cuda
