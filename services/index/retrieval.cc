#include "services/index/retrieval.h"

#include <algorithm>
#include <cmath>
#include <unordered_map>

namespace ragserve::collection {

int JsonNestingDepth(std::string_view text) {
  int depth = 0, deepest = 0;
  bool in_string = false, escaped = false;
  for (char c : text) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      deepest = std::max(deepest, ++depth);
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return deepest;
}

Status CheckJsonDepth(std::string_view text, std::string_view what) {
  const int depth = JsonNestingDepth(text);
  RS_CHECK_ARG(depth <= kMaxJsonDepth, what, " nests ", depth, " levels deep; the limit is ",
               kMaxJsonDepth);
  return OkStatus();
}

namespace {

StatusOr<nlohmann::json> ParseFilterValue(const std::string& field, const std::string& value) {
  RS_RETURN_IF_ERROR(CheckJsonDepth(value, StrCat("filter on '", field, "': value")));
  auto j = nlohmann::json::parse(value, nullptr, false);
  RS_CHECK_ARG(!j.is_discarded(), "filter on '", field, "': value ", value.substr(0, 64),
               " is not JSON (write strings quoted, e.g. \"\\\"x\\\"\")");
  return j;
}

Status CheckRange(const std::string& field, const NumericRange& r) {
  RS_CHECK_ARG(r.gt || r.gte || r.lt || r.lte, "filter on '", field, "': range has no bound");
  for (const auto& b : {r.gt, r.gte, r.lt, r.lte}) {
    RS_CHECK_ARG(!b || !std::isnan(*b), "filter on '", field, "': range bound is NaN");
  }
  return OkStatus();
}

bool InRange(const nlohmann::json& v, const NumericRange& r) {
  if (!v.is_number()) return false;
  const double x = v.get<double>();
  return (!r.gt || x > *r.gt) && (!r.gte || x >= *r.gte) && (!r.lt || x < *r.lt) &&
         (!r.lte || x <= *r.lte);
}

}  // namespace

StatusOr<MetadataFilter> MetadataFilter::Compile(const SearchOptions& o) {
  MetadataFilter f;
  for (const auto& [field, value] : o.filter_equals) {
    RS_ASSIGN_OR_RETURN(auto j, ParseFilterValue(field, value));
    f.equals_.emplace_back(field, std::move(j));
  }
  for (const auto& [field, range] : o.filter_ranges) {
    RS_RETURN_IF_ERROR(CheckRange(field, range));
    f.ranges_.emplace_back(field, range);
  }
  for (const auto& [field, values] : o.filter_any_of) {
    RS_CHECK_ARG(!values.empty() && values.size() <= kMaxAnyOfValues, "filter on '", field,
                 "': any_of needs 1..", kMaxAnyOfValues, " values, got ", values.size());
    std::vector<nlohmann::json> parsed;
    for (const auto& v : values) {
      RS_ASSIGN_OR_RETURN(auto j, ParseFilterValue(field, v));
      parsed.push_back(std::move(j));
    }
    f.any_of_.emplace_back(field, std::move(parsed));
  }
  return f;
}

bool MetadataFilter::Matches(const nlohmann::json& metadata) const {
  for (const auto& [field, value] : equals_) {
    auto it = metadata.find(field);
    if (it == metadata.end() || *it != value) return false;
  }
  for (const auto& [field, range] : ranges_) {
    auto it = metadata.find(field);
    if (it == metadata.end() || !InRange(*it, range)) return false;
  }
  for (const auto& [field, values] : any_of_) {
    auto it = metadata.find(field);
    if (it == metadata.end() || std::find(values.begin(), values.end(), *it) == values.end()) {
      return false;
    }
  }
  return true;
}

int FusionDepth(int k) { return std::min(kMaxK, std::max(4 * k, 50)); }

namespace {

// Min-max normalised scores of a list (all 1 when they are equal).
std::vector<double> Normalised(const RankedList& list, bool larger_better) {
  std::vector<double> s(list.size());
  for (size_t i = 0; i < list.size(); ++i) {
    s[i] = larger_better ? list[i].second : -static_cast<double>(list[i].second);
  }
  if (s.empty()) return s;
  const auto [lo, hi] = std::minmax_element(s.begin(), s.end());
  const double min = *lo, span = *hi - *lo;
  for (double& x : s) x = span > 0 ? (x - min) / span : 1.0;
  return s;
}

}  // namespace

RankedList Fuse(const RankedList& dense, const RankedList& lexical, bool dense_larger_better,
                const FusionSpec& fusion, int k) {
  std::unordered_map<int64_t, double> fused;
  if (fusion.method == "weighted") {
    const std::vector<double> d = Normalised(dense, dense_larger_better);
    const std::vector<double> l = Normalised(lexical, true);
    for (size_t i = 0; i < dense.size(); ++i) fused[dense[i].first] += fusion.dense_weight * d[i];
    for (size_t i = 0; i < lexical.size(); ++i) {
      fused[lexical[i].first] += (1 - fusion.dense_weight) * l[i];
    }
  } else {
    for (size_t i = 0; i < dense.size(); ++i) {
      fused[dense[i].first] += 1.0 / (fusion.rrf_k + static_cast<double>(i + 1));
    }
    for (size_t i = 0; i < lexical.size(); ++i) {
      fused[lexical[i].first] += 1.0 / (fusion.rrf_k + static_cast<double>(i + 1));
    }
  }
  std::vector<std::pair<double, int64_t>> all;
  all.reserve(fused.size());
  for (const auto& [label, score] : fused) all.emplace_back(score, label);
  const size_t keep = std::min(all.size(), static_cast<size_t>(std::max(k, 0)));
  std::partial_sort(all.begin(), all.begin() + keep, all.end(), [](const auto& x, const auto& y) {
    return x.first != y.first ? x.first > y.first : x.second < y.second;
  });
  RankedList out;
  out.reserve(keep);
  for (size_t i = 0; i < keep; ++i)
    out.emplace_back(all[i].second, static_cast<float>(all[i].first));
  return out;
}

}  // namespace ragserve::collection
