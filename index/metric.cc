#include <string>

#include "index/vector_index.h"

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

}  // namespace ragserve::index
