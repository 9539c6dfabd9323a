// CudaOps: the op interface (kernels/cpu/ops.h) on a CUDA device. Each calling thread queues on
// its own stream (cudaStreamPerThread) with its own cuBLAS handle and scratch, so the object has
// no shared mutable state apart from the process-wide GEMM mode.
#include <cublas_v2.h>

#include <algorithm>
#include <atomic>

#include "kernels/cuda/attention.h"
#include "kernels/cuda/cuda_util.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/launchers.h"
#include "kernels/cuda/ops.h"

namespace ragserve::kernels::cuda {
namespace {

std::atomic<int> g_gemm_mode{static_cast<int>(CudaGemmMode::kTensorCore)};

// Elements of a widened weight slab (kF32 GEMM mode): 64 Mi floats = 256 MiB at most.
constexpr int64_t kSlabElems = int64_t{64} << 20;

// Per-thread CUDA state. Deliberately never destroyed: thread-exit destructors can run after the
// CUDA runtime has shut down at process exit; a handle per long-lived worker thread is bounded.
struct ThreadState {
  cublasHandle_t blas = nullptr;
  DeviceScratch convert;  // activations in the weight dtype / widened weight slab
  DeviceScratch dense_k, dense_v;
  DeviceScratch zero_page;  // one int32 0: the page table of a contiguous view
  AttentionWorkspace attention;
  Status error;  // first error since the last Synchronize
};

ThreadState& State() {
  thread_local ThreadState* s = new ThreadState();
  return *s;
}

cudaStream_t Stream() { return cudaStreamPerThread; }

void Record(Status s) {
  ThreadState& st = State();
  if (st.error.ok() && !s.ok()) st.error = std::move(s);
}

void RecordLaunch(const char* what) { Record(LaunchStatus(what)); }

void RecordBlas(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS) {
    Record(Internal(StrCat(what, ": cuBLAS error ", static_cast<int>(s))));
  }
}

cublasHandle_t Blas() {
  ThreadState& st = State();
  if (st.blas == nullptr) RecordBlas(cublasCreate(&st.blas), "cublasCreate");
  if (st.blas != nullptr) RecordBlas(cublasSetStream(st.blas, Stream()), "cublasSetStream");
  return st.blas;
}

cudaDataType CudaType(DType t) {
  switch (t) {
    case DType::kF16:
      return CUDA_R_16F;
    case DType::kBF16:
      return CUDA_R_16BF;
    default:
      return CUDA_R_32F;
  }
}

class CudaOpsImpl final : public Ops {
 public:
  std::string_view name() const override { return "cuda"; }
  MemorySpace memory() const override { return MemorySpace::kDevice; }

  void* Allocate(size_t bytes) const override {
    void* p = nullptr;
    if (cudaMalloc(&p, std::max<size_t>(bytes, 1)) != cudaSuccess) {
      cudaGetLastError();  // out of memory is reported by the nullptr, not left sticky
      return nullptr;
    }
    return p;
  }
  void Free(void* p) const override {
    if (p != nullptr) cudaFree(p);
  }
  void CopyToBackend(void* dst, const void* src, size_t bytes) const override {
    if (bytes == 0) return;
    Record(Wrap(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, Stream()), "H2D"));
  }
  void CopyToHost(void* dst, const void* src, size_t bytes) const override {
    if (bytes == 0) return;
    Record(Wrap(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, Stream()), "D2H"));
    Record(Wrap(cudaStreamSynchronize(Stream()), "D2H sync"));
  }
  void CopyWithin(void* dst, const void* src, size_t bytes) const override {
    if (bytes == 0) return;
    Record(Wrap(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, Stream()), "D2D"));
  }
  Status Synchronize() const override {
    Record(Wrap(cudaStreamSynchronize(Stream()), "cudaStreamSynchronize"));
    RecordLaunch("kernels");
    Status s = std::move(State().error);
    State().error = OkStatus();
    return s;
  }

  Status Health() const override {
    // A sticky error is returned by every later call, cudaDeviceSynchronize included, and is
    // not cleared by cudaGetLastError; a transient one was consumed by Synchronize already.
    const cudaError_t e = cudaDeviceSynchronize();
    if (e == cudaSuccess) return OkStatus();
    cudaGetLastError();
    return Unavailable(StrCat("CUDA device unusable: ", cudaGetErrorString(e)));
  }

  void MatMul(const float* x, int64_t m, const WeightView& w, const WeightView* bias,
              float* y) const override {
    if (m <= 0) return;
    if (m <= kGemvMaxRows) {
      LaunchGemv(x, m, w, bias, y, Stream());
      RecordLaunch("gemv");
      return;
    }
    GemmBlas(x, m, w, y);
    if (bias != nullptr) {
      LaunchAddBias(y, m, *bias, Stream());
      RecordLaunch("bias");
    }
  }

  void RmsNorm(const float* x, int64_t m, int64_t n, const WeightView& g, float eps,
               float* y) const override {
    LaunchRmsNorm(x, m, n, g, eps, y, Stream());
    RecordLaunch("rmsnorm");
  }
  void Rope(float* x, int64_t m, int heads, int head_dim, const int32_t* positions,
            const float* inv_freq) const override {
    LaunchRope(x, m, heads, head_dim, positions, inv_freq, Stream());
    RecordLaunch("rope");
  }
  void SiluMul(const float* gate, const float* up, int64_t n, float* out) const override {
    LaunchSiluMul(gate, up, n, out, Stream());
    RecordLaunch("silu_mul");
  }
  void Add(float* y, const float* x, int64_t n) const override {
    LaunchAdd(y, x, n, Stream());
    RecordLaunch("add");
  }
  void Embed(const WeightView& table, const int32_t* ids, int64_t m, float* out) const override {
    LaunchEmbed(table, ids, m, out, Stream());
    RecordLaunch("embed");
  }

  // The generic strided partial (the engine's GPU caches call Attention() on paged views
  // directly): K/V rows are packed densely, then one non-causal attention call.
  void Attention(const float* q, int h, const float* k, int64_t ldk, const float* v, int64_t ldv,
                 int64_t n, int d, float scale, float* o, float* lse) const override {
    ThreadState& st = State();
    const size_t bytes = static_cast<size_t>(std::max<int64_t>(n, 1)) * d * sizeof(float);
    StatusOr<void*> dk = st.dense_k.Get(bytes);
    StatusOr<void*> dv = st.dense_v.Get(bytes);
    StatusOr<void*> zp = st.zero_page.Get(sizeof(int32_t));
    if (!dk.ok() || !dv.ok() || !zp.ok()) {
      Record(!dk.ok() ? dk.status() : !dv.ok() ? dv.status() : zp.status());
      return;
    }
    Record(Wrap(cudaMemsetAsync(*zp, 0, sizeof(int32_t), Stream()), "memset"));
    if (n > 0) {
      Record(Wrap(cudaMemcpy2DAsync(*dk, d * sizeof(float), k, ldk * sizeof(float),
                                    d * sizeof(float), n, cudaMemcpyDeviceToDevice, Stream()),
                  "pack K"));
      Record(Wrap(cudaMemcpy2DAsync(*dv, d * sizeof(float), v, ldv * sizeof(float),
                                    d * sizeof(float), n, cudaMemcpyDeviceToDevice, Stream()),
                  "pack V"));
    }
    PagedKvView view;
    view.k_pool = *dk;
    view.v_pool = *dv;
    view.pages = static_cast<const int32_t*>(*zp);
    view.page_size = std::max<int64_t>(n, 1);
    view.length = n;
    view.kv_heads = 1;
    view.head_dim = d;
    AttentionArgs a;
    a.q = q;
    a.n = 1;
    a.heads = h;
    a.scale = scale;
    a.causal = false;
    a.o = o;
    a.lse = lse;
    Record(cuda::Attention(a, view, &st.attention, Stream()));
  }

 private:
  static Status Wrap(cudaError_t e, const char* what) {
    if (e == cudaSuccess) return OkStatus();
    return Internal(StrCat(what, ": ", cudaGetErrorString(e)));
  }

  // y[m, rows] = x[m, cols] . W^T via cuBLAS (column-major view: C[rows, m] = W^T' x', i.e.
  // op(A) = T on the row-major W read as a [cols, rows] column-major matrix).
  void GemmBlas(const float* x, int64_t m, const WeightView& w, float* y) const {
    cublasHandle_t blas = Blas();
    if (blas == nullptr) return;
    const float alpha = 1.0f, beta = 0.0f;
    const int rows = static_cast<int>(w.rows), cols = static_cast<int>(w.cols);
    const int mm = static_cast<int>(m);
    if (w.dtype == DType::kF32) {
      RecordBlas(cublasSgemm(blas, CUBLAS_OP_T, CUBLAS_OP_N, rows, mm, cols, &alpha,
                             static_cast<const float*>(w.data), cols, x, cols, &beta, y, rows),
                 "cublasSgemm");
      return;
    }
    ThreadState& st = State();
    if (GetCudaGemmMode() == CudaGemmMode::kTensorCore) {
      StatusOr<void*> xs = st.convert.Get(static_cast<size_t>(m * w.cols) * DTypeSize(w.dtype));
      if (!xs.ok()) return Record(xs.status());
      LaunchConvertFromF32(x, w.dtype, m * w.cols, *xs, Stream());
      RecordLaunch("convert activations");
      RecordBlas(cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, rows, mm, cols, &alpha, w.data,
                              CudaType(w.dtype), cols, *xs, CudaType(w.dtype), cols, &beta, y,
                              CUDA_R_32F, rows, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                 "cublasGemmEx");
      return;
    }
    // kF32: widen a slab of weight rows at a time, then SGEMM into the slab's rows of y.
    const int64_t slab = std::clamp<int64_t>(kSlabElems / std::max<int64_t>(w.cols, 1), 1, w.rows);
    StatusOr<void*> ws = st.convert.Get(static_cast<size_t>(slab * w.cols) * sizeof(float));
    if (!ws.ok()) return Record(ws.status());
    for (int64_t r0 = 0; r0 < w.rows; r0 += slab) {
      const int64_t rs = std::min(slab, w.rows - r0);
      LaunchConvertToF32(w.Row(r0), w.dtype, rs * w.cols, static_cast<float*>(*ws), Stream());
      RecordLaunch("widen weights");
      RecordBlas(cublasSgemm(blas, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(rs), mm, cols, &alpha,
                             static_cast<const float*>(*ws), cols, x, cols, &beta, y + r0, rows),
                 "cublasSgemm");
    }
  }
};

}  // namespace

StatusOr<const Ops*> CudaOps() {
  if (DeviceCount() == 0) return FailedPrecondition(NoDeviceReason());
  static const CudaOpsImpl ops;
  return &ops;
}

void SetCudaGemmMode(CudaGemmMode mode) { g_gemm_mode.store(static_cast<int>(mode)); }
CudaGemmMode GetCudaGemmMode() { return static_cast<CudaGemmMode>(g_gemm_mode.load()); }

}  // namespace ragserve::kernels::cuda
