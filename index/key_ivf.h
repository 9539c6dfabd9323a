// KeyIvfIndex: FAISS IVF-Flat over keys with the inner-product metric (the IVF baseline of
// RetrievalAttention). keys_scored counts the keys in the visited inverted lists (FAISS's
// ndis); hops counts the lists visited. Centroid scoring (nlist products per query) is not
// included in keys_scored.
//
// Thread safety: add()/remove()/train() exclusive, search() shared (readers-writer lock).
#pragma once

#include <cstdint>
#include <memory>
#include <shared_mutex>
#include <string>

#include "index/key_index.h"

namespace faiss {
struct IndexIVFFlat;
struct IndexFlatIP;
}  // namespace faiss

namespace ragserve::index {

struct KeyIvfParams {
  int nlist = 0;    // inverted lists; 0 = 4 * sqrt(number of training keys), at least 1
  int nprobe = 16;  // default lists visited (SearchParams::nprobe overrides); more: higher
                    // recall, keys scored ~ nprobe / nlist of all keys
};

class KeyIvfIndex final : public KeyIndex {
 public:
  static StatusOr<std::unique_ptr<KeyIvfIndex>> Create(int dim, const KeyIvfParams& p = {});
  ~KeyIvfIndex() override;

  int dim() const override { return dim_; }
  Metric metric() const override { return Metric::kInnerProduct; }
  int64_t size() const override;
  int64_t memory_bytes() const override;
  std::string_view kind() const override { return "key_ivf_flat"; }

  bool needs_training() const override;
  // k-means over n keys (n >= nlist, else FailedPrecondition).
  Status train(int64_t n, const float* x) override;
  // FailedPrecondition before train(); an existing id is replaced.
  Status add(int64_t n, const float* x, const int64_t* ids) override;
  Status SearchWithStats(int64_t n, const float* q, int k, float* distances, int64_t* ids,
                         const SearchParams& params, KeySearchStats* stats) const override;
  StatusOr<int64_t> remove(int64_t n, const int64_t* ids) override;
  // faiss::write_index format.
  Status save(const std::string& path) const override;

 private:
  KeyIvfIndex(int dim, const KeyIvfParams& p);  // out of line: faiss types are incomplete here
  const int dim_;
  const KeyIvfParams params_;
  mutable std::shared_mutex mu_;
  std::unique_ptr<faiss::IndexFlatIP> quantizer_;  // guarded by mu_
  std::unique_ptr<faiss::IndexIVFFlat> ivf_;       // guarded by mu_; null until trained
};

}  // namespace ragserve::index
