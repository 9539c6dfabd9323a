// The paged KV cache in device memory (kernels/cuda/paged_kv.h): the page pool, per-layer page
// tables mirrored on the device, the append (f32 -> storage dtype into pages) and gather kernels.
#include <algorithm>

#include "kernels/cuda/attention.h"
#include "kernels/cuda/cuda_util.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/paged_kv.h"

namespace ragserve::kernels::cuda {
namespace {

constexpr int kThreads = 256;

// k, v: [n, kv_row] f32 -> rows len..len+n-1 of the pages in table (dtype t)
__global__ void AppendKernel(const float* k, const float* v, int64_t n, int64_t kv_row,
                             const int32_t* table, int64_t page_size, int64_t len, void* k_pool,
                             void* v_pool, DType t) {
  const int64_t total = n * kv_row;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t tok = len + i / kv_row, e = i % kv_row;
    const int64_t dst =
        (int64_t{table[tok / page_size]} * page_size + tok % page_size) * kv_row + e;
    StoreFromFloat(k_pool, t, dst, k[i]);
    StoreFromFloat(v_pool, t, dst, v[i]);
  }
}

// rows begin..begin+n-1 of the pages in table (dtype t) -> k, v: [n, kv_row] f32
__global__ void GatherKernel(const void* k_pool, const void* v_pool, DType t, const int32_t* table,
                             int64_t page_size, int64_t begin, int64_t n, int64_t kv_row, float* k,
                             float* v) {
  const int64_t total = n * kv_row;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t tok = begin + i / kv_row, e = i % kv_row;
    const int64_t src =
        (int64_t{table[tok / page_size]} * page_size + tok % page_size) * kv_row + e;
    k[i] = LoadAsFloat(k_pool, t, src);
    v[i] = LoadAsFloat(v_pool, t, src);
  }
}

unsigned Blocks(int64_t n) {
  return static_cast<unsigned>(std::min<int64_t>(CeilDiv(n, kThreads), int64_t{1} << 16));
}

}  // namespace

// ---- KvPagePool --------------------------------------------------------------------------------

StatusOr<std::shared_ptr<KvPagePool>> KvPagePool::Create(const KvPageGeometry& g, int64_t bytes) {
  RS_CHECK_ARG(g.kv_heads > 0 && g.head_dim > 0 && g.head_dim <= kMaxHeadDim,
               "KvPagePool: bad geometry (", g.kv_heads, " kv heads x head_dim ", g.head_dim, ")");
  RS_CHECK_ARG(g.page_size >= 1, "KvPagePool: page_size ", g.page_size, " < 1");
  if (DeviceCount() == 0) return FailedPrecondition(NoDeviceReason());
  const int64_t pages = std::max<int64_t>(1, bytes / g.page_bytes());
  RS_CHECK_ARG(pages <= int64_t{1} << 30, "KvPagePool: ", pages, " pages is too many");
  std::shared_ptr<KvPagePool> pool(new KvPagePool());
  pool->g_ = g;
  pool->num_pages_ = pages;
  const size_t half = static_cast<size_t>(pages * g.page_bytes() / 2);
  if (cudaMalloc(&pool->k_, half) != cudaSuccess || cudaMalloc(&pool->v_, half) != cudaSuccess) {
    cudaGetLastError();
    return ResourceExhausted(StrCat("KvPagePool: cannot allocate ", 2 * half,
                                    " bytes of device memory for ", pages, " KV pages"));
  }
  MutexLock lock(pool->mu_);  // not shared yet: for the analysis
  pool->free_.resize(static_cast<size_t>(pages));
  // Handed out from the back: page 0 first.
  for (int64_t i = 0; i < pages; ++i) pool->free_[i] = static_cast<int32_t>(pages - 1 - i);
  return pool;
}

KvPagePool::~KvPagePool() {
  if (k_ != nullptr) cudaFree(k_);
  if (v_ != nullptr) cudaFree(v_);
}

int64_t KvPagePool::free_pages() const {
  MutexLock lock(mu_);
  return static_cast<int64_t>(free_.size());
}

Status KvPagePool::Take(int64_t count, std::vector<int32_t>* out) {
  MutexLock lock(mu_);
  if (count > static_cast<int64_t>(free_.size())) {
    return ResourceExhausted(StrCat("KV page pool exhausted: ", count, " pages wanted, ",
                                    free_.size(), " of ", num_pages_, " free"));
  }
  for (int64_t i = 0; i < count; ++i) {
    out->push_back(free_.back());
    free_.pop_back();
  }
  return OkStatus();
}

void KvPagePool::Give(const int32_t* ids, int64_t count) {
  MutexLock lock(mu_);
  free_.insert(free_.end(), ids, ids + count);
}

// ---- PagedKvCache ------------------------------------------------------------------------------

struct PagedKvCache::Impl {
  std::vector<int32_t*> tables;  // device copies of pages_[layer]
  std::vector<int64_t> table_cap;
  AttentionWorkspace workspace;
  DeviceScratch gather_k, gather_v;
  // Per layer, the pages [evicted_from, evicted_to) are given back already: a caller evicting a
  // growing range every step (a sliding window, the hybrid path's middle) only looks at new ones.
  std::vector<int64_t> evicted_from, evicted_to;
  ~Impl() {
    for (int32_t* t : tables) {
      if (t != nullptr) cudaFree(t);
    }
  }
};

StatusOr<std::unique_ptr<PagedKvCache>> PagedKvCache::Create(std::shared_ptr<KvPagePool> pool,
                                                             int layers, int64_t window) {
  RS_CHECK_ARG(pool != nullptr, "PagedKvCache: no page pool");
  RS_CHECK_ARG(layers > 0, "PagedKvCache: layers ", layers, " < 1");
  std::unique_ptr<PagedKvCache> c(new PagedKvCache());
  c->pool_ = std::move(pool);
  c->window_ = std::max<int64_t>(window, 0);
  c->len_.assign(static_cast<size_t>(layers), 0);
  c->pages_.resize(static_cast<size_t>(layers));
  c->impl_ = std::make_unique<Impl>();
  c->impl_->tables.assign(static_cast<size_t>(layers), nullptr);
  c->impl_->table_cap.assign(static_cast<size_t>(layers), 0);
  c->impl_->evicted_from.assign(static_cast<size_t>(layers), 0);
  c->impl_->evicted_to.assign(static_cast<size_t>(layers), 0);
  return c;
}

Status PagedKvCache::UploadTable(int layer, int64_t have, const std::vector<int32_t>& fresh) {
  cudaStream_t stream = cudaStreamPerThread;
  const std::vector<int32_t>& pages = pages_[layer];
  const int64_t need = have + static_cast<int64_t>(fresh.size());
  int32_t*& table = impl_->tables[layer];
  int64_t& cap = impl_->table_cap[layer];
  if (need > cap) {
    // Grow the device table and upload all of it.
    const int64_t new_cap = std::max<int64_t>(need, 2 * cap);
    int32_t* grown = nullptr;
    CUDA_CHECK(cudaMalloc(&grown, static_cast<size_t>(new_cap) * sizeof(int32_t)));
    if (have > 0) {
      // Pageable host memory: the copy has the data before cudaMemcpyAsync returns.
      Status st = [&]() -> Status {
        CUDA_CHECK(cudaMemcpyAsync(grown, pages.data(), static_cast<size_t>(have) * sizeof(int32_t),
                                   cudaMemcpyHostToDevice, stream));
        return OkStatus();
      }();
      if (!st.ok()) {
        cudaFree(grown);
        return st;
      }
    }
    if (table != nullptr) {
      CUDA_CHECK(cudaStreamSynchronize(stream));  // pending kernels may still read the old one
      cudaFree(table);
    }
    table = grown;
    cap = new_cap;
  }
  CUDA_CHECK(cudaMemcpyAsync(table + have, fresh.data(), fresh.size() * sizeof(int32_t),
                             cudaMemcpyHostToDevice, stream));
  return OkStatus();
}

PagedKvCache::~PagedKvCache() {
  // This thread's queued kernels may still read the pages: finish them before the pages are reused.
  cudaStreamSynchronize(cudaStreamPerThread);
  for (const std::vector<int32_t>& p : pages_) {
    for (int32_t id : p) {
      if (id >= 0) pool_->Give(&id, 1);  // evicted pages (-1) went back already
    }
  }
}

Status PagedKvCache::Append(int layer, const float* k, const float* v, int n) {
  RS_CHECK_ARG(layer >= 0 && layer < layers(), "PagedKvCache::Append: layer ", layer,
               " out of range [0, ", layers(), ")");
  RS_CHECK_ARG(n >= 0, "PagedKvCache::Append: n ", n, " < 0");
  if (n == 0) return OkStatus();
  const KvPageGeometry& g = pool_->geometry();
  std::vector<int32_t>& pages = pages_[layer];
  const int64_t len = len_[layer];
  const int64_t need = CeilDiv(len + n, g.page_size);
  const int64_t have = static_cast<int64_t>(pages.size());
  for (int64_t p = len / g.page_size; p < std::min(need, have); ++p) {
    RS_CHECK_ARG(pages[p] >= 0, "PagedKvCache::Append: token ", len, " of layer ", layer,
                 " falls in an evicted page (truncated below an evicted range)");
  }
  cudaStream_t stream = cudaStreamPerThread;
  if (need > have) {
    // New pages are committed to the host table only once the device table has them, so a
    // failed upload leaves both tables as they were (and the pages back in the pool).
    std::vector<int32_t> fresh_pages;
    RS_RETURN_IF_ERROR(pool_->Take(need - have, &fresh_pages));
    Status st = UploadTable(layer, have, fresh_pages);
    if (!st.ok()) {
      pool_->Give(fresh_pages.data(), static_cast<int64_t>(fresh_pages.size()));
      return st;
    }
    pages.insert(pages.end(), fresh_pages.begin(), fresh_pages.end());
  }
  const int64_t kv_row = int64_t{g.kv_heads} * g.head_dim;
  AppendKernel<<<Blocks(n * kv_row), kThreads, 0, stream>>>(k, v, n, kv_row, impl_->tables[layer],
                                                            g.page_size, len, pool_->k_pool(),
                                                            pool_->v_pool(), g.dtype);
  RS_RETURN_IF_ERROR(LaunchStatus("PagedKvCache::Append"));
  len_[layer] = len + n;
  return OkStatus();
}

namespace {

PagedKvView View(const KvPagePool& pool, const int32_t* table, int64_t length) {
  const KvPageGeometry& g = pool.geometry();
  PagedKvView view;
  view.k_pool = pool.k_pool();
  view.v_pool = pool.v_pool();
  view.pages = table;
  view.page_size = g.page_size;
  view.length = length;
  view.kv_heads = g.kv_heads;
  view.head_dim = g.head_dim;
  view.dtype = g.dtype;
  return view;
}

}  // namespace

Status PagedKvCache::Attend(int layer, const float* q, int n, int heads, float scale, float* o,
                            float* lse) {
  RS_CHECK_ARG(layer >= 0 && layer < layers(), "PagedKvCache::Attend: layer ", layer,
               " out of range [0, ", layers(), ")");
  RS_CHECK_ARG(n >= 0 && n <= len_[layer], "PagedKvCache::Attend: ", n, " queries but ",
               len_[layer], " tokens stored in layer ", layer);
  AttentionArgs a;
  a.q = q;
  a.n = n;
  a.heads = heads;
  a.scale = scale;
  a.causal = true;
  a.window = window_;
  a.o = o;
  a.lse = lse;
  return cuda::Attention(a, View(*pool_, impl_->tables[layer], len_[layer]), &impl_->workspace,
                         cudaStreamPerThread);
}

Status PagedKvCache::AttendRange(int layer, const float* q, int n, int heads, float scale,
                                 int64_t begin, int64_t end, float* o, float* lse) {
  RS_CHECK_ARG(layer >= 0 && layer < layers(), "PagedKvCache::AttendRange: layer ", layer,
               " out of range [0, ", layers(), ")");
  RS_CHECK_ARG(0 <= begin && begin <= end && end <= len_[layer], "PagedKvCache::AttendRange: [",
               begin, ", ", end, ") outside the ", len_[layer], " stored tokens");
  // Keys [begin, end) = the last end - begin keys of the first `end` tokens (a block view).
  AttentionArgs a;
  a.q = q;
  a.n = n;
  a.heads = heads;
  a.scale = scale;
  a.causal = false;
  a.window = end - begin;
  a.o = o;
  a.lse = lse;
  if (end == begin) a.window = 0;
  PagedKvView view = View(*pool_, impl_->tables[layer], end - (end == begin ? end : 0));
  return cuda::Attention(a, view, &impl_->workspace, cudaStreamPerThread);
}

Status PagedKvCache::Read(int layer, int64_t begin, int64_t end, float* k, float* v) const {
  RS_CHECK_ARG(layer >= 0 && layer < layers(), "PagedKvCache::Read: layer ", layer,
               " out of range [0, ", layers(), ")");
  RS_CHECK_ARG(0 <= begin && begin <= end && end <= len_[layer], "PagedKvCache::Read: [", begin,
               ", ", end, ") outside the ", len_[layer], " stored tokens");
  const int64_t n = end - begin;
  if (n == 0) return OkStatus();
  const KvPageGeometry& g = pool_->geometry();
  const int64_t kv_row = int64_t{g.kv_heads} * g.head_dim;
  const size_t bytes = static_cast<size_t>(n * kv_row) * sizeof(float);
  RS_ASSIGN_OR_RETURN(void* dk, impl_->gather_k.Get(bytes));
  RS_ASSIGN_OR_RETURN(void* dv, impl_->gather_v.Get(bytes));
  cudaStream_t stream = cudaStreamPerThread;
  GatherKernel<<<Blocks(n * kv_row), kThreads, 0, stream>>>(
      pool_->k_pool(), pool_->v_pool(), g.dtype, impl_->tables[layer], g.page_size, begin, n,
      kv_row, static_cast<float*>(dk), static_cast<float*>(dv));
  RS_RETURN_IF_ERROR(LaunchStatus("PagedKvCache::Read"));
  CUDA_CHECK(cudaMemcpyAsync(k, dk, bytes, cudaMemcpyDeviceToHost, stream));
  CUDA_CHECK(cudaMemcpyAsync(v, dv, bytes, cudaMemcpyDeviceToHost, stream));
  CUDA_CHECK(cudaStreamSynchronize(stream));
  return OkStatus();
}

void PagedKvCache::Truncate(int64_t n) {
  const int64_t P = pool_->geometry().page_size;
  for (int l = 0; l < layers(); ++l) {
    if (len_[l] <= n) continue;
    len_[l] = std::max<int64_t>(n, 0);
    std::vector<int32_t>& pages = pages_[l];
    const int64_t keep = CeilDiv(len_[l], P);
    if (static_cast<int64_t>(pages.size()) > keep) {
      // Kernels queued on this thread's stream may still read these pages: wait before reuse.
      cudaStreamSynchronize(cudaStreamPerThread);
      for (size_t p = static_cast<size_t>(keep); p < pages.size(); ++p) {
        if (pages[p] >= 0) pool_->Give(&pages[p], 1);
      }
      pages.resize(static_cast<size_t>(keep));
      // Pages appended past `keep` later are new: not covered by an earlier eviction.
      impl_->evicted_to[l] = std::min(impl_->evicted_to[l], keep);
      impl_->evicted_from[l] = std::min(impl_->evicted_from[l], impl_->evicted_to[l]);
    }
  }
}

void PagedKvCache::Evict(int64_t begin, int64_t end) {
  const int64_t P = pool_->geometry().page_size;
  const int64_t first = CeilDiv(std::max<int64_t>(begin, 0), P);  // first page wholly inside
  bool synced = false;
  for (int l = 0; l < layers(); ++l) {
    std::vector<int32_t>& pages = pages_[l];
    const int64_t last = std::min<int64_t>(std::min(end, len_[l]) / P,  // one past the last one
                                           static_cast<int64_t>(pages.size()));
    int64_t& from = impl_->evicted_from[l];
    int64_t& to = impl_->evicted_to[l];
    // Continue where the last eviction stopped when this range starts inside it.
    const bool continues = from <= first && first <= to;
    const int64_t start = continues ? std::max(first, to) : first;
    if (!continues) from = first;
    to = std::max(continues ? to : first, last);
    for (int64_t p = start; p < last; ++p) {
      if (pages[p] < 0) continue;
      if (!synced) {
        cudaStreamSynchronize(cudaStreamPerThread);  // queued kernels may still read them
        synced = true;
      }
      pool_->Give(&pages[p], 1);
      pages[p] = -1;
    }
  }
}

int64_t PagedKvCache::bytes() const {
  int64_t pages = 0;
  for (const std::vector<int32_t>& p : pages_) {
    pages += std::count_if(p.begin(), p.end(), [](int32_t id) { return id >= 0; });
  }
  return pages * pool_->geometry().page_bytes();
}

Status MergeDevicePartials(float* o_a, float* lse_a, const float* o_b, const float* lse_b,
                           int64_t rows, int d, float b_lse_factor) {
  return MergePartials(o_a, lse_a, o_b, lse_b, rows, d, b_lse_factor, cudaStreamPerThread);
}

}  // namespace ragserve::kernels::cuda
