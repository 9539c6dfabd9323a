// main() of the GPU tests: without a usable CUDA device the whole binary prints why and exits 77,
// which ctest reports as "Skipped" (SKIP_RETURN_CODE), so a GPU-less CI run shows the skip instead
// of a silent pass.
#include <gtest/gtest.h>

#include <cstdio>

#include "kernels/cuda/device.h"

int main(int argc, char** argv) {
  namespace cuda = ragserve::kernels::cuda;
  if (cuda::DeviceCount() == 0) {
    std::printf("SKIPPED: GPU tests need a CUDA device: %s\n", cuda::NoDeviceReason().c_str());
    std::fflush(stdout);
    return 77;
  }
  std::printf("GPU tests on %s\n", cuda::DeviceDescription(0).c_str());
  testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
