// Indexes over the keys of one attention head, for maximum-inner-product retrieval with decode
// queries (RetrievalAttention). Every key index is a VectorIndex (metric kInnerProduct) and in
// addition reports how many keys had their score q.k computed by a search, which is the cost
// measure the paper uses ("fraction of keys scanned").
//
// Implementations: KeyFlatIndex (exact BLAS scan, key_flat.h), KeyHnswIndex (hnswlib over keys,
// key_hnsw.h), KeyIvfIndex (FAISS IVF-Flat over keys, key_ivf.h) and AttentionAwareIndex
// (graph built from prefill queries, attention_aware.h).
#pragma once

#include <cstdint>

#include "index/vector_index.h"

namespace ragserve::index {

// Cost of one search() call (summed over its n queries).
struct KeySearchStats {
  int64_t keys_scored = 0;  // q.k products computed against stored keys (entry points included).
  int64_t hops = 0;         // graph nodes expanded / inverted lists visited; 0 for a flat scan.
};

class KeyIndex : public VectorIndex {
 public:
  // search() of VectorIndex that also accumulates its cost into *stats (may be null).
  virtual Status SearchWithStats(int64_t n, const float* q, int k, float* distances, int64_t* ids,
                                 const SearchParams& params, KeySearchStats* stats) const = 0;
  // Bytes of memory the index holds (its copy of the keys, ids, graph or lists; allocated
  // capacity, approximate for library-owned structures). Used for the KV retrieval service's
  // byte accounting.
  virtual int64_t memory_bytes() const = 0;

  Status search(int64_t n, const float* q, int k, float* distances, int64_t* ids,
                const SearchParams& params = {}) const override {
    return SearchWithStats(n, q, k, distances, ids, params, nullptr);
  }
};

// Shared argument checks of the key indexes (InvalidArgument naming the bad value).
Status CheckFinite(const float* x, int64_t count, const char* what);
Status CheckSearchArgs(int64_t n, const float* q, int k, int dim, const float* distances,
                       const int64_t* ids);

}  // namespace ragserve::index
