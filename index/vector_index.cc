#include "index/vector_index.h"

#include <cmath>
#include <cstdint>
#include <string>

namespace ragserve::index {

StatusOr<Metric> ParseMetric(std::string_view name) {
  if (name == "l2") return Metric::kL2;
  if (name == "ip" || name == "inner_product") return Metric::kInnerProduct;
  if (name == "cosine") return Metric::kCosine;
  return InvalidArgument(StrCat("unknown metric '", name, "' (expected l2, ip or cosine)"));
}

std::string_view MetricName(Metric m) {
  switch (m) {
    case Metric::kL2:
      return "l2";
    case Metric::kInnerProduct:
      return "ip";
    case Metric::kCosine:
      return "cosine";
  }
  return "unknown";
}

Status CheckFinite(int64_t n, int dim, const float* x, std::string_view what) {
  const int64_t total = n * static_cast<int64_t>(dim);
  for (int64_t i = 0; i < total; ++i) {
    if (!std::isfinite(x[i])) {
      return InvalidArgument(StrCat(what, " ", i / dim, " has a non-finite value (", x[i],
                                    ") at component ", i % dim));
    }
  }
  return OkStatus();
}

int64_t VectorIndex::memory_bytes_to_add(int64_t n) const {
  const int64_t per_vector = int64_t{dim()} * static_cast<int64_t>(sizeof(float)) + 64;
  int64_t bytes = 0;
  if (n <= 0) return 0;
  if (__builtin_mul_overflow(n, per_vector, &bytes)) return INT64_MAX;
  return bytes;
}

}  // namespace ragserve::index
