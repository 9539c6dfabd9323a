// A paged KV cache in GPU memory: fixed-size pages drawn from one pool per worker (no per-token
// allocation, no copying when a sequence grows), one page table per layer and sequence, attention
// through the split-K flash-decoding / tiled prefill kernels of kernels/cuda/attention.cu.
//
// Plain C++ API (no CUDA types), so the engine uses it in every build: without CUDA compiled in,
// KvPagePool::Create fails with a clear error. Device pointers in, device pointers out.
//
//   StatusOr<std::shared_ptr<KvPagePool>> pool = KvPagePool::Create(
//       {.kv_heads = 8, .head_dim = 128, .dtype = DType::kF16, .page_size = 64}, 1 << 30);
//   StatusOr<std::unique_ptr<PagedKvCache>> kv = PagedKvCache::Create(*pool, /*layers=*/32, 0);
//   kv->Append(layer, k_dev, v_dev, n);           // [n, kv_heads, head_dim] f32 -> pages
//   kv->Attend(layer, q_dev, n, heads, scale, o_dev, lse_dev);
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "kernels/cpu/ops.h"
#include "services/common/mutex.h"
#include "services/common/status.h"

namespace ragserve::kernels::cuda {

struct KvPageGeometry {
  int kv_heads = 0;
  int head_dim = 0;
  DType dtype = DType::kF32;  // storage; appended K/V are f32 and converted
  int64_t page_size = 64;     // tokens per page
  // Bytes of one page of keys plus its page of values.
  int64_t page_bytes() const {
    return 2 * page_size * kv_heads * head_dim * static_cast<int64_t>(DTypeSize(dtype));
  }
};

// A fixed pool of pages in device memory shared by the caches of one worker. Thread-safe.
class KvPagePool {
 public:
  // Allocates floor(bytes / page_bytes) pages (at least one). InvalidArgument for a bad geometry,
  // ResourceExhausted when the device memory cannot be had, FailedPrecondition without CUDA.
  static StatusOr<std::shared_ptr<KvPagePool>> Create(const KvPageGeometry& g, int64_t bytes);
  ~KvPagePool();
  KvPagePool(const KvPagePool&) = delete;
  KvPagePool& operator=(const KvPagePool&) = delete;

  const KvPageGeometry& geometry() const { return g_; }
  int64_t num_pages() const { return num_pages_; }
  int64_t free_pages() const;
  // Takes `count` pages (ids appended to *out); ResourceExhausted (nothing taken) when fewer
  // are free.
  Status Take(int64_t count, std::vector<int32_t>* out);
  void Give(const int32_t* ids, int64_t count);
  void* k_pool() const { return k_; }
  void* v_pool() const { return v_; }

 private:
  KvPagePool() = default;
  KvPageGeometry g_;
  int64_t num_pages_ = 0;
  void* k_ = nullptr;
  void* v_ = nullptr;
  mutable Mutex mu_;
  std::vector<int32_t> free_ ABSL_GUARDED_BY(mu_);
};

// One sequence's KV for every layer, in pages of a pool. Not thread-safe (one sequence, one
// thread at a time); work is queued on the calling thread's CUDA stream (cudaStreamPerThread).
class PagedKvCache {
 public:
  // window > 0: causal attention sees only the last `window` keys (Mistral's sliding window).
  static StatusOr<std::unique_ptr<PagedKvCache>> Create(std::shared_ptr<KvPagePool> pool,
                                                        int layers, int64_t window);
  // Returns its pages to the pool (after the calling thread's queued work: destroy it on the
  // thread that used it).
  ~PagedKvCache();
  PagedKvCache(const PagedKvCache&) = delete;
  PagedKvCache& operator=(const PagedKvCache&) = delete;

  // Stores n tokens' K/V of `layer` (device f32 [n, kv_heads, head_dim]) after the ones already
  // there. ResourceExhausted (nothing stored) when the pool has no pages left.
  Status Append(int layer, const float* k, const float* v, int n);
  // Causal attention of the newest n stored tokens' queries q (device [n, heads, head_dim]) over
  // the stored keys of `layer` -> o [n, heads, head_dim], lse [n, heads] (device).
  Status Attend(int layer, const float* q, int n, int heads, float scale, float* o, float* lse);
  // Attention of n queries over stored keys [begin, end) of `layer`, every one visible to every
  // query (the sink range or the recent window of the hybrid path); scale as given. An empty
  // range gives o = 0, lse = -inf.
  Status AttendRange(int layer, const float* q, int n, int heads, float scale, int64_t begin,
                     int64_t end, float* o, float* lse);
  // Copies stored tokens [begin, end) of `layer` to host f32 arrays [end - begin, kv_heads,
  // head_dim] (tests; moving old tokens out of the GPU window).
  Status Read(int layer, int64_t begin, int64_t end, float* k, float* v) const;
  int64_t length(int layer) const { return len_[layer]; }
  int layers() const { return static_cast<int>(len_.size()); }
  // Drops tokens beyond n in every layer (pages past the end go back to the pool).
  void Truncate(int64_t n);
  // Returns to the pool every page that lies wholly inside tokens [begin, end) of every layer
  // (the hybrid path's middle, which moved to CPU memory). Those tokens must not be attended or
  // read afterwards; lengths do not change.
  void Evict(int64_t begin, int64_t end);
  // Device bytes held (pages * page_bytes).
  int64_t bytes() const;

 private:
  PagedKvCache() = default;
  // Puts `fresh` page ids at entries [have, have + fresh.size()) of layer's device table
  // (growing it); the host table is not touched.
  Status UploadTable(int layer, int64_t have, const std::vector<int32_t>& fresh);
  struct Impl;
  std::shared_ptr<KvPagePool> pool_;
  int64_t window_ = 0;
  std::vector<int64_t> len_;
  std::vector<std::vector<int32_t>> pages_;  // host page tables per layer
  std::unique_ptr<Impl> impl_;               // device page tables, workspace
};

// Merges partial b into partial a on the device, in place, over `rows` rows of dim d (the LSE
// merge of kernels/cuda/attention.h; b_lse_factor = 1 for disjoint key sets). Queued on the
// calling thread's stream.
Status MergeDevicePartials(float* o_a, float* lse_a, const float* o_b, const float* lse_b,
                           int64_t rows, int d, float b_lse_factor = 1.0f);

}  // namespace ragserve::kernels::cuda
