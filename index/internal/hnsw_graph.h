// HnswGraph: a thin, unlocked wrapper of hnswlib 0.6.2's HierarchicalNSW<float>.
//
// index/hnsw_graph.cc is the only translation unit that includes hnswlib: its headers define
// non-inline globals (cpuid(), the SIMD dispatch pointers), so a second one in a binary would not
// link. HnswIndex builds on this class (adding argument checks, locking, cosine, filters, the
// file envelope); index_bench uses it directly as the "raw hnswlib" baseline.
//
// Distances are hnswlib's: squared L2 (kL2) or 1 - q.x (kInnerProduct); smaller is better.
// With count_distances, every distance computed by a search is counted (a wrapping distance
// function: one more indirect call per distance).
// Thread safety: Search() may run concurrently with Search() and with Add() of distinct labels
// (hnswlib locks per node); everything else needs exclusive access. hnswlib reports failures by
// exceptions, and so do Resize(), Add() and Search() (std::exception).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "services/common/status.h"

namespace ragserve::index::internal {

class HnswGraph {
 public:
  enum class Space { kL2, kInnerProduct };
  struct Options {
    int dim = 0;
    Space space = Space::kL2;
    int M = 16;
    int ef_construction = 200;
    uint64_t seed = 100;
    bool count_distances = false;
  };
  enum class Label { kAbsent, kLive, kDeleted };

  // An empty graph with `capacity` slots (throws std::bad_alloc when they cannot be allocated).
  HnswGraph(const Options& o, size_t capacity);
  // A graph read from hnswlib's saveIndex body, which is validated first (every size, count,
  // neighbour id and label, against the options): DataLoss on a malformed body. hnswlib reads
  // only files: `scratch` is a temporary path for that, removed afterwards. Capacity = the
  // element count (the body's own max_elements is not trusted).
  static StatusOr<std::unique_ptr<HnswGraph>> Load(const Options& o, std::string_view body,
                                                   const std::string& scratch);
  ~HnswGraph();
  HnswGraph(const HnswGraph&) = delete;
  HnswGraph& operator=(const HnswGraph&) = delete;

  // hnswlib's saveIndex body (through the temporary file `scratch`, removed afterwards).
  StatusOr<std::string> Save(const std::string& scratch) const;

  const Options& options() const { return options_; }
  // Allocated slots; slots holding an element (live or deleted); deleted elements.
  size_t capacity() const;
  size_t used() const;
  size_t deleted() const;
  // Bytes of the level-0 block, per-element overhead and the upper-level link lists
  // (amortised O(1): each element's levels are summed once).
  int64_t memory_bytes() const;
  // Bytes memory_bytes() counts per allocated slot, and per upper level of an element.
  int64_t slot_bytes() const;
  int64_t upper_level_bytes() const;

  Label Find(int64_t label) const;
  // Grows to `capacity` slots.
  void Resize(size_t capacity);
  // Inserts x under `label`, absent from the graph. Needs a free slot and no deleted element in
  // the graph (hnswlib 0.6.2 reads before a buffer when an insertion's search finds only deleted
  // elements): put new labels in deleted slots first (Reuse).
  void Insert(const float* x, int64_t label);
  // Replaces the vector of `label`, in the graph live or deleted (reviving it).
  void Replace(const float* x, int64_t label);
  // Up to `max` slots holding deleted elements (a scan of the slots).
  std::vector<int64_t> DeletedSlots(size_t max) const;
  // Gives the deleted element in `slot` the new `label` (absent from the graph) and vector x,
  // repairing its links as a replaced vector's (hnswlib's updatePoint, which guards the case
  // that Insert does not). May run concurrently with Insert(), Replace() and Reuse() of other
  // labels and slots.
  void Reuse(int64_t slot, const float* x, int64_t label);
  // Marks a live label deleted: it stays a graph node and is never returned.
  void MarkDeleted(int64_t label);
  // The up to k nearest (distance, label) of q, best first, searched with a candidate list of
  // max(ef, k). Adds the distances computed to *computed when counting (else leaves it).
  void Search(const float* q, size_t k, size_t ef, std::vector<std::pair<float, int64_t>>* out,
              int64_t* computed) const;

 private:
  struct Impl;
  explicit HnswGraph(const Options& o);
  const Options options_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ragserve::index::internal
