// Internal: BLAS threading shared by the fast CPU kernels (ops_fast.cc, attention.cc).
#pragma once

namespace ragserve::kernels::internal {

// Switches OpenBLAS's own pthreads off (once per process): our kernels call single-threaded
// sgemm from the spin pool's threads, and two pools spinning on two cores starve each other.
// A no-op when another BLAS is linked.
void SingleThreadedBlas();

}  // namespace ragserve::kernels::internal
