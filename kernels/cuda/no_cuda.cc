// Stubs of the CUDA backend for builds without the CUDA language (RAGSERVE_CUDA=OFF or no nvcc):
// discovery reports no device, and every entry point that would touch a GPU fails with
// FailedPrecondition saying why, so callers (the decoder's --device cuda) get a clear error.
#include "kernels/cuda/device.h"
#include "kernels/cuda/ops.h"
#include "kernels/cuda/paged_kv.h"

namespace ragserve::kernels::cuda {
namespace {

constexpr char kNoCuda[] =
    "this build has no CUDA backend (configured with RAGSERVE_CUDA=OFF or nvcc not found)";

}  // namespace

bool CompiledWithCuda() { return false; }
int DeviceCount() { return 0; }
std::string NoDeviceReason() { return kNoCuda; }
std::string DeviceDescription(int) { return ""; }

StatusOr<const Ops*> CudaOps() { return FailedPrecondition(kNoCuda); }
void SetCudaGemmMode(CudaGemmMode) {}
CudaGemmMode GetCudaGemmMode() { return CudaGemmMode::kTensorCore; }

StatusOr<std::shared_ptr<KvPagePool>> KvPagePool::Create(const KvPageGeometry&, int64_t) {
  return FailedPrecondition(kNoCuda);
}
KvPagePool::~KvPagePool() = default;
int64_t KvPagePool::free_pages() const { return 0; }
Status KvPagePool::Take(int64_t, std::vector<int32_t>*) { return FailedPrecondition(kNoCuda); }
void KvPagePool::Give(const int32_t*, int64_t) {}

struct PagedKvCache::Impl {};
StatusOr<std::unique_ptr<PagedKvCache>> PagedKvCache::Create(std::shared_ptr<KvPagePool>, int,
                                                             int64_t) {
  return FailedPrecondition(kNoCuda);
}
PagedKvCache::~PagedKvCache() = default;
Status PagedKvCache::UploadTable(int, int64_t, const std::vector<int32_t>&) {
  return FailedPrecondition(kNoCuda);
}
Status PagedKvCache::Append(int, const float*, const float*, int) {
  return FailedPrecondition(kNoCuda);
}
Status PagedKvCache::Attend(int, const float*, int, int, float, float*, float*) {
  return FailedPrecondition(kNoCuda);
}
Status PagedKvCache::AttendRange(int, const float*, int, int, float, int64_t, int64_t, float*,
                                 float*) {
  return FailedPrecondition(kNoCuda);
}
Status PagedKvCache::Read(int, int64_t, int64_t, float*, float*) const {
  return FailedPrecondition(kNoCuda);
}
void PagedKvCache::Truncate(int64_t) {}
void PagedKvCache::Evict(int64_t, int64_t) {}
Status MergeDevicePartials(float*, float*, const float*, const float*, int64_t, int, float) {
  return FailedPrecondition(kNoCuda);
}
int64_t PagedKvCache::bytes() const { return 0; }

}  // namespace ragserve::kernels::cuda
