// Pieces of a collection search that do not touch its state (part of the collection core):
// metadata filters and the fusion of ranked lists.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "services/common/status.h"
#include "services/index/collection.h"

namespace ragserve::collection {

// Deepest nesting of [ and { in JSON text (outside strings), scanned without recursion.
int JsonNestingDepth(std::string_view text);
// InvalidArgument when `text` nests deeper than kMaxJsonDepth (`what` names it).
Status CheckJsonDepth(std::string_view text, std::string_view what);

// A compiled metadata filter: equality, numeric ranges and any-of lists, all of which must hold.
class MetadataFilter {
 public:
  // InvalidArgument for a value that is not JSON, a range with no bound or a NaN bound, an empty
  // or oversized any-of list.
  static StatusOr<MetadataFilter> Compile(const SearchOptions& o);
  bool empty() const { return equals_.empty() && ranges_.empty() && any_of_.empty(); }
  bool Matches(const nlohmann::json& metadata) const;

 private:
  std::vector<std::pair<std::string, nlohmann::json>> equals_;
  std::vector<std::pair<std::string, NumericRange>> ranges_;
  std::vector<std::pair<std::string, std::vector<nlohmann::json>>> any_of_;
};

inline constexpr size_t kMaxAnyOfValues = 1024;

// Ranked lists: (label, score), best first.
using RankedList = std::vector<std::pair<int64_t, float>>;

// Fuses a dense and a BM25 list into the k best (label, fused score), best first; ties go to
// the smaller label. `dense_larger_better` is false for L2 distances (they are negated before
// min-max normalisation in weighted fusion).
RankedList Fuse(const RankedList& dense, const RankedList& lexical, bool dense_larger_better,
                const FusionSpec& fusion, int k);

// Candidates each retriever returns for a fused top-k: deeper lists make RRF and weighted fusion
// see documents that only one retriever ranks high.
int FusionDepth(int k);

}  // namespace ragserve::collection
