#include "index/attention_aware.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <mutex>
#include <numeric>
#include <queue>
#include <unordered_set>
#include <utility>

#include "index/key_util.h"
#include "services/common/logging.h"

namespace ragserve::index {
namespace {

using key_internal::Dot;
using Scored = std::pair<float, int32_t>;
constexpr uint64_t kAaMagic = 0x3141574149524b41ULL;  // "AKRIAWA1"

inline float L2(const float* a, const float* b, int d) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int i = 0; i < d; ++i) {
    const float t = a[i] - b[i];
    s += t * t;
  }
  return s;
}

Status CheckParams(const AttentionAwareParams& p) {
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

}  // namespace

StatusOr<std::unique_ptr<AttentionAwareIndex>> AttentionAwareIndex::Build(
    int dim, int64_t n_keys, const float* keys, int64_t n_queries, const float* queries,
    const AttentionAwareParams& params, const int64_t* key_ids) {
  RS_CHECK_ARG(dim >= 1, "dim must be >= 1, got ", dim);
  RS_CHECK_ARG(n_keys >= 1 && n_keys < (int64_t{1} << 31), "n_keys must be in [1, 2^31), got ",
               n_keys);
  RS_CHECK_ARG(n_queries >= 1, "n_queries must be >= 1 (the index is built from queries), got ",
               n_queries);
  RS_CHECK_ARG(keys != nullptr && queries != nullptr, "null keys or queries");
  RS_RETURN_IF_ERROR(CheckParams(params));
  RS_RETURN_IF_ERROR(CheckFinite(keys, n_keys * dim, "key"));
  RS_RETURN_IF_ERROR(CheckFinite(queries, n_queries * dim, "prefill query"));

  auto idx = std::unique_ptr<AttentionAwareIndex>(new AttentionAwareIndex(dim, params));
  AttentionAwareIndex& x = *idx;
  x.keys_.assign(keys, keys + n_keys * dim);
  x.ids_.resize(static_cast<size_t>(n_keys));
  x.row_.reserve(static_cast<size_t>(n_keys));
  for (int64_t r = 0; r < n_keys; ++r) {
    const int64_t id = key_ids != nullptr ? key_ids[r] : r;
    RS_CHECK_ARG(id >= 0, "key id must be >= 0, got ", id);
    RS_CHECK_ARG(x.row_.emplace(id, static_cast<int32_t>(r)).second, "duplicate key id ", id);
    x.ids_[r] = id;
  }
  x.adj_.assign(static_cast<size_t>(n_keys), {});
  x.dead_.assign(static_cast<size_t>(n_keys), 0);

  // 1-2. Subsampled build queries and their exact top keys.
  const int64_t nq = std::min(n_queries, params.max_build_queries);
  std::vector<float> bq(static_cast<size_t>(nq * dim));
  for (int64_t i = 0; i < nq; ++i) {
    // Evenly spaced buckets with a hashed offset inside each: a plain stride over queries laid
    // out [token, head] would alias onto a subset of the heads.
    const int64_t lo = i * n_queries / nq, hi = (i + 1) * n_queries / nq;
    const int64_t src =
        lo + static_cast<int64_t>((static_cast<uint64_t>(i) * 2654435761ULL) %
                                  static_cast<uint64_t>(std::max<int64_t>(1, hi - lo)));
    std::copy(queries + src * dim, queries + (src + 1) * dim, bq.begin() + i * dim);
  }
  const int L = static_cast<int>(std::min<int64_t>(params.build_topk, n_keys));
  std::vector<int64_t> top(static_cast<size_t>(nq * L));
  std::vector<float> top_s(static_cast<size_t>(nq * L));
  key_internal::ExactTopK(nq, bq.data(), n_keys, x.keys_.data(), dim, L, top.data(), top_s.data());

  // 3. Projection: candidate lists, then occlusion pruning per node.
  std::vector<std::vector<int32_t>> cand(static_cast<size_t>(n_keys));
  for (int64_t i = 0; i < nq; ++i) {
    const int64_t* t = top.data() + i * L;
    const int32_t pivot = static_cast<int32_t>(t[0]);
    for (int j = 1; j < L; ++j) {
      const int32_t c = static_cast<int32_t>(t[j]);
      cand[pivot].push_back(c);
      cand[c].push_back(pivot);
      cand[t[j - 1]].push_back(c);
      if (j > 1) cand[c].push_back(static_cast<int32_t>(t[j - 1]));
    }
  }
  const int cap = 4 * params.max_degree;
#pragma omp parallel for schedule(dynamic, 256)
  for (int64_t r = 0; r < n_keys; ++r) {
    auto& c = cand[r];
    if (c.empty()) continue;
    // Most frequently co-retrieved candidates first, capped, then pruned.
    std::sort(c.begin(), c.end());
    std::vector<std::pair<int, int32_t>> freq;
    for (size_t a = 0; a < c.size();) {
      size_t b = a;
      while (b < c.size() && c[b] == c[a]) ++b;
      if (c[a] != r) freq.emplace_back(-static_cast<int>(b - a), c[a]);
      a = b;
    }
    std::sort(freq.begin(), freq.end());
    std::vector<int32_t> kept;
    for (size_t a = 0; a < freq.size() && static_cast<int>(kept.size()) < cap; ++a) {
      kept.push_back(freq[a].second);
    }
    x.adj_[r] = x.Prune(static_cast<int32_t>(r), std::move(kept), params.max_degree);
    std::vector<int32_t>().swap(c);
  }

  // 5. Entry points (chosen before step 4 so that insertion searches can use them).
  for (int e = 0; e < params.num_entry_points; ++e) {
    const int64_t qi = static_cast<int64_t>(e) * nq / params.num_entry_points;
    const int32_t p = static_cast<int32_t>(top[qi * L]);
    if (std::find(x.entry_.begin(), x.entry_.end(), p) == x.entry_.end()) x.entry_.push_back(p);
  }

  // 4. Link keys nothing points to: parallel searches on the projected graph, serial linking.
  std::vector<uint8_t> reached(static_cast<size_t>(n_keys), 0);
  for (const auto& l : x.adj_) {
    for (int32_t v : l) reached[v] = 1;
  }
  for (int32_t e : x.entry_) reached[e] = 1;
  std::vector<int32_t> todo;
  for (int64_t r = 0; r < n_keys; ++r) {
    if (!reached[r]) todo.push_back(static_cast<int32_t>(r));
  }
  std::vector<std::vector<Scored>> found(todo.size());
#pragma omp parallel for schedule(dynamic, 64)
  for (int64_t i = 0; i < static_cast<int64_t>(todo.size()); ++i) {
    int64_t s = 0, h = 0;
    x.BeamSearch(x.row(todo[i]), params.insert_ef, &found[i], &s, &h);
  }
  for (size_t i = 0; i < todo.size(); ++i) x.LinkNewNode(todo[i], found[i]);
  RS_LOG(debug, "attention-aware index: {} keys, {} build queries, {} linked by insertion", n_keys,
         nq, todo.size());
  return idx;
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

void AttentionAwareIndex::AddReverseEdge(int32_t from, int32_t to) {
  auto& l = adj_[from];
  if (std::find(l.begin(), l.end(), to) != l.end()) return;
  l.push_back(to);
  // Slack of max_degree/2 before re-pruning amortizes the O(M^2) occlusion pass.
  if (static_cast<int>(l.size()) > params_.max_degree + params_.max_degree / 2) {
    // The new edge must survive: it may be the only way into `to`.
    std::vector<int32_t> others(l.begin(), l.end() - 1);
    auto pruned = Prune(from, std::move(others), params_.max_degree - 1);
    pruned.push_back(to);
    l = std::move(pruned);
  }
}

void AttentionAwareIndex::LinkNewNode(int32_t node, const std::vector<Scored>& found) {
  std::vector<int32_t> c;
  for (const auto& f : found) {
    if (f.second != node) c.push_back(f.second);
  }
  auto out = Prune(node, c, params_.max_degree);
  adj_[node] = out;
  const int links = std::min<int>(params_.insert_reverse_links, static_cast<int>(c.size()));
  for (int i = 0; i < links; ++i) AddReverseEdge(c[i], node);
}

int64_t AttentionAwareIndex::size() const {
  std::shared_lock lock(mu_);
  return static_cast<int64_t>(row_.size());
}

double AttentionAwareIndex::mean_degree() const {
  std::shared_lock lock(mu_);
  if (adj_.empty()) return 0.0;
  double s = 0;
  for (const auto& l : adj_) s += static_cast<double>(l.size());
  return s / static_cast<double>(adj_.size());
}

int64_t AttentionAwareIndex::unreachable_nodes() const {
  std::shared_lock lock(mu_);
  std::vector<uint8_t> reached(adj_.size(), 0);
  for (const auto& l : adj_) {
    for (int32_t v : l) reached[v] = 1;
  }
  for (int32_t e : entry_) reached[e] = 1;
  return static_cast<int64_t>(std::count(reached.begin(), reached.end(), 0));
}

Status AttentionAwareIndex::add(int64_t n, const float* x, const int64_t* ids) {
  RS_CHECK_ARG(n >= 0, "n must be >= 0, got ", n);
  if (n == 0) return OkStatus();
  RS_CHECK_ARG(x != nullptr && ids != nullptr, "null vectors or ids");
  RS_RETURN_IF_ERROR(CheckFinite(x, n * dim_, "key"));
  for (int64_t i = 0; i < n; ++i) RS_CHECK_ARG(ids[i] >= 0, "id must be >= 0, got ", ids[i]);
  std::unique_lock lock(mu_);
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
    // Search before the node exists so it cannot find itself.
    BeamSearch(x + i * dim_, params_.insert_ef, &found, &s, &h);
    keys_.insert(keys_.end(), x + i * dim_, x + (i + 1) * dim_);
    ids_.push_back(ids[i]);
    adj_.emplace_back();
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

Status AttentionAwareIndex::SearchWithStats(int64_t n, const float* q, int k, float* distances,
                                            int64_t* ids, const SearchParams& params,
                                            KeySearchStats* stats) const {
  RS_RETURN_IF_ERROR(CheckSearchArgs(n, q, k, dim_, distances, ids));
  std::shared_lock lock(mu_);
  const int ef = std::max(k, params.ef_search > 0 ? params.ef_search : params_.ef_search);
  int64_t scored = 0, hops = 0;
  const bool any_dead = row_.size() != ids_.size();
#pragma omp parallel for reduction(+ : scored, hops) schedule(static, 1) if (n > 1)
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
  if (stats != nullptr) {
    stats->keys_scored += scored;
    stats->hops += hops;
  }
  return OkStatus();
}

StatusOr<int64_t> AttentionAwareIndex::remove(int64_t n, const int64_t* ids) {
  RS_CHECK_ARG(n >= 0, "n must be >= 0, got ", n);
  std::unique_lock lock(mu_);
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
void Put(std::ofstream& f, const T& v) {
  f.write(reinterpret_cast<const char*>(&v), sizeof v);
}
template <typename T>
void PutVec(std::ofstream& f, const std::vector<T>& v) {
  Put<int64_t>(f, static_cast<int64_t>(v.size()));
  f.write(reinterpret_cast<const char*>(v.data()),
          static_cast<std::streamsize>(v.size() * sizeof(T)));
}
template <typename T>
bool Get(std::ifstream& f, T* v) {
  return static_cast<bool>(f.read(reinterpret_cast<char*>(v), sizeof *v));
}
template <typename T>
bool GetVec(std::ifstream& f, std::vector<T>* v, int64_t max_elems) {
  int64_t n = 0;
  if (!Get(f, &n) || n < 0 || n > max_elems) return false;
  v->resize(static_cast<size_t>(n));
  return static_cast<bool>(
      f.read(reinterpret_cast<char*>(v->data()), static_cast<std::streamsize>(n * sizeof(T))));
}
}  // namespace

Status AttentionAwareIndex::save(const std::string& path) const {
  std::shared_lock lock(mu_);
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f) return Internal(StrCat("cannot open '", tmp, "' for writing"));
    Put(f, kAaMagic);
    Put<int64_t>(f, dim_);
    Put(f, params_);
    PutVec(f, keys_);
    PutVec(f, ids_);
    PutVec(f, dead_);
    PutVec(f, entry_);
    for (const auto& l : adj_) PutVec(f, l);
    if (!f) return Internal(StrCat("write to '", tmp, "' failed"));
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) return Internal(StrCat("rename '", tmp, "' -> '", path, "': ", ec.message()));
  return OkStatus();
}

StatusOr<std::unique_ptr<AttentionAwareIndex>> AttentionAwareIndex::Load(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return NotFound(StrCat("cannot open '", path, "'"));
  uint64_t magic = 0;
  int64_t dim = 0;
  AttentionAwareParams p;
  const auto bad = [&] {
    return DataLoss(StrCat("'", path, "' is not a valid attention-aware index"));
  };
  if (!Get(f, &magic) || magic != kAaMagic || !Get(f, &dim) || dim < 1 || dim > 65536 ||
      !Get(f, &p) || !CheckParams(p).ok()) {
    return bad();
  }
  auto idx =
      std::unique_ptr<AttentionAwareIndex>(new AttentionAwareIndex(static_cast<int>(dim), p));
  constexpr int64_t kMax = int64_t{1} << 31;
  if (!GetVec(f, &idx->keys_, kMax * 64) || idx->keys_.size() % dim != 0) return bad();
  const int64_t rows = static_cast<int64_t>(idx->keys_.size()) / dim;
  if (!GetVec(f, &idx->ids_, kMax) || static_cast<int64_t>(idx->ids_.size()) != rows ||
      !GetVec(f, &idx->dead_, kMax) || static_cast<int64_t>(idx->dead_.size()) != rows ||
      !GetVec(f, &idx->entry_, 4096 + rows)) {
    return bad();
  }
  for (int32_t e : idx->entry_) {
    if (e < 0 || e >= rows) return bad();
  }
  idx->adj_.resize(static_cast<size_t>(rows));
  for (auto& l : idx->adj_) {
    if (!GetVec(f, &l, 4 * 256)) return bad();
    for (int32_t v : l) {
      if (v < 0 || v >= rows) return bad();
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    if (idx->dead_[r]) continue;
    if (idx->ids_[r] < 0 || !idx->row_.emplace(idx->ids_[r], static_cast<int32_t>(r)).second) {
      return bad();
    }
  }
  return idx;
}

}  // namespace ragserve::index
