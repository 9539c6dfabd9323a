#include "index/hnsw.h"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <mutex>

#include "index/internal/hnsw_graph.h"
#include "index/internal/index_file.h"
#include "index/internal/index_util.h"

namespace ragserve::index {

using internal::HnswGraph;

namespace {

// Bit 0 of the flags word of the format-1 payload.
constexpr uint32_t kCountScoredFlag = 1;

HnswGraph::Options GraphOptions(int dim, Metric metric, const HnswParams& p) {
  return {.dim = dim,
          .space = metric == Metric::kL2 ? HnswGraph::Space::kL2 : HnswGraph::Space::kInnerProduct,
          .M = p.M,
          .ef_construction = p.ef_construction,
          .seed = p.seed,
          .count_distances = p.count_scored};
}

// hnswlib's inner-product distance is 1 - q.x; ragserve reports q.x (larger is better).
inline float ToScore(Metric metric, float d) { return metric == Metric::kL2 ? d : 1.0f - d; }

// Runs one(i) for i in [0, n): inline below parallel_from (entering an OpenMP region costs
// microseconds; single queries are the gRPC path), else on an OpenMP team in chunks of `chunk`.
// The first exception stops the remaining calls and is returned as
// Internal("hnsw: <what> failed: ...").
template <typename F>
Status ParallelFor(int64_t n, int64_t parallel_from, int chunk, const char* what, F&& one) {
  std::atomic<bool> failed{false};
  std::string error;
  std::mutex error_mu;
  auto guarded = [&](int64_t i) {
    if (failed.load(std::memory_order_relaxed)) return;
    try {
      one(i);
    } catch (const std::exception& e) {
      std::lock_guard g(error_mu);
      failed = true;
      error = e.what();
    }
  };
  if (n < parallel_from) {
    for (int64_t i = 0; i < n; ++i) guarded(i);
  } else {
#pragma omp parallel for schedule(dynamic, chunk)
    for (int64_t i = 0; i < n; ++i) guarded(i);
  }
  if (failed) return Internal(StrCat("hnsw: ", what, " failed: ", error));
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
    : dim_(dim), metric_(metric), params_(params) {}

HnswIndex::~HnswIndex() = default;

StatusOr<std::unique_ptr<HnswIndex>> HnswIndex::Create(int dim, Metric metric,
                                                       const HnswParams& params) {
  RS_CHECK_ARG(dim >= 1, "hnsw: dim must be >= 1, got ", dim);
  RS_RETURN_IF_ERROR(ValidateHnswParams(params));
  auto index = std::unique_ptr<HnswIndex>(new HnswIndex(dim, metric, params));
  try {
    WriterMutexLock lock(index->mu_);  // not shared yet; held so that the analysis checks this
    index->graph_ = std::make_unique<HnswGraph>(GraphOptions(dim, metric, params),
                                                static_cast<size_t>(params.initial_capacity));
  } catch (const std::exception& e) {
    return ResourceExhausted(
        StrCat("hnsw: cannot allocate ", params.initial_capacity, " slots: ", e.what()));
  }
  return index;
}

int64_t HnswIndex::size() const {
  ReaderMutexLock lock(mu_);
  return live_;
}

int64_t HnswIndex::capacity() const {
  ReaderMutexLock lock(mu_);
  return static_cast<int64_t>(graph_->capacity());
}

int64_t HnswIndex::memory_bytes() const {
  ReaderMutexLock lock(mu_);
  return graph_->memory_bytes();
}

int64_t HnswIndex::memory_bytes_to_add(int64_t n) const {
  ReaderMutexLock lock(mu_);
  // add() puts new labels into deleted elements' slots first: at most n - deleted new elements.
  n -= std::min<int64_t>(n, static_cast<int64_t>(graph_->deleted()));
  if (n <= 0) return 0;
  const uint64_t needed = uint64_t{graph_->used()} + static_cast<uint64_t>(n);
  const uint64_t cap = std::max<uint64_t>(graph_->capacity(), 1);
  uint64_t new_cap = cap;
  while (new_cap < needed) new_cap *= 2;  // Reserve's doubling; needed < 2^63, so no overflow
  // Upper levels: each element has level >= l with probability M^-l, so n elements hold
  // n / (M - 1) of them on average; the bound adds 4 standard deviations and 8 levels, so that a
  // small batch whose few elements draw high levels stays under it too.
  const double mean = static_cast<double>(n) / std::max(1, params_.M - 1);
  const double levels = std::ceil(mean + 4 * std::sqrt(mean) + 8);
  const double upper = levels * static_cast<double>(graph_->upper_level_bytes());
  int64_t slots = 0, bytes = 0;
  if (upper >= 0x1p62 ||
      __builtin_mul_overflow(static_cast<int64_t>(new_cap - graph_->capacity()),
                             graph_->slot_bytes(), &slots) ||
      __builtin_add_overflow(slots, static_cast<int64_t>(upper), &bytes)) {
    return INT64_MAX;
  }
  return bytes;
}

Status HnswIndex::Reserve(int64_t fresh) {
  const size_t needed = graph_->used() + fresh;
  if (needed <= graph_->capacity()) return OkStatus();
  size_t cap = std::max<size_t>(graph_->capacity(), 1);
  while (cap < needed) cap *= 2;
  try {
    graph_->Resize(cap);
  } catch (const std::exception& e) {
    return ResourceExhausted(StrCat("hnsw: cannot grow to ", cap, " slots: ", e.what()));
  }
  return OkStatus();
}

Status HnswIndex::add(int64_t n, const float* x, const int64_t* ids) {
  RS_RETURN_IF_ERROR(internal::CheckAddArgs(n, x, ids, dim_));
  if (n == 0) return OkStatus();
  std::vector<float> normalized;
  x = internal::MetricInput(metric_, n, dim_, x, &normalized);
  const std::vector<int64_t> order = internal::LastOccurrences(n, ids);
  WriterMutexLock lock(mu_);
  std::vector<int64_t> present, fresh;  // rows of labels in the graph (live or deleted), new ones
  int64_t revived = 0;
  for (int64_t i : order) {
    const HnswGraph::Label l = graph_->Find(ids[i]);
    (l == HnswGraph::Label::kAbsent ? fresh : present).push_back(i);
    revived += l == HnswGraph::Label::kDeleted ? 1 : 0;
  }
  // New labels take the slots of deleted elements first: hnswlib 0.6.2 inserts a new element
  // safely only into a graph without deleted ones (HnswGraph::Insert), so a new slot is used
  // only once none is left.
  const int64_t reusable = static_cast<int64_t>(graph_->deleted()) - revived;
  const int64_t reused = std::min<int64_t>(static_cast<int64_t>(fresh.size()), reusable);
  RS_RETURN_IF_ERROR(Reserve(static_cast<int64_t>(fresh.size()) - reused));
  // Distinct labels may be inserted concurrently (hnswlib locks per node).
  HnswGraph* graph = graph_.get();  // the insert lambdas run under this lock
  RS_RETURN_IF_ERROR(
      ParallelFor(static_cast<int64_t>(present.size()), 256, 16, "update",
                  [&](int64_t j) { graph->Replace(x + present[j] * dim_, ids[present[j]]); }));
  const std::vector<int64_t> slots = graph_->DeletedSlots(static_cast<size_t>(reused));
  if (static_cast<int64_t>(slots.size()) != reused) {
    return Internal(StrCat("hnsw: ", reused, " deleted slots expected, found ", slots.size()));
  }
  RS_RETURN_IF_ERROR(ParallelFor(reused, 256, 16, "reuse", [&](int64_t j) {
    graph->Reuse(slots[j], x + fresh[j] * dim_, ids[fresh[j]]);
  }));
  const int64_t added = static_cast<int64_t>(fresh.size()) - reused;
  if (added > 0 && graph_->deleted() != 0) {
    return Internal(StrCat("hnsw: ", graph_->deleted(), " deleted elements left before inserting"));
  }
  RS_RETURN_IF_ERROR(ParallelFor(added, 256, 16, "insert", [&](int64_t j) {
    graph->Insert(x + fresh[reused + j] * dim_, ids[fresh[reused + j]]);
  }));
  live_ += static_cast<int64_t>(fresh.size()) + revived;
  return OkStatus();
}

void HnswIndex::SearchOne(const float* q, int k, size_t ef,
                          const std::function<bool(int64_t)>* filter, float* distances,
                          int64_t* ids, int64_t* scored) const {
  internal::PadRow(metric_, k, distances, ids);
  const size_t total = static_cast<size_t>(live_);
  if (total == 0) return;
  std::vector<std::pair<float, int64_t>> hits;
  size_t kk = std::max<size_t>(ef, k);
  if (filter == nullptr) {
    graph_->Search(q, k, kk, &hits, scored);
    for (size_t j = 0; j < hits.size(); ++j) {
      distances[j] = ToScore(metric_, hits[j].first);
      ids[j] = hits[j].second;
    }
    return;
  }
  // Over-fetch and widen until k hits pass the filter or every live vector was seen.
  while (true) {
    graph_->Search(q, kk, kk, &hits, scored);
    int got = 0;
    for (const auto& [dist, id] : hits) {
      if (got < k && (*filter)(id)) {
        distances[got] = ToScore(metric_, dist);
        ids[got] = id;
        ++got;
      }
    }
    if (got >= k || hits.size() < kk || kk >= total) break;
    kk = std::min(total, kk * 4);
  }
}

Status HnswIndex::search(int64_t n, const float* q, int k, float* distances, int64_t* ids,
                         const SearchParams& params) const {
  RS_RETURN_IF_ERROR(internal::CheckSearchArgs(n, q, k, distances, ids, dim_));
  RS_CHECK_ARG(params.ef_search >= 0, "hnsw: ef_search must be >= 0, got ", params.ef_search);
  if (n == 0) return OkStatus();
  std::vector<float> normalized;
  q = internal::MetricInput(metric_, n, dim_, q, &normalized);
  const size_t ef = params.ef_search > 0 ? params.ef_search : params_.ef_search;
  std::atomic<int64_t> scored{0};
  ReaderMutexLock lock(mu_);
  // The lambda runs under this shared lock on OpenMP threads; the analysis cannot see a lock
  // held across ParallelFor's calls, so it is exempt.
  RS_RETURN_IF_ERROR(ParallelFor(n, 16, 4, "search", [&](int64_t i) ABSL_NO_THREAD_SAFETY_ANALYSIS {
    int64_t s = 0;
    SearchOne(q + i * dim_, k, ef, params.filter, distances + i * k, ids + i * k, &s);
    scored.fetch_add(s, std::memory_order_relaxed);
  }));
  if (params.stats != nullptr) params.stats->scored += scored.load();
  return OkStatus();
}

StatusOr<int64_t> HnswIndex::remove(int64_t n, const int64_t* ids) {
  RS_RETURN_IF_ERROR(internal::CheckRemoveArgs(n, ids));
  WriterMutexLock lock(mu_);
  int64_t removed = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (graph_->Find(ids[i]) != HnswGraph::Label::kLive) continue;
    try {
      graph_->MarkDeleted(ids[i]);
    } catch (const std::exception& e) {
      live_ -= removed;
      return Internal(StrCat("hnsw: removing ", ids[i], " failed: ", e.what()));
    }
    ++removed;
  }
  live_ -= removed;
  return removed;
}

// Payload: i32 M | i32 ef_construction | i32 ef_search | i64 live | u32 flags (format >= 1) |
// hnswlib's saveIndex body.
Status HnswIndex::save(const std::string& path) const {
  std::string payload;
  {
    ReaderMutexLock lock(mu_);
    internal::Put<int32_t>(&payload, params_.M);
    internal::Put<int32_t>(&payload, params_.ef_construction);
    internal::Put<int32_t>(&payload, params_.ef_search);
    internal::Put<int64_t>(&payload, live_);
    internal::Put<uint32_t>(&payload, params_.count_scored ? kCountScoredFlag : 0);
    RS_ASSIGN_OR_RETURN(std::string body, graph_->Save(path + ".hnswlib.tmp"));
    payload += body;
  }
  return internal::WriteIndexFile(path, {internal::kHnswCode, metric_, dim_}, payload);
}

StatusOr<std::unique_ptr<HnswIndex>> HnswIndex::Load(const std::string& path) {
  const auto file = internal::ReadIndexFileOfKind(path, {internal::kHnswCode}, "an hnsw");
  RS_RETURN_IF_ERROR(file.status());
  const internal::FileHeader& h = file->header;
  internal::Reader r(file->payload);
  HnswParams p;
  int64_t live = 0;
  uint32_t flags = 0;
  if (!r.Get(&p.M) || !r.Get(&p.ef_construction) || !r.Get(&p.ef_search) || !r.Get(&live) ||
      (h.format >= 1 && !r.Get(&flags)) || (flags & ~kCountScoredFlag) != 0 ||
      !ValidateHnswParams(p).ok()) {
    return DataLoss(StrCat("hnsw index file ", path, " has a bad parameter block"));
  }
  p.count_scored = (flags & kCountScoredFlag) != 0;
  auto index = std::unique_ptr<HnswIndex>(new HnswIndex(h.dim, h.metric, p));
  auto graph =
      HnswGraph::Load(GraphOptions(h.dim, h.metric, p), r.rest(), path + ".hnswlib.load.tmp");
  if (!graph.ok()) return Annotate(graph.status(), StrCat("hnsw index file ", path));
  WriterMutexLock lock(index->mu_);  // not shared yet; held so that the analysis checks this
  index->graph_ = std::move(graph).value();
  const int64_t expect = static_cast<int64_t>(index->graph_->used() - index->graph_->deleted());
  if (expect != live) {
    return DataLoss(StrCat("hnsw index file ", path, " is inconsistent (", expect,
                           " live vectors, header says ", live, ")"));
  }
  index->live_ = live;
  return index;
}

}  // namespace ragserve::index
