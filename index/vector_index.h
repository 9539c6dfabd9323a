// The one batch-first vector index interface of ragserve (in the spirit of faiss::Index).
//
// Every index implements VectorIndex, one class per algorithm: FlatIndex (exact BLAS scan,
// flat.h), HnswIndex (hnswlib, hnsw.h), IvfIndex (FAISS IVF-Flat / IVF-PQ, ivf.h) and
// AttentionAwareIndex (the RetrievalAttention key index, attention_aware.h). The collection
// service (services/index) and the KV retrieval store (services/kvr) both use them through this
// interface; the store's key indexes are these classes with the inner-product metric.
//
// Queries come n at a time; results go into caller-owned arrays of n*k entries, row-major; a row
// with fewer than k hits is padded with id -1 and distance +inf (L2) or -inf (IP/cosine). Scores:
// L2 returns squared L2 distance (smaller is better); kInnerProduct returns q.x and kCosine
// returns cos(q, x) (larger is better).
//
// Argument rules, the same for every index: n >= 0, and n == 0 is an empty batch (OK, nothing
// happens); for n > 0 the arrays must not be null; k >= 1; ids >= 0; NaN/Inf in vectors or
// queries is InvalidArgument naming the vector and component. A rejected call changes nothing.
//
// Thread safety: every implementation documents it in its own header; the contract is that
// search() may run concurrently with itself and with add()/remove() (readers-writer locking
// inside the index).
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

// InvalidArgument naming the first non-finite value of the n vectors x[n*dim] ("<what> 3 has a
// non-finite value (nan) at component 1"), else OK.
Status CheckFinite(int64_t n, int dim, const float* x, std::string_view what);

// Cost of searches, the measure RetrievalAttention reports ("fraction of keys scanned"), the same
// for every index (FAISS keeps such counters per index type: hnsw_stats, indexIVF_stats).
struct SearchStats {
  // Stored vectors whose score against a query was computed (graph entry points included).
  // HnswIndex counts only when created with HnswParams::count_scored.
  int64_t scored = 0;
  // Graph nodes expanded (attention-aware) or inverted lists visited (IVF); 0 for flat and HNSW.
  int64_t hops = 0;
};

// Per-call search parameters; each index reads the fields that apply to it and ignores the rest.
// A value of 0 means "the index's default".
struct SearchParams {
  int ef_search = 0;  // HNSW / graph indexes: candidate list size (>= k is enforced).
  int nprobe = 0;     // IVF: number of inverted lists visited.
  // Optional allow-list filter: when set, only ids for which filter(id) is true are returned.
  // Must be thread-safe and cheap; it is called from inside the search loop.
  const std::function<bool(int64_t)>* filter = nullptr;
  // When set, search() adds its cost (summed over its n queries) to *stats.
  SearchStats* stats = nullptr;
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
  // Bytes of memory the index holds (vectors, ids, graph or lists; allocated capacity,
  // approximate for library-owned structures). The KV retrieval store charges it to a sequence.
  virtual int64_t memory_bytes() const = 0;
  // At most how much memory_bytes() grows when n ids that are not present are added (n >= 0):
  // an estimate from sizes that allocates nothing, for admission control before an add().
  // Default: n * (dim * 4 + 64); indexes whose growth differs override it.
  virtual int64_t memory_bytes_to_add(int64_t n) const;

  // Adds n vectors x[n*dim] with ids[n] (ids >= 0). An id that is already present is replaced.
  virtual Status add(int64_t n, const float* x, const int64_t* ids) = 0;

  // For each of n queries q[n*dim], writes the k best matches into distances[n*k] and ids[n*k].
  // k larger than size() pads the rows.
  virtual Status search(int64_t n, const float* q, int k, float* distances, int64_t* ids,
                        const SearchParams& params = {}) const = 0;

  // Removes the given ids; unknown ids are ignored. Returns the number removed.
  virtual StatusOr<int64_t> remove(int64_t n, const int64_t* ids) = 0;

  // Indexes that must be trained (IVF) return true until train() succeeded.
  virtual bool needs_training() const { return false; }
  // Trains on n vectors; FailedPrecondition/InvalidArgument when there are too few.
  virtual Status train(int64_t n, const float* x) { return OkStatus(); }

  // Persists the whole index to one checksummed file, durably (temp file, fsync, rename, fsync of
  // the folder); LoadIndex (index_factory.h) reads any of them back.
  virtual Status save(const std::string& path) const = 0;
};

}  // namespace ragserve::index
