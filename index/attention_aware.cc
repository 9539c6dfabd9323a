#include "index/attention_aware.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <mutex>
#include <numeric>
#include <queue>
#include <unordered_set>
#include <utility>

#include "index/internal/index_file.h"
#include "index/internal/index_util.h"

namespace ragserve::index {
namespace {

using internal::Dot;
using Scored = std::pair<float, int32_t>;

inline float L2(const float* a, const float* b, int d) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int i = 0; i < d; ++i) {
    const float t = a[i] - b[i];
    s += t * t;
  }
  return s;
}

}  // namespace

Status ValidateAttentionAwareParams(const AttentionAwareParams& p) {
  RS_CHECK_ARG(p.build_topk >= 1 && p.build_topk <= 1024, "build_topk must be in [1, 1024], got ",
               p.build_topk);
  RS_CHECK_ARG(p.max_degree >= 4 && p.max_degree <= 256, "max_degree must be in [4, 256], got ",
               p.max_degree);
  RS_CHECK_ARG(p.max_build_queries >= 1, "max_build_queries must be >= 1, got ",
               p.max_build_queries);
  RS_CHECK_ARG(p.num_entry_points >= 1 && p.num_entry_points <= 4096,
               "num_entry_points must be in [1, 4096], got ", p.num_entry_points);
  RS_CHECK_ARG(p.ef_search >= 1, "ef_search must be >= 1, got ", p.ef_search);
  RS_CHECK_ARG(p.insert_ef >= 1, "insert_ef must be >= 1, got ", p.insert_ef);
  RS_CHECK_ARG(p.insert_reverse_links >= 1, "insert_reverse_links must be >= 1, got ",
               p.insert_reverse_links);
  RS_CHECK_ARG(p.prune_alpha >= 1.0f && std::isfinite(p.prune_alpha),
               "prune_alpha must be a finite value >= 1, got ", p.prune_alpha);
  return OkStatus();
}

void AttentionAwareIndex::BeamSearch(const float* q, int ef, std::vector<Scored>* out,
                                     int64_t* scored, int64_t* hops) const {
  const size_t n = ids_.size();
  std::vector<uint64_t> visited((n + 63) / 64, 0);
  auto test_set = [&](int32_t v) {
    uint64_t& w = visited[v >> 6];
    const uint64_t bit = uint64_t{1} << (v & 63);
    if (w & bit) return true;
    w |= bit;
    return false;
  };
  std::priority_queue<Scored> frontier;                                   // best first
  std::priority_queue<Scored, std::vector<Scored>, std::greater<>> best;  // worst on top
  auto offer = [&](float s, int32_t v) {
    if (static_cast<int>(best.size()) < ef || s > best.top().first) {
      frontier.emplace(s, v);
      best.emplace(s, v);
      if (static_cast<int>(best.size()) > ef) best.pop();
    }
  };
  for (int32_t e : entry_) {
    if (test_set(e)) continue;
    ++*scored;
    offer(Dot(q, row(e), dim_), e);
  }
  while (!frontier.empty()) {
    const auto [s, v] = frontier.top();
    if (static_cast<int>(best.size()) >= ef && s < best.top().first) break;
    frontier.pop();
    ++*hops;
    const auto& nb = adj_[v];
    for (size_t i = 0; i < nb.size(); ++i) {
      if (i + 1 < nb.size()) __builtin_prefetch(row(nb[i + 1]));
      const int32_t u = nb[i];
      if (test_set(u)) continue;
      ++*scored;
      offer(Dot(q, row(u), dim_), u);
    }
  }
  out->clear();
  out->reserve(best.size());
  while (!best.empty()) {
    out->push_back(best.top());
    best.pop();
  }
  std::reverse(out->begin(), out->end());  // best first
}

std::vector<int32_t> AttentionAwareIndex::Prune(int32_t node, std::vector<int32_t> cands,
                                                int max_out) const {
  const float* x = row(node);
  std::vector<std::pair<float, int32_t>> byd;
  byd.reserve(cands.size());
  for (int32_t c : cands) {
    if (c != node) byd.emplace_back(L2(x, row(c), dim_), c);
  }
  std::sort(byd.begin(), byd.end());
  byd.erase(std::unique(byd.begin(), byd.end(),
                        [](const auto& a, const auto& b) { return a.second == b.second; }),
            byd.end());
  if (static_cast<int>(byd.size()) <= max_out) {
    std::vector<int32_t> all;
    for (const auto& p : byd) all.push_back(p.second);
    return all;
  }
  const float alpha = params_.prune_alpha;
  std::vector<int32_t> kept;
  std::vector<int32_t> skipped;
  for (const auto& [dp, p] : byd) {
    if (static_cast<int>(kept.size()) >= max_out) break;
    bool occluded = false;
    for (int32_t r : kept) {
      if (alpha * L2(row(p), row(r), dim_) < dp) {
        occluded = true;
        break;
      }
    }
    if (occluded) {
      skipped.push_back(p);
    } else {
      kept.push_back(p);
    }
  }
  // Keep at least half the degree bound so that pruning never isolates a dense region.
  for (size_t i = 0; i < skipped.size() && static_cast<int>(kept.size()) < max_out / 2; ++i) {
    kept.push_back(skipped[i]);
  }
  return kept;
}

void AttentionAwareIndex::RecountInDegrees() {
  indeg_.assign(adj_.size(), 0);
  for (const auto& l : adj_) {
    for (int32_t v : l) ++indeg_[v];
  }
}

bool AttentionAwareIndex::AddReverseEdge(int32_t from, int32_t to, int cap) {
  auto& l = adj_[from];
  if (std::find(l.begin(), l.end(), to) != l.end()) return true;
  if (static_cast<int>(l.size()) >= cap) return false;
  l.push_back(to);
  ++indeg_[to];
  return true;
}

void AttentionAwareIndex::LinkNewNode(int32_t node, const std::vector<Scored>& found) {
  std::vector<int32_t> c;
  for (const auto& f : found) {
    if (f.second != node) c.push_back(f.second);
  }
  adj_[node] = Prune(node, c, params_.max_degree);
  for (int32_t v : adj_[node]) ++indeg_[v];
  // Reverse edges only fill free slots (max_degree plus half of it as slack): they never
  // displace query-projected edges, which carry the attention structure (re-pruning or
  // replacing them on insertion cost most of the recall in experiments).
  const int slack_cap = params_.max_degree + params_.max_degree / 2;
  int placed = 0;
  for (size_t i = 0; i < c.size() && placed < params_.insert_reverse_links; ++i) {
    placed += AddReverseEdge(c[i], node, slack_cap) ? 1 : 0;
  }
  if (placed > 0 || c.empty()) return;
  // All candidates are full: one edge into the first list under twice the bound, else over it
  // (the node must stay reachable).
  for (int32_t from : c) {
    if (AddReverseEdge(from, node, 2 * params_.max_degree)) return;
  }
  adj_[c[0]].push_back(node);
  ++indeg_[node];
}

const float* AttentionAwareIndex::InsertionQuery(const float* key) const {
  const int64_t e_count = static_cast<int64_t>(centroids_.size()) / dim_;
  const float* best = key;
  float best_s = -std::numeric_limits<float>::infinity();
  for (int64_t e = 0; e < e_count; ++e) {
    const float s = Dot(key, centroids_.data() + e * dim_, dim_);
    if (s > best_s) {
      best_s = s;
      best = centroids_.data() + e * dim_;
    }
  }
  return best;
}

int64_t AttentionAwareIndex::memory_bytes() const {
  ReaderMutexLock lock(mu_);
  size_t bytes = keys_.capacity() * sizeof(float) + ids_.capacity() * sizeof(int64_t) +
                 row_.size() * 32 + adj_.capacity() * sizeof(std::vector<int32_t>) +
                 dead_.capacity() + indeg_.capacity() * sizeof(int32_t) +
                 entry_.capacity() * sizeof(int32_t) + centroids_.capacity() * sizeof(float);
  for (const auto& a : adj_) bytes += a.capacity() * sizeof(int32_t);
  return static_cast<int64_t>(bytes);
}

int64_t AttentionAwareIndex::size() const {
  ReaderMutexLock lock(mu_);
  return static_cast<int64_t>(row_.size());
}

double AttentionAwareIndex::mean_degree() const {
  ReaderMutexLock lock(mu_);
  if (adj_.empty()) return 0.0;
  double s = 0;
  for (const auto& l : adj_) s += static_cast<double>(l.size());
  return s / static_cast<double>(adj_.size());
}

std::vector<uint8_t> AttentionAwareIndex::Reached() const {
  std::vector<uint8_t> reached(adj_.size(), 0);
  for (const auto& l : adj_) {
    for (int32_t v : l) reached[v] = 1;
  }
  for (int32_t e : entry_) reached[e] = 1;
  return reached;
}

int64_t AttentionAwareIndex::unreachable_nodes() const {
  ReaderMutexLock lock(mu_);
  const std::vector<uint8_t> reached = Reached();
  return static_cast<int64_t>(std::count(reached.begin(), reached.end(), 0));
}

Status AttentionAwareIndex::add(int64_t n, const float* x, const int64_t* ids) {
  RS_RETURN_IF_ERROR(internal::CheckAddArgs(n, x, ids, dim_));
  if (n == 0) return OkStatus();
  WriterMutexLock lock(mu_);
  RS_CHECK_ARG(static_cast<int64_t>(ids_.size()) + n < (int64_t{1} << 31),
               "index would exceed 2^31 nodes");
  for (int64_t i = 0; i < n; ++i) {
    auto it = row_.find(ids[i]);
    if (it != row_.end()) {
      dead_[it->second] = 1;
      row_.erase(it);
    }
    const int32_t r = static_cast<int32_t>(ids_.size());
    std::vector<Scored> found;
    int64_t s = 0, h = 0;
    // Search before the node exists so it cannot find itself. The search runs with the query
    // centroid that scores the new key highest: the key is linked where the queries that
    // would attend to it search, which a key-to-key search does not find for OOD queries.
    BeamSearch(InsertionQuery(x + i * dim_), params_.insert_ef, &found, &s, &h);
    keys_.insert(keys_.end(), x + i * dim_, x + (i + 1) * dim_);
    ids_.push_back(ids[i]);
    adj_.emplace_back();
    indeg_.push_back(0);
    dead_.push_back(0);
    row_[ids[i]] = r;
    if (found.empty()) {
      entry_.push_back(r);  // first node of an emptied graph
    } else {
      LinkNewNode(r, found);
    }
  }
  return OkStatus();
}

Status AttentionAwareIndex::search(int64_t n, const float* q, int k, float* distances, int64_t* ids,
                                   const SearchParams& params) const {
  RS_RETURN_IF_ERROR(internal::CheckSearchArgs(n, q, k, distances, ids, dim_));
  if (n == 0) return OkStatus();
  ReaderMutexLock lock(mu_);
  const int ef = std::max(k, params.ef_search > 0 ? params.ef_search : params_.ef_search);
  int64_t scored = 0, hops = 0;
  const bool any_dead = row_.size() != ids_.size();
  // Threads only for large batches: a decode step's few heads are faster on one core than the
  // cost of waking an OpenMP team on a shared machine.
#pragma omp parallel for reduction(+ : scored, hops) schedule(dynamic, 4) if (n >= 64)
  for (int64_t i = 0; i < n; ++i) {
    std::vector<Scored> found;
    BeamSearch(q + i * dim_, ef, &found, &scored, &hops);
    int j = 0;
    for (const auto& [s, r] : found) {
      if (j == k) break;
      if (any_dead && dead_[r]) continue;
      if (params.filter != nullptr && !(*params.filter)(ids_[r])) continue;
      distances[i * k + j] = s;
      ids[i * k + j] = ids_[r];
      ++j;
    }
    for (; j < k; ++j) {
      distances[i * k + j] = -std::numeric_limits<float>::infinity();
      ids[i * k + j] = -1;
    }
  }
  if (params.stats != nullptr) {
    params.stats->scored += scored;
    params.stats->hops += hops;
  }
  return OkStatus();
}

StatusOr<int64_t> AttentionAwareIndex::remove(int64_t n, const int64_t* ids) {
  RS_RETURN_IF_ERROR(internal::CheckRemoveArgs(n, ids));
  WriterMutexLock lock(mu_);
  int64_t removed = 0;
  for (int64_t i = 0; i < n; ++i) {
    auto it = row_.find(ids[i]);
    if (it == row_.end()) continue;
    dead_[it->second] = 1;
    row_.erase(it);
    ++removed;
  }
  return removed;
}

namespace {

template <typename T>
void PutVec(std::string* s, const std::vector<T>& v) {
  internal::Put<int64_t>(s, static_cast<int64_t>(v.size()));
  s->append(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

// Reads a vector written by PutVec of at most max_elems elements; never allocates more than the
// rest of the payload can fill (a corrupt length gives false, not an out-of-memory abort).
template <typename T>
bool GetVec(internal::Reader* r, std::vector<T>* v, int64_t max_elems) {
  int64_t n = 0;
  if (!r->Get(&n) || n < 0 || n > max_elems ||
      static_cast<uint64_t>(n) > r->remaining() / sizeof(T)) {
    return false;
  }
  v->resize(static_cast<size_t>(n));
  return r->GetBytes(v->data(), static_cast<size_t>(n) * sizeof(T));
}

void PutParams(std::string* s, const AttentionAwareParams& p) {
  internal::Put<int32_t>(s, p.build_topk);
  internal::Put<int32_t>(s, p.max_degree);
  internal::Put<int64_t>(s, p.max_build_queries);
  internal::Put<int32_t>(s, p.num_entry_points);
  internal::Put<int32_t>(s, p.ef_search);
  internal::Put<int32_t>(s, p.insert_ef);
  internal::Put<int32_t>(s, p.insert_reverse_links);
  internal::Put<float>(s, p.prune_alpha);
}

bool GetParams(internal::Reader* r, AttentionAwareParams* p) {
  return r->Get(&p->build_topk) && r->Get(&p->max_degree) && r->Get(&p->max_build_queries) &&
         r->Get(&p->num_entry_points) && r->Get(&p->ef_search) && r->Get(&p->insert_ef) &&
         r->Get(&p->insert_reverse_links) && r->Get(&p->prune_alpha) &&
         ValidateAttentionAwareParams(*p).ok();
}

}  // namespace

// Payload: the parameters (PutParams), then keys, ids, tombstones, entry points, centroids and
// every row's out-edges, each as i64 count + elements.
Status AttentionAwareIndex::save(const std::string& path) const {
  std::string payload;
  {
    ReaderMutexLock lock(mu_);
    PutParams(&payload, params_);
    PutVec(&payload, keys_);
    PutVec(&payload, ids_);
    PutVec(&payload, dead_);
    PutVec(&payload, entry_);
    PutVec(&payload, centroids_);
    for (const auto& l : adj_) PutVec(&payload, l);
  }
  return internal::WriteIndexFile(
      path, {internal::kAttentionAwareCode, Metric::kInnerProduct, dim_}, payload);
}

StatusOr<std::unique_ptr<AttentionAwareIndex>> AttentionAwareIndex::Load(const std::string& path) {
  auto file =
      internal::ReadIndexFileOfKind(path, {internal::kAttentionAwareCode}, "an attention-aware");
  if (file.status().code() == StatusCode::kDataLoss) {
    std::ifstream f(path, std::ios::binary);
    char magic[8] = {};
    if (f.read(magic, 8) && std::memcmp(magic, "AKRIAWA1", 8) == 0) {
      return DataLoss(StrCat("'", path, "' is an attention-aware index of the pre-envelope ",
                             "AKRIAWA1 layout, which is no longer read: rebuild it"));
    }
  }
  RS_RETURN_IF_ERROR(file.status());
  const internal::FileHeader& h = file->header;
  const auto bad = [&] {
    return DataLoss(StrCat("'", path, "' is not a valid attention-aware index"));
  };
  internal::Reader r(file->payload);
  AttentionAwareParams p;
  if (h.metric != Metric::kInnerProduct || h.dim > 65536 || !GetParams(&r, &p)) return bad();
  const int dim = h.dim;
  auto idx = std::unique_ptr<AttentionAwareIndex>(new AttentionAwareIndex(dim, p));
  WriterMutexLock lock(idx->mu_);  // not shared yet; held so that the analysis checks this
  constexpr int64_t kMax = int64_t{1} << 31;
  if (!GetVec(&r, &idx->keys_, kMax * 64) || idx->keys_.size() % dim != 0) return bad();
  const int64_t rows = static_cast<int64_t>(idx->keys_.size()) / dim;
  if (!GetVec(&r, &idx->ids_, kMax) || static_cast<int64_t>(idx->ids_.size()) != rows ||
      !GetVec(&r, &idx->dead_, kMax) || static_cast<int64_t>(idx->dead_.size()) != rows ||
      !GetVec(&r, &idx->entry_, 4096 + rows) || !GetVec(&r, &idx->centroids_, 4096 * dim) ||
      idx->centroids_.size() % dim != 0) {
    return bad();
  }
  for (int32_t e : idx->entry_) {
    if (e < 0 || e >= rows) return bad();
  }
  idx->adj_.resize(static_cast<size_t>(rows));
  for (auto& l : idx->adj_) {
    if (!GetVec(&r, &l, rows)) return bad();
    for (int32_t v : l) {
      if (v < 0 || v >= rows) return bad();
    }
  }
  if (r.remaining() != 0) return bad();
  idx->RecountInDegrees();
  for (int64_t row = 0; row < rows; ++row) {
    if (idx->dead_[row]) continue;
    if (idx->ids_[row] < 0 ||
        !idx->row_.emplace(idx->ids_[row], static_cast<int32_t>(row)).second) {
      return bad();
    }
  }
  return idx;
}

}  // namespace ragserve::index
