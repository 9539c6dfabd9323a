// KeyFlatIndex: exact maximum-inner-product search over keys by a BLAS scan. The reference
// ("exact twin") every approximate key index is measured against; it scores every key.
//
// Thread safety: search() may run concurrently with itself and with add()/remove()
// (readers-writer lock).
#pragma once

#include <cstdint>
#include <memory>
#include <shared_mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "index/key_index.h"

namespace ragserve::index {

class KeyFlatIndex final : public KeyIndex {
 public:
  // An empty index of dimension dim (>= 1).
  static StatusOr<std::unique_ptr<KeyFlatIndex>> Create(int dim);
  // Loads a file written by save(); DataLoss on a truncated or malformed file.
  static StatusOr<std::unique_ptr<KeyFlatIndex>> Load(const std::string& path);

  int dim() const override { return dim_; }
  Metric metric() const override { return Metric::kInnerProduct; }
  int64_t size() const override;
  int64_t memory_bytes() const override;
  std::string_view kind() const override { return "key_flat"; }

  Status add(int64_t n, const float* x, const int64_t* ids) override;
  // Exact top-k by q.x; keys_scored = n * size().
  Status SearchWithStats(int64_t n, const float* q, int k, float* distances, int64_t* ids,
                         const SearchParams& params, KeySearchStats* stats) const override;
  StatusOr<int64_t> remove(int64_t n, const int64_t* ids) override;
  Status save(const std::string& path) const override;

 private:
  explicit KeyFlatIndex(int dim) : dim_(dim) {}

  const int dim_;
  mutable std::shared_mutex mu_;
  std::vector<float> data_;                   // [rows, dim]; guarded by mu_
  std::vector<int64_t> ids_;                  // row -> id; guarded by mu_
  std::unordered_map<int64_t, int64_t> row_;  // id -> row; guarded by mu_
};

}  // namespace ragserve::index
