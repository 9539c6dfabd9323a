// The one batch-first vector index interface of ragserve (in the spirit of faiss::Index).
//
// Every index (Flat, Hnsw, IvfFlat, IvfPq, and the attention-aware key index of the KV retrieval
// service) implements VectorIndex. Queries come n at a time; results go into caller-owned arrays
// of n*k entries, row-major; a row with fewer than k hits is padded with id -1 and distance
// +inf (L2) or -inf (IP/cosine). Scores: L2 returns squared L2 distance (smaller is better);
// kInnerProduct returns q.x and kCosine returns cos(q, x) (larger is better).
//
// Thread safety: every implementation documents it in its own header; the contract is that
// search() may run concurrently with add()/remove() (readers-writer locking inside the index).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "services/common/status.h"

namespace ragserve::index {

enum class Metric { kL2 = 0, kInnerProduct = 1, kCosine = 2 };

// "l2" | "ip" | "cosine".
StatusOr<Metric> ParseMetric(std::string_view name);
std::string_view MetricName(Metric m);
// True when a larger score is a better match (IP, cosine).
inline bool HigherIsBetter(Metric m) { return m != Metric::kL2; }

// Per-call search parameters; each index reads the fields that apply to it and ignores the rest.
// A value of 0 means "the index's default".
struct SearchParams {
  int ef_search = 0;  // HNSW / graph indexes: candidate list size (>= k is enforced).
  int nprobe = 0;     // IVF: number of inverted lists visited.
  // Optional allow-list filter: when set, only ids for which filter(id) is true are returned.
  // Must be thread-safe and cheap; it is called from inside the search loop.
  const std::function<bool(int64_t)>* filter = nullptr;
};

class VectorIndex {
 public:
  virtual ~VectorIndex() = default;

  virtual int dim() const = 0;
  virtual Metric metric() const = 0;
  // Number of live (not removed) vectors.
  virtual int64_t size() const = 0;
  // Short kind name: "flat", "hnsw", "ivf_flat", "ivf_pq", "attention_aware".
  virtual std::string_view kind() const = 0;

  // Adds n vectors x[n*dim] with ids[n] (ids >= 0). An id that is already present is replaced.
  // Rejects NaN/Inf and negative ids with InvalidArgument and then adds nothing.
  virtual Status add(int64_t n, const float* x, const int64_t* ids) = 0;

  // For each of n queries q[n*dim], writes the k best matches into distances[n*k] and ids[n*k].
  // k must be >= 1; k larger than size() pads the rows.
  virtual Status search(int64_t n, const float* q, int k, float* distances, int64_t* ids,
                        const SearchParams& params = {}) const = 0;

  // Removes the given ids; unknown ids are ignored. Returns the number removed.
  virtual StatusOr<int64_t> remove(int64_t n, const int64_t* ids) = 0;

  // Indexes that must be trained (IVF) return true until train() succeeded.
  virtual bool needs_training() const { return false; }
  // Trains on n vectors; FailedPrecondition/InvalidArgument when there are too few.
  virtual Status train(int64_t n, const float* x) { return OkStatus(); }

  // Persists the whole index to one file (written to a temp file, then renamed).
  virtual Status save(const std::string& path) const = 0;
};

}  // namespace ragserve::index
