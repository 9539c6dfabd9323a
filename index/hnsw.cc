#include "index/hnsw.h"

#include <hnswlib/hnswlib.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <string_view>
#include <unordered_set>

#include "index/internal/index_util.h"

namespace ragserve::index {

namespace {
std::unique_ptr<hnswlib::SpaceInterface<float>> MakeSpace(int dim, Metric metric) {
  if (metric == Metric::kL2) return std::make_unique<hnswlib::L2Space>(dim);
  return std::make_unique<hnswlib::InnerProductSpace>(dim);
}
// hnswlib's inner-product distance is 1 - q.x; ragserve reports q.x (larger is better).
inline float ToScore(Metric metric, float d) { return metric == Metric::kL2 ? d : 1.0f - d; }

// hnswlib 0.6.2's loader trusts its file: sizes become allocations and neighbour ids become
// offsets. Before it sees a payload, this walks the same layout (saveIndex: a fixed header, the
// level-0 block of every element, then each element's upper link lists) and checks every size,
// count and id, so a malformed or crafted file gives DataLoss instead of a wild read. On success
// `elements` holds the element count.
Status ValidateHnswlibPayload(std::string_view body, int dim, const HnswParams& p,
                              size_t* elements) {
  using tableint = hnswlib::tableint;
  internal::Reader r(body);
  size_t offset_level0 = 0, max_elements = 0, count = 0, size_data = 0, label_offset = 0,
         offset_data = 0, max_m = 0, max_m0 = 0, m = 0, ef_construction = 0;
  int max_level = 0;
  tableint entry = 0;
  double mult = 0;
  if (!r.Get(&offset_level0) || !r.Get(&max_elements) || !r.Get(&count) || !r.Get(&size_data) ||
      !r.Get(&label_offset) || !r.Get(&offset_data) || !r.Get(&max_level) || !r.Get(&entry) ||
      !r.Get(&max_m) || !r.Get(&max_m0) || !r.Get(&m) || !r.Get(&mult) ||
      !r.Get(&ef_construction)) {
    return DataLoss("hnswlib header is truncated");
  }
  const size_t links0 = max_m0 * sizeof(tableint) + sizeof(hnswlib::linklistsizeint);
  const size_t data_size = static_cast<size_t>(dim) * sizeof(float);
  if (m != static_cast<size_t>(p.M) || max_m != m || max_m0 != 2 * m || offset_level0 != 0 ||
      offset_data != links0 || label_offset != links0 + data_size ||
      size_data != links0 + data_size + sizeof(hnswlib::labeltype) ||
      // mult_ scales every new element's random level (and so its link-list allocation):
      // hnswlib derives it from M, and so must the file.
      !(std::abs(mult - 1.0 / std::log(static_cast<double>(m))) <= 1e-9 * mult) ||
      ef_construction == 0 || count > max_elements) {
    return DataLoss("hnswlib header does not match the index parameters");
  }
  if (count == 0 ? (max_level != -1 || entry != static_cast<tableint>(-1))
                 : (max_level < 0 || max_level > 64 || entry >= count)) {
    return DataLoss(StrCat("hnswlib header has a bad entry point ", entry, " / top level ",
                           max_level, " for ", count, " elements"));
  }
  const char* level0 = count > r.remaining() / size_data ? nullptr : r.Skip(count * size_data);
  if (level0 == nullptr) return DataLoss("hnswlib level-0 block is truncated");
  // Pass 1: every element's upper link lists -> its level.
  const size_t links = max_m * sizeof(tableint) + sizeof(hnswlib::linklistsizeint);
  std::vector<int> level(count, 0);
  std::vector<const char*> upper(count, nullptr);
  for (size_t i = 0; i < count; ++i) {
    uint32_t bytes = 0;
    if (!r.Get(&bytes)) return DataLoss("hnswlib link lists are truncated");
    upper[i] = r.Skip(bytes);
    if (bytes % links != 0 || bytes / links > static_cast<uint32_t>(max_level) ||
        upper[i] == nullptr) {
      return DataLoss(StrCat("hnswlib element ", i, " has a bad link-list size ", bytes));
    }
    level[i] = static_cast<int>(bytes / links);
  }
  if (r.remaining() != 0) return DataLoss("hnswlib payload has trailing bytes");
  if (count > 0 && level[entry] != max_level) {
    return DataLoss("hnswlib entry point is not on the top level");
  }
  // Pass 2: every list's count fits and every neighbour exists on that level; labels unique.
  auto check_list = [&](const char* list, size_t cap, int lvl, size_t i) -> Status {
    uint16_t n = 0;
    std::memcpy(&n, list, sizeof(n));
    if (n > cap) return DataLoss(StrCat("hnswlib element ", i, " lists ", n, " neighbours"));
    for (uint16_t j = 0; j < n; ++j) {
      tableint nb = 0;
      std::memcpy(&nb, list + sizeof(hnswlib::linklistsizeint) + j * sizeof(tableint), sizeof(nb));
      if (nb >= count || level[nb] < lvl) {
        return DataLoss(
            StrCat("hnswlib element ", i, " links to a bad neighbour ", nb, " on level ", lvl));
      }
    }
    return OkStatus();
  };
  std::unordered_set<hnswlib::labeltype> labels;
  labels.reserve(count);
  for (size_t i = 0; i < count; ++i) {
    const char* el = level0 + i * size_data;
    if (static_cast<uint8_t>(el[2]) > 1) return DataLoss("hnswlib element has a bad flag byte");
    RS_RETURN_IF_ERROR(check_list(el, max_m0, 0, i));
    for (int l = 1; l <= level[i]; ++l) {
      RS_RETURN_IF_ERROR(check_list(upper[i] + (l - 1) * links, max_m, l, i));
    }
    hnswlib::labeltype label = 0;
    std::memcpy(&label, el + label_offset, sizeof(label));
    if (!labels.insert(label).second) return DataLoss(StrCat("hnswlib label ", label, " repeats"));
  }
  *elements = count;
  return OkStatus();
}
}  // namespace

Status ValidateHnswParams(const HnswParams& p) {
  RS_CHECK_ARG(p.M >= 2 && p.M <= 2048, "hnsw: M must be in [2, 2048], got ", p.M);
  RS_CHECK_ARG(p.ef_construction >= 1, "hnsw: ef_construction must be >= 1, got ",
               p.ef_construction);
  RS_CHECK_ARG(p.ef_search >= 1, "hnsw: ef_search must be >= 1, got ", p.ef_search);
  RS_CHECK_ARG(p.initial_capacity >= 1, "hnsw: initial_capacity must be >= 1, got ",
               p.initial_capacity);
  return OkStatus();
}

HnswIndex::HnswIndex(int dim, Metric metric, const HnswParams& params)
    : dim_(dim), metric_(metric), params_(params), space_(MakeSpace(dim, metric)) {}

HnswIndex::~HnswIndex() = default;

StatusOr<std::unique_ptr<HnswIndex>> HnswIndex::Create(int dim, Metric metric,
                                                       const HnswParams& params) {
  RS_CHECK_ARG(dim >= 1, "hnsw: dim must be >= 1, got ", dim);
  RS_RETURN_IF_ERROR(ValidateHnswParams(params));
  auto index = std::unique_ptr<HnswIndex>(new HnswIndex(dim, metric, params));
  try {
    index->hnsw_ = std::make_unique<hnswlib::HierarchicalNSW<float>>(
        index->space_.get(), params.initial_capacity, params.M, params.ef_construction,
        params.seed);
  } catch (const std::exception& e) {
    return ResourceExhausted(
        StrCat("hnsw: cannot allocate ", params.initial_capacity, " slots: ", e.what()));
  }
  // searchKnn uses max(ef_, k): we pass k = max(ef_search, k) per call, so keep ef_ minimal.
  index->hnsw_->setEf(1);
  return index;
}

int64_t HnswIndex::size() const {
  std::shared_lock lock(mu_);
  return live_;
}

int64_t HnswIndex::capacity() const {
  std::shared_lock lock(mu_);
  return static_cast<int64_t>(hnsw_->max_elements_);
}

size_t HnswIndex::memory_bytes() const {
  std::shared_lock lock(mu_);
  size_t bytes = hnsw_->max_elements_ * (hnsw_->size_data_per_element_ + sizeof(void*) + 64);
  for (size_t i = 0; i < hnsw_->cur_element_count; ++i) {
    bytes += hnsw_->element_levels_[i] * hnsw_->size_links_per_element_;
  }
  return bytes;
}

Status HnswIndex::add(int64_t n, const float* x, const int64_t* ids) {
  RS_RETURN_IF_ERROR(internal::CheckAddArgs(n, x, ids, dim_));
  std::vector<float> normalized;
  if (metric_ == Metric::kCosine) {
    normalized = internal::NormalizedCopy(n, dim_, x);
    x = normalized.data();
  }
  const std::vector<int64_t> order = internal::LastOccurrences(n, ids);
  std::unique_lock lock(mu_);
  int64_t fresh = 0, revived = 0;
  for (int64_t i : order) {
    auto it = hnsw_->label_lookup_.find(static_cast<hnswlib::labeltype>(ids[i]));
    if (it == hnsw_->label_lookup_.end()) {
      ++fresh;
    } else if (hnsw_->isMarkedDeleted(it->second)) {
      ++revived;
    }
  }
  const size_t needed = hnsw_->cur_element_count + fresh;
  if (needed > hnsw_->max_elements_) {
    size_t cap = std::max<size_t>(hnsw_->max_elements_, 1);
    while (cap < needed) cap *= 2;
    try {
      hnsw_->resizeIndex(cap);
    } catch (const std::exception& e) {
      return ResourceExhausted(StrCat("hnsw: cannot grow to ", cap, " slots: ", e.what()));
    }
  }
  std::atomic<bool> failed{false};
  std::string error;
  std::mutex error_mu;
  const int64_t m = static_cast<int64_t>(order.size());
  // Distinct labels may be inserted concurrently (hnswlib locks per node).
#pragma omp parallel for schedule(dynamic, 16) if (m >= 256)
  for (int64_t j = 0; j < m; ++j) {
    if (failed.load(std::memory_order_relaxed)) continue;
    const int64_t i = order[j];
    try {
      hnsw_->addPoint(x + i * dim_, static_cast<hnswlib::labeltype>(ids[i]));
    } catch (const std::exception& e) {
      std::lock_guard g(error_mu);
      failed = true;
      error = e.what();
    }
  }
  if (failed) return Internal(StrCat("hnsw: insert failed: ", error));
  live_ += fresh + revived;
  return OkStatus();
}

void HnswIndex::SearchOne(const float* q, size_t kk,
                          std::vector<std::pair<float, int64_t>>* out) const {
  auto result = hnsw_->searchKnn(q, kk);  // max-heap on distance: worst first
  out->resize(result.size());
  for (size_t j = result.size(); j-- > 0;) {
    (*out)[j] = {ToScore(metric_, result.top().first), static_cast<int64_t>(result.top().second)};
    result.pop();
  }
}

Status HnswIndex::search(int64_t n, const float* q, int k, float* distances, int64_t* ids,
                         const SearchParams& params) const {
  RS_RETURN_IF_ERROR(internal::CheckSearchArgs(n, q, k, distances, ids, dim_));
  RS_CHECK_ARG(params.ef_search >= 0, "hnsw: ef_search must be >= 0, got ", params.ef_search);
  std::vector<float> normalized;
  if (metric_ == Metric::kCosine) {
    normalized = internal::NormalizedCopy(n, dim_, q);
    q = normalized.data();
  }
  const size_t ef = params.ef_search > 0 ? params.ef_search : params_.ef_search;
  std::shared_lock lock(mu_);
  const size_t total = static_cast<size_t>(live_);
  std::atomic<bool> failed{false};
  std::string error;
  std::mutex error_mu;
  auto one = [&](int64_t i) {
    float* drow = distances + i * k;
    int64_t* irow = ids + i * k;
    internal::PadRow(metric_, k, drow, irow);
    if (total == 0 || failed.load(std::memory_order_relaxed)) return;
    try {
      size_t kk = std::max<size_t>(ef, k);
      if (params.filter == nullptr) {
        auto result = hnsw_->searchKnn(q + i * dim_, kk);  // max-heap on distance: worst first
        while (result.size() > static_cast<size_t>(k)) result.pop();
        for (size_t j = result.size(); j-- > 0; result.pop()) {
          drow[j] = ToScore(metric_, result.top().first);
          irow[j] = static_cast<int64_t>(result.top().second);
        }
        return;
      }
      // Over-fetch and widen until k hits pass the filter or every live vector was seen.
      std::vector<std::pair<float, int64_t>> hits;
      while (true) {
        SearchOne(q + i * dim_, kk, &hits);
        int got = 0;
        for (const auto& h : hits) {
          if (got < k && (*params.filter)(h.second)) {
            drow[got] = h.first;
            irow[got] = h.second;
            ++got;
          }
        }
        if (got >= k || hits.size() < kk || kk >= total) break;
        kk = std::min(total, kk * 4);
      }
    } catch (const std::exception& e) {
      std::lock_guard g(error_mu);
      failed = true;
      error = e.what();
    }
  };
  // Entering an OpenMP region costs microseconds: single queries (the gRPC path) run inline.
  if (n < 16) {
    for (int64_t i = 0; i < n; ++i) one(i);
  } else {
#pragma omp parallel for schedule(dynamic, 4)
    for (int64_t i = 0; i < n; ++i) one(i);
  }
  if (failed) return Internal(StrCat("hnsw: search failed: ", error));
  return OkStatus();
}

StatusOr<int64_t> HnswIndex::remove(int64_t n, const int64_t* ids) {
  RS_CHECK_ARG(n >= 0 && (n == 0 || ids != nullptr), "remove: bad batch (n=", n, ")");
  std::unique_lock lock(mu_);
  int64_t removed = 0;
  for (int64_t i = 0; i < n; ++i) {
    auto it = hnsw_->label_lookup_.find(static_cast<hnswlib::labeltype>(ids[i]));
    if (it == hnsw_->label_lookup_.end() || hnsw_->isMarkedDeleted(it->second)) continue;
    hnsw_->markDeletedInternal(it->second);
    ++removed;
  }
  live_ -= removed;
  return removed;
}

Status HnswIndex::save(const std::string& path) const {
  const std::string tmp = path + ".hnswlib.tmp";
  std::string payload;
  {
    std::shared_lock lock(mu_);
    internal::Put<int32_t>(&payload, params_.M);
    internal::Put<int32_t>(&payload, params_.ef_construction);
    internal::Put<int32_t>(&payload, params_.ef_search);
    internal::Put<int64_t>(&payload, live_);
    try {
      hnsw_->saveIndex(tmp);
    } catch (const std::exception& e) {
      return Internal(StrCat("hnsw: saving ", tmp, " failed: ", e.what()));
    }
  }
  std::ifstream in(tmp, std::ios::binary);
  payload.append(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  in.close();
  std::error_code ec;
  std::filesystem::remove(tmp, ec);
  return internal::WriteIndexFile(path, {internal::kHnswCode, metric_, dim_}, payload);
}

StatusOr<std::unique_ptr<HnswIndex>> HnswIndex::Load(const std::string& path) {
  internal::FileHeader h;
  std::string payload;
  RS_RETURN_IF_ERROR(internal::ReadIndexFile(path, &h, &payload));
  if (h.kind_code != internal::kHnswCode) {
    return InvalidArgument(
        StrCat("index file ", path, " is not an hnsw index (kind code ", h.kind_code, ")"));
  }
  internal::Reader r(payload);
  HnswParams p;
  int64_t live = 0;
  if (!r.Get(&p.M) || !r.Get(&p.ef_construction) || !r.Get(&p.ef_search) || !r.Get(&live) ||
      !ValidateHnswParams(p).ok()) {
    return DataLoss(StrCat("hnsw index file ", path, " has a bad parameter block"));
  }
  const std::string_view body = r.rest();
  size_t elements = 0;
  if (Status st = ValidateHnswlibPayload(body, h.dim, p, &elements); !st.ok()) {
    return DataLoss(StrCat("hnsw index file ", path, ": ", st.message()));
  }
  const std::string tmp = path + ".hnswlib.load.tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out.write(body.data(), body.size());
    if (!out) return Internal(StrCat("hnsw: cannot write temp file ", tmp));
  }
  auto index = std::unique_ptr<HnswIndex>(new HnswIndex(h.dim, h.metric, p));
  Status st;
  try {
    // Capacity = the element count (the file's own max_elements is not trusted); add() grows it.
    index->hnsw_ = std::make_unique<hnswlib::HierarchicalNSW<float>>(
        index->space_.get(), tmp, false, std::max<size_t>(elements, 1));
    index->hnsw_->setEf(1);
  } catch (const std::exception& e) {
    st = DataLoss(StrCat("hnsw index file ", path, " could not be loaded: ", e.what()));
  }
  std::error_code ec;
  std::filesystem::remove(tmp, ec);
  RS_RETURN_IF_ERROR(st);
  // hnswlib 0.6.2's loading constructor counts deletions into an uninitialized num_deleted_:
  // recount them here.
  index->hnsw_->num_deleted_ = 0;
  for (size_t i = 0; i < index->hnsw_->cur_element_count; ++i) {
    if (index->hnsw_->isMarkedDeleted(static_cast<hnswlib::tableint>(i))) {
      ++index->hnsw_->num_deleted_;
    }
  }
  const int64_t expect = static_cast<int64_t>(index->hnsw_->cur_element_count) -
                         static_cast<int64_t>(index->hnsw_->num_deleted_);
  if (expect != live || index->hnsw_->data_size_ != h.dim * sizeof(float)) {
    return DataLoss(StrCat("hnsw index file ", path, " is inconsistent (", expect,
                           " live vectors, header says ", live, ")"));
  }
  index->live_ = live;
  return index;
}

}  // namespace ragserve::index
