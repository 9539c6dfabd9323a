// KeyHnswIndex: hnswlib (HNSW) over keys with inner-product distance, the "off-the-shelf ANN
// over keys" baseline of RetrievalAttention. Counts every q.k it computes exactly (a counting
// inner-product space), so keys_scored is comparable with the other key indexes.
//
// Thread safety: add()/remove() take an exclusive lock; search() takes a shared lock plus a
// mutex around hnswlib's (global) ef setting, so searches are serialized.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>

#include "index/key_index.h"

namespace ragserve::index {

struct KeyHnswParams {
  int m = 16;                       // links per node; more: better recall, more keys scored per hop
  int ef_construction = 100;        // build beam; more: better graph, slower add
  int ef_search = 128;              // default search beam (SearchParams::ef_search overrides)
  int64_t initial_capacity = 1024;  // grows by doubling
  uint64_t seed = 100;
};

class KeyHnswIndex final : public KeyIndex {
 public:
  // InvalidArgument on dim < 1, m < 2, ef_construction < 1, ef_search < 1.
  static StatusOr<std::unique_ptr<KeyHnswIndex>> Create(int dim, const KeyHnswParams& p = {});
  ~KeyHnswIndex() override;

  int dim() const override { return dim_; }
  Metric metric() const override { return Metric::kInnerProduct; }
  int64_t size() const override;
  int64_t memory_bytes() const override;
  std::string_view kind() const override { return "key_hnsw"; }

  // Parallel insertion (OpenMP); an existing id's vector is replaced.
  Status add(int64_t n, const float* x, const int64_t* ids) override;
  Status SearchWithStats(int64_t n, const float* q, int k, float* distances, int64_t* ids,
                         const SearchParams& params, KeySearchStats* stats) const override;
  StatusOr<int64_t> remove(int64_t n, const int64_t* ids) override;
  // hnswlib's own file format.
  Status save(const std::string& path) const override;

 private:
  struct Impl;
  KeyHnswIndex(int dim, const KeyHnswParams& p);
  const int dim_;
  const KeyHnswParams params_;
  mutable std::shared_mutex mu_;  // add/remove exclusive, search shared
  mutable std::mutex search_mu_;  // hnswlib's ef is index-global
  std::unique_ptr<Impl> impl_;
};

}  // namespace ragserve::index
