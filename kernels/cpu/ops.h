// The op interface of the model runtime: every op the transformer forward pass uses, behind one
// abstract class that each backend implements (RefOps: plain loops, the test oracle; FastOps:
// a thread pool + AVX-512/AVX2 + OpenBLAS; CudaOps in kernels/cuda/ops.h). Activations are always
// f32; weights stay in their stored dtype (f32, f16, bf16, or the GGUF block formats Q8_0, Q4_0,
// Q4_K, Q6_K of kernels/cpu/quant.h) and are converted on the fly. The block formats are CPU-only
// (FastOps runs integer dot products on them, RefOps dequantizes); CudaOps never sees them (the
// model refuses to upload them).
//
// Memory: every pointer an op takes lives in the backend's memory space (memory()): host memory
// for the CPU backends, device memory for CUDA. The model allocates its activations with
// Allocate/ScratchBuffer, uploads weights once (Upload) and moves data across with the Copy*
// calls, so the same forward pass runs on either.
//
// Layouts are row-major. Linear weights use the Hugging Face layout W: [out, in], so a matmul is
// y[m, out] = x[m, in] . W^T. Ops never allocate per element and never fail: callers (the model)
// validate shapes once at load time. All ops are thread-safe (no shared mutable state) and
// parallelize internally where they are "fast".
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "services/common/status.h"

namespace ragserve::kernels {

// kF32..kBF16: plain element types (activations, KV, weights). kQ8_0..kQ6_K: GGUF block-quantized
// weight formats (kernels/cpu/quant.h): a row of cols values is cols / DTypeBlockValues blocks of
// DTypeBlockBytes bytes each; only whole blocks exist.
enum class DType : uint8_t {
  kF32 = 0,
  kF16 = 1,
  kBF16 = 2,
  kQ8_0 = 3,
  kQ4_0 = 4,
  kQ4_K = 5,
  kQ6_K = 6,
};

// Whether t is one of the block-quantized weight formats.
inline bool IsQuantized(DType t) { return static_cast<uint8_t>(t) >= 3; }
// Values per block: 1 for f32/f16/bf16, 32 for Q8_0/Q4_0, 256 for Q4_K/Q6_K.
inline int64_t DTypeBlockValues(DType t) {
  return t == DType::kQ8_0 || t == DType::kQ4_0 ? 32 : IsQuantized(t) ? 256 : 1;
}
// Bytes per block: 4, 2, 2, 34, 18, 144, 210.
inline int64_t DTypeBlockBytes(DType t) {
  constexpr int64_t kBytes[] = {4, 2, 2, 34, 18, 144, 210};
  return kBytes[static_cast<uint8_t>(t)];
}
// Bytes of n values of t (n a multiple of DTypeBlockValues(t): the caller checked).
inline int64_t DTypeBytes(DType t, int64_t n) {
  return n / DTypeBlockValues(t) * DTypeBlockBytes(t);
}
// Bytes per element of the plain types: 4, 2, 2; 0 for the block formats (use DTypeBytes).
size_t DTypeSize(DType t);
// "F32", "F16", "BF16" (the safetensors spelling), "Q8_0", "Q4_0", "Q4_K", "Q6_K" (GGUF's).
std::string_view DTypeName(DType t);
// The dtype a name spells, case-insensitively ("f32", "bf16", "q8_0", "Q4_K", ...); false when it
// names none.
bool DTypeFromName(std::string_view name, DType* out);

// Scalar conversions (round-to-nearest-even for the narrowing ones; NaN stays NaN).
float Bf16ToF32(uint16_t v);
uint16_t F32ToBf16(float v);
float F16ToF32(uint16_t v);
uint16_t F32ToF16(float v);

// dst[i] = float(src[i]) for n elements of dtype t (block formats: dequantized bit-exactly, n a
// multiple of the block).
void ConvertToF32(const void* src, DType t, int64_t n, float* dst);
// Narrows n floats into dtype t (f32: copy; block formats: the format's reference quantizer, n a
// multiple of the block).
void ConvertFromF32(const float* src, DType t, int64_t n, void* dst);

// A row-major matrix [rows, cols] in its stored dtype; not owned (typically mmapped weights).
// A vector (norm weight, bias) is a view with rows == 1 (never block-quantized). A block-quantized
// matrix has cols a multiple of its block and rows of DTypeBytes(dtype, cols) bytes.
struct WeightView {
  const void* data = nullptr;
  DType dtype = DType::kF32;
  int64_t rows = 0;
  int64_t cols = 0;
  // Optional: the same matrix in a kernel's own layout, made at load (Q4_0 / Q8_0: PackWeights in
  // kernels/cpu/quant.h); kernels that have no use for it read `data`.
  const void* packed = nullptr;
  // Bytes of one row.
  int64_t RowBytes() const { return DTypeBytes(dtype, cols); }
  // Bytes of the whole matrix.
  int64_t Bytes() const { return rows * RowBytes(); }
  // Address of row r.
  const void* Row(int64_t r) const { return static_cast<const char*>(data) + r * RowBytes(); }
};

enum class MemorySpace : uint8_t { kHost = 0, kDevice = 1 };

class Ops {
 public:
  virtual ~Ops() = default;
  // "ref", "fast", "cuda"...
  virtual std::string_view name() const = 0;

  // ---- Memory (host defaults: aligned heap and memcpy) ----
  // Where this backend's op arguments live.
  virtual MemorySpace memory() const { return MemorySpace::kHost; }
  // `bytes` of backend memory, 64-byte aligned; nullptr when it cannot be had. Free(nullptr) is a
  // no-op.
  virtual void* Allocate(size_t bytes) const;
  virtual void Free(void* p) const;
  // Host -> backend, backend -> host (returns when the data is on the host), backend -> backend.
  virtual void CopyToBackend(void* dst, const void* src, size_t bytes) const;
  virtual void CopyToHost(void* dst, const void* src, size_t bytes) const;
  virtual void CopyWithin(void* dst, const void* src, size_t bytes) const;
  // Waits for the calling thread's queued work and reports the first error since the last call
  // (ops themselves never fail; an asynchronous backend collects launch or device errors here).
  virtual Status Synchronize() const { return OkStatus(); }
  // Whether the backend can still run ops at all (OK for the CPU). A GPU whose context hit a
  // sticky error (an illegal address, a lost device) cannot, for the life of the process: the
  // caller should stop using it (the decode worker fails its requests and stops).
  virtual Status Health() const { return OkStatus(); }

  // y[m, w.rows] = x[m, w.cols] . W^T  (+ bias[w.rows] on every row when bias != nullptr).
  virtual void MatMul(const float* x, int64_t m, const WeightView& w, const WeightView* bias,
                      float* y) const = 0;
  // Several matmuls of one input: ys[i][m, ws[i].rows] = x[m, cols] . ws[i]^T (+ biases[i] when
  // biases[i] != nullptr); every ws[i].cols equal. Same result as MatMul per weight; the fast
  // backend runs them as one parallel pass (decode reads q/k/v or gate/up with a single fork/join).
  virtual void MatMulShared(const float* x, int64_t m, int count, const WeightView* const* ws,
                            const WeightView* const* biases, float* const* ys) const;
  // y[m, n] = x / sqrt(mean(x^2) + eps) * g   (per row; g: [n]). y may alias x.
  virtual void RmsNorm(const float* x, int64_t m, int64_t n, const WeightView& g, float eps,
                       float* y) const = 0;
  // Rotary embedding in place, Hugging Face "rotate_half" convention: x: [m, heads, head_dim],
  // token i at positions[i]; inv_freq: [head_dim / 2] (already scaled for linear / llama3).
  virtual void Rope(float* x, int64_t m, int heads, int head_dim, const int32_t* positions,
                    const float* inv_freq) const = 0;
  // out[i] = silu(gate[i]) * up[i] for n elements. out may alias gate.
  virtual void SiluMul(const float* gate, const float* up, int64_t n, float* out) const = 0;
  // y[i] += x[i] for n elements.
  virtual void Add(float* y, const float* x, int64_t n) const = 0;
  // out[i, :] = float(table row ids[i]) for m ids; table: [vocab, cols]. ids are trusted.
  virtual void Embed(const WeightView& table, const int32_t* ids, int64_t m, float* out) const = 0;
  // Partial attention with log-sum-exp for one group of h query heads sharing a kv head
  // (see kernels/cpu/attention.h for the exact contract).
  virtual void Attention(const float* q, int h, const float* k, int64_t ldk, const float* v,
                         int64_t ldv, int64_t n, int d, float scale, float* o,
                         float* lse) const = 0;
  // Causal attention of a sequence's n newest tokens over its cache (grouped-query):
  // q: [n, heads, d]; k, v: [len, kv_heads, d]; query i is cache index len - n + i and sees keys
  // [max(0, idx + 1 - window), idx] (window <= 0: from 0) -> o: [n, heads, d], lse: [n, heads].
  // The default runs Attention() per (query, kv head) in turn (RefOps); FastOps spreads that over
  // `threads` threads and tiles prefill-sized n (blocks of queries x keys through sgemm).
  virtual void CausalAttention(const float* q, int n, int heads, int kv_heads, int d,
                               const float* k, const float* v, int64_t len, int64_t window,
                               float scale, float* o, float* lse, int threads) const;
  // The same n queries against a block whose every key precedes them (a prefix, an APE
  // passage): k, v: [len, kv_heads, d], all visible to every query. Default per row; FastOps
  // tiles prefill-sized n.
  virtual void BlockAttention(const float* q, int n, int heads, int kv_heads, int d, const float* k,
                              const float* v, int64_t len, float scale, float* o, float* lse,
                              int threads) const;
};

// A growable scratch array in an Ops backend's memory (contents are not kept when it grows).
// Not thread-safe; one per user (the model's activation buffers).
class ScratchBuffer {
 public:
  explicit ScratchBuffer(const Ops* ops = nullptr) : ops_(ops) {}
  ScratchBuffer(const ScratchBuffer&) = delete;
  ScratchBuffer& operator=(const ScratchBuffer&) = delete;
  ~ScratchBuffer() { Reset(); }
  // Switches backend (frees the current allocation).
  void set_ops(const Ops* ops) {
    Reset();
    ops_ = ops;
  }
  // At least `count` elements of T in the backend's memory; nullptr only when the backend is out
  // of memory (callers check once per step).
  template <typename T>
  T* Get(int64_t count) {
    const size_t bytes = static_cast<size_t>(count > 0 ? count : 1) * sizeof(T);
    if (bytes > size_) {
      Reset();
      ptr_ = ops_->Allocate(bytes);
      size_ = ptr_ != nullptr ? bytes : 0;
    }
    return static_cast<T*>(ptr_);
  }

 private:
  void Reset() {
    if (ptr_ != nullptr) ops_->Free(ptr_);
    ptr_ = nullptr;
    size_ = 0;
  }
  const Ops* ops_;
  void* ptr_ = nullptr;
  size_t size_ = 0;
};

// Task t (= query i * kv_heads + kv head) of the per-row form of Ops::CausalAttention (causal)
// or Ops::BlockAttention (!causal): ops.Attention for one query's group of heads over its key
// range.
void AttentionRow(const Ops& ops, const float* q, int n, int heads, int kv_heads, int d,
                  const float* k, const float* v, int64_t len, bool causal, int64_t window,
                  float scale, float* o, float* lse, int64_t t);

// The plain reference backend: scalar loops, f64 accumulation where it matters. The oracle.
const Ops& RefOps();
// The fast CPU backend: multithreaded GEMV for small m (reads W once for all rows), cblas_sgemm
// for large m (f16/bf16 weights converted a tile at a time); AVX-512 or AVX2/FMA/F16C chosen at
// run time (SimdLevel below) with a scalar fallback.
const Ops& FastOps();

// Threads FastOps (and the engine's KV attention) use for calls made from the calling thread
// (the caller plus workers of kernels/cpu/spin_pool.h); n <= 0 restores the default,
// omp_get_max_threads() (OMP_NUM_THREADS). Results do not depend on it: every output element is
// computed by one thread in a fixed order. Thread-local, so two callers can choose differently.
void SetFastOpsThreads(int n);
// The effective count for the calling thread (>= 1).
int FastOpsThreads();

// The instruction set of FastOps' GEMV kernels (decode): chosen at run time from the CPU (the build
// needs no -march), capped process-wide by SetFastOpsMaxSimd so tests and benches can run every
// level the CPU has. Results agree across levels within float reordering (f32 accumulation in a
// different order), not bit for bit.
enum class SimdLevel : uint8_t { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };
// The best level this CPU supports (AVX2 needs FMA and F16C; AVX-512 needs F, BW, VL and DQ).
SimdLevel CpuSimdLevel();
// The level in use: min(CpuSimdLevel(), the cap).
SimdLevel FastOpsSimdLevel();
// Caps the level (kAvx512, the default, means no cap). Not for use while other threads run ops.
void SetFastOpsMaxSimd(SimdLevel level);
// "scalar", "avx2", "avx512".
std::string_view SimdLevelName(SimdLevel level);

// Decode GEMVs (m <= kGemvMaxRows) run on kernels/cpu/spin_pool.h's pool by default (workers
// spin briefly between the forks of a decode step, then sleep); true runs them as OpenMP parallel
// loops instead (the baseline the engine bench compares against). Process-wide.
void SetFastOpsGemvOpenMp(bool on);
bool GemvUsesOpenMp();

// Number of activation rows up to which FastOps::MatMul uses the GEMV path instead of sgemm.
inline constexpr int64_t kGemvMaxRows = 8;
// Queries from which FastOps' Causal/BlockAttention tile (prefill chunks) instead of going per
// row.
inline constexpr int kTiledAttentionMinQueries = 16;

}  // namespace ragserve::kernels
