// Adapter from a SearchParams filter (std::function over ids) to a FAISS id selector.
#pragma once

#include <faiss/impl/IDSelector.h>

#include <cstdint>
#include <functional>

namespace ragserve::index::internal {

// Borrows `fn`; it must outlive every search that uses the selector.
struct FunctionSelector final : faiss::IDSelector {
  explicit FunctionSelector(const std::function<bool(int64_t)>* f) : fn(f) {}
  bool is_member(faiss::Index::idx_t id) const override { return (*fn)(id); }
  const std::function<bool(int64_t)>* fn;
};

}  // namespace ragserve::index::internal
