#include "index/key_hnsw.h"

// hnswlib 0.6.2 defines non-inline globals in its headers (cpuid(), the SIMD dispatch
// pointers), so a second translation unit including it (index/hnsw.cc does) makes any binary
// linking both fail with multiple definitions. Its standard headers come first (include guards
// keep them out of the namespace below), then hnswlib itself inside a private namespace.
#include <assert.h>
#include <cpuid.h>
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <x86intrin.h>

#include <algorithm>
#include <atomic>
#include <cassert>
#include <deque>
#include <fstream>
#include <iostream>
#include <list>
#include <mutex>
#include <queue>
#include <random>
#include <stdexcept>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace ragserve_key_hnswlib {
#include <hnswlib/hnswlib.h>  // NOLINT(build/include_order)
}  // namespace ragserve_key_hnswlib
namespace hnswlib = ragserve_key_hnswlib::hnswlib;

#include <atomic>
#include <filesystem>
#include <limits>
#include <unordered_set>

#include "index/key_util.h"

namespace ragserve::index {
namespace {

thread_local int64_t t_dist_count = 0;

float CountingIpDistance(const void* a, const void* b, const void* param) {
  ++t_dist_count;
  const int d = static_cast<int>(*static_cast<const size_t*>(param));
  return 1.0f - key_internal::Dot(static_cast<const float*>(a), static_cast<const float*>(b), d);
}

// Inner-product space (distance 1 - q.x, as hnswlib's InnerProductSpace) that counts calls.
class CountingIpSpace : public hnswlib::SpaceInterface<float> {
 public:
  explicit CountingIpSpace(size_t dim) : dim_(dim) {}
  size_t get_data_size() override { return dim_ * sizeof(float); }
  hnswlib::DISTFUNC<float> get_dist_func() override { return CountingIpDistance; }
  void* get_dist_func_param() override { return &dim_; }

 private:
  size_t dim_;
};

}  // namespace

struct KeyHnswIndex::Impl {
  explicit Impl(int dim) : space(dim) {}
  CountingIpSpace space;
  std::unique_ptr<hnswlib::HierarchicalNSW<float>> hnsw;
  std::unordered_set<int64_t> live;
};

KeyHnswIndex::KeyHnswIndex(int dim, const KeyHnswParams& p)
    : dim_(dim), params_(p), impl_(std::make_unique<Impl>(dim)) {
  impl_->hnsw = std::make_unique<hnswlib::HierarchicalNSW<float>>(
      &impl_->space, static_cast<size_t>(std::max<int64_t>(16, p.initial_capacity)), p.m,
      p.ef_construction, p.seed);
}
KeyHnswIndex::~KeyHnswIndex() = default;

StatusOr<std::unique_ptr<KeyHnswIndex>> KeyHnswIndex::Create(int dim, const KeyHnswParams& p) {
  RS_CHECK_ARG(dim >= 1, "dim must be >= 1, got ", dim);
  RS_CHECK_ARG(p.m >= 2, "m must be >= 2, got ", p.m);
  RS_CHECK_ARG(p.ef_construction >= 1, "ef_construction must be >= 1, got ", p.ef_construction);
  RS_CHECK_ARG(p.ef_search >= 1, "ef_search must be >= 1, got ", p.ef_search);
  return std::unique_ptr<KeyHnswIndex>(new KeyHnswIndex(dim, p));
}

int64_t KeyHnswIndex::memory_bytes() const {
  std::shared_lock lock(mu_);
  const auto& h = *impl_->hnsw;
  // Level-0 block (vector + links + label per element), per-element pointers, upper levels,
  // and the live-id set (~32 bytes per entry).
  size_t bytes = h.max_elements_ * (h.size_data_per_element_ + sizeof(void*));
  for (size_t i = 0; i < h.cur_element_count; ++i) {
    bytes += h.element_levels_[i] * h.size_links_per_element_;
  }
  return static_cast<int64_t>(bytes + impl_->live.size() * 32);
}

int64_t KeyHnswIndex::size() const {
  std::shared_lock lock(mu_);
  return static_cast<int64_t>(impl_->live.size());
}

Status KeyHnswIndex::add(int64_t n, const float* x, const int64_t* ids) {
  RS_CHECK_ARG(n >= 0, "n must be >= 0, got ", n);
  if (n == 0) return OkStatus();
  RS_CHECK_ARG(x != nullptr && ids != nullptr, "null vectors or ids");
  RS_RETURN_IF_ERROR(CheckFinite(x, n * dim_, "key"));
  for (int64_t i = 0; i < n; ++i) RS_CHECK_ARG(ids[i] >= 0, "id must be >= 0, got ", ids[i]);
  std::unique_lock lock(mu_);
  auto& h = *impl_->hnsw;
  try {
    const size_t need = h.cur_element_count + static_cast<size_t>(n);
    if (need > h.max_elements_) h.resizeIndex(std::max(need, 2 * h.max_elements_));
    std::atomic<bool> failed{false};
#pragma omp parallel for schedule(dynamic, 64)
    for (int64_t i = 0; i < n; ++i) {
      try {
        h.addPoint(x + i * dim_, static_cast<hnswlib::labeltype>(ids[i]));
      } catch (const std::exception&) {
        failed = true;
      }
    }
    if (failed) return Internal("hnswlib addPoint failed");
  } catch (const std::exception& e) {
    return Internal(StrCat("hnswlib: ", e.what()));
  }
  for (int64_t i = 0; i < n; ++i) impl_->live.insert(ids[i]);
  return OkStatus();
}

Status KeyHnswIndex::SearchWithStats(int64_t n, const float* q, int k, float* distances,
                                     int64_t* ids, const SearchParams& params,
                                     KeySearchStats* stats) const {
  RS_RETURN_IF_ERROR(CheckSearchArgs(n, q, k, dim_, distances, ids));
  std::shared_lock lock(mu_);
  std::lock_guard slock(search_mu_);
  auto& h = *impl_->hnsw;
  const int ef = std::max(k, params.ef_search > 0 ? params.ef_search : params_.ef_search);
  h.setEf(static_cast<size_t>(ef));
  const int64_t before = t_dist_count;
  // hnswlib 0.6.2 has no filter: over-fetch the whole beam and filter afterwards.
  const size_t fetch = params.filter != nullptr ? static_cast<size_t>(ef) : static_cast<size_t>(k);
  for (int64_t i = 0; i < n; ++i) {
    std::vector<std::pair<float, int64_t>> res;
    if (!impl_->live.empty()) {
      auto pq = h.searchKnn(q + i * dim_, fetch);
      while (!pq.empty()) {
        res.emplace_back(pq.top().first, static_cast<int64_t>(pq.top().second));
        pq.pop();
      }
    }
    std::reverse(res.begin(), res.end());  // best (smallest 1 - q.x) first
    int j = 0;
    for (const auto& [dist, id] : res) {
      if (j == k) break;
      if (params.filter != nullptr && !(*params.filter)(id)) continue;
      distances[i * k + j] = 1.0f - dist;
      ids[i * k + j] = id;
      ++j;
    }
    for (; j < k; ++j) {
      distances[i * k + j] = -std::numeric_limits<float>::infinity();
      ids[i * k + j] = -1;
    }
  }
  if (stats != nullptr) stats->keys_scored += t_dist_count - before;
  return OkStatus();
}

StatusOr<int64_t> KeyHnswIndex::remove(int64_t n, const int64_t* ids) {
  RS_CHECK_ARG(n >= 0, "n must be >= 0, got ", n);
  std::unique_lock lock(mu_);
  int64_t removed = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (impl_->live.erase(ids[i]) == 0) continue;
    try {
      impl_->hnsw->markDelete(static_cast<hnswlib::labeltype>(ids[i]));
    } catch (const std::exception& e) {
      return Internal(StrCat("hnswlib markDelete(", ids[i], "): ", e.what()));
    }
    ++removed;
  }
  return removed;
}

Status KeyHnswIndex::save(const std::string& path) const {
  std::shared_lock lock(mu_);
  const std::string tmp = path + ".tmp";
  try {
    impl_->hnsw->saveIndex(tmp);
  } catch (const std::exception& e) {
    return Internal(StrCat("hnswlib saveIndex('", tmp, "'): ", e.what()));
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) return Internal(StrCat("rename '", tmp, "' -> '", path, "': ", ec.message()));
  return OkStatus();
}

}  // namespace ragserve::index
