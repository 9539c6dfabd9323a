// IvfIndex: inverted-file indexes on FAISS 1.7.3: IVF-Flat (exact distances inside the probed
// lists) and IVF-PQ (product-quantized codes, ~pq_m bytes per vector). IVF-Flat over the keys of
// an attention head (kInnerProduct) is the KV retrieval store's "ivf" key index.
//
// Parameters and their effect (defaults in brackets):
//   nlist [0 = round(4*sqrt(n)) at train time]  number of k-means lists; more lists = faster
//                 search at equal nprobe, lower recall per probe. Training needs n >= nlist
//                 vectors (and n >= 2^pq_nbits for IVF-PQ), else InvalidArgument.
//   nprobe [0 = max(16, nlist/8)]  lists visited per query (per call via SearchParams::nprobe);
//                 higher = better recall, lower QPS. Clamped to nlist.
//   pq_m [0 = the largest divisor of dim that is <= dim/4]  IVF-PQ sub-quantizers; must divide dim.
//   pq_nbits [8]  bits per sub-quantizer code, in [1, 16].
//   kmeans_iterations [20], seed [1234]  of the k-means training.
// The index must be trained (train()) before add(); add() before training is FailedPrecondition.
// A filtered search that finds fewer than k hits widens nprobe (x4) until it has k or probed
// every list. SearchStats: scored = codes compared in the probed lists (FAISS's ndis; the nlist
// centroid products per query are not included), hops = lists probed.
// Thread safety: search() takes a shared lock; add()/remove()/train() an exclusive one; save()
// a shared one; the lock prefers writers, so a stream of searches cannot starve an add().
// FAISS exceptions are caught inside and returned as Status.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_set>

#include "index/internal/rw_mutex.h"
#include "index/vector_index.h"

namespace faiss {
struct IndexIVF;
struct IDSelector;
}  // namespace faiss

namespace ragserve::index {

struct IvfParams {
  int nlist = 0;
  int nprobe = 0;
  int pq_m = 0;
  int pq_nbits = 8;
  int kmeans_iterations = 20;
  int seed = 1234;
};

// InvalidArgument naming the bad field for dimension `dim` (pq fields only when `pq`).
Status ValidateIvfParams(const IvfParams& p, int dim, bool pq);

class IvfIndex final : public VectorIndex {
 public:
  // `pq` selects IVF-PQ, else IVF-Flat.
  static StatusOr<std::unique_ptr<IvfIndex>> Create(int dim, Metric metric, bool pq,
                                                    const IvfParams& params = {});
  static StatusOr<std::unique_ptr<IvfIndex>> Load(const std::string& path);
  ~IvfIndex() override;

  int dim() const override { return dim_; }
  Metric metric() const override { return metric_; }
  int64_t size() const override;
  std::string_view kind() const override { return pq_ ? "ivf_pq" : "ivf_flat"; }
  Status add(int64_t n, const float* x, const int64_t* ids) override;
  Status search(int64_t n, const float* q, int k, float* distances, int64_t* ids,
                const SearchParams& params = {}) const override;
  StatusOr<int64_t> remove(int64_t n, const int64_t* ids) override;
  bool needs_training() const override;
  // k-means (and PQ codebooks) on x[n*dim]; InvalidArgument when n < nlist (or < 2^pq_nbits).
  Status train(int64_t n, const float* x) override;
  Status save(const std::string& path) const override;
  int64_t memory_bytes() const override;
  // Trained: n codes and ids, twice over (each inverted list's arrays grow by doubling), and the
  // live-id set's entries; untrained: VectorIndex's default.
  int64_t memory_bytes_to_add(int64_t n) const override;

  // Parameters with the automatic values resolved once trained (nlist, nprobe, pq_m).
  IvfParams params() const;

 private:
  IvfIndex(int dim, Metric metric, bool pq, const IvfParams& params);
  int DefaultNprobe() const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // FAISS 1.7.3's IndexIVF::search with the cost counted per call (instead of into FAISS's
  // global indexIVF_stats): the queries split into one slice per OpenMP thread, each assigned by
  // the coarse quantizer and scanned by search_preassigned. Requires a trained index; throws
  // std::exception.
  void SearchLists(int64_t n, const float* q, int k, int nprobe, const faiss::IDSelector* sel,
                   float* distances, int64_t* ids, SearchStats* stats) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // Re-searches the rows that came back short of k allowed hits with nprobe x4 until they fill
  // or every list was probed.
  void WidenShortRows(int64_t n, const float* q, int k, int nprobe, const faiss::IDSelector* sel,
                      float* distances, int64_t* ids, SearchStats* stats) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);

  const int dim_;
  const Metric metric_;
  const bool pq_;
  mutable internal::RwMutex mu_;  // writer-preferring (see internal/rw_mutex.h)
  IvfParams params_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<faiss::IndexIVF> ivf_ ABSL_GUARDED_BY(mu_);  // null until trained
  std::unordered_set<int64_t> present_ ABSL_GUARDED_BY(mu_);   // live ids
};

}  // namespace ragserve::index
