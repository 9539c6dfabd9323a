// Creating, building and loading any ragserve vector index by kind name.
//
// Kinds a collection can create: "flat", "hnsw", "ivf_flat", "ivf_pq"; LoadIndex also reads
// "attention_aware" (built from prefill queries by the KV retrieval store). Parameters travel as a
// JSON object whose keys are the fields of HnswParams / IvfParams (M, ef_construction, ef_search,
// initial_capacity, nlist, nprobe, pq_m, pq_nbits); a key that does not apply to the kind is
// InvalidArgument.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "index/attention_aware.h"
#include "index/flat.h"
#include "index/hnsw.h"
#include "index/ivf.h"
#include "index/vector_index.h"

namespace ragserve::index {

struct IndexSpec {
  std::string kind = "hnsw";
  Metric metric = Metric::kL2;
  int dim = 0;
  HnswParams hnsw;
  IvfParams ivf;
};

// Validates kind/dim and parses `params_json` ("" or "{}" = defaults). InvalidArgument naming
// the bad kind, key or value.
StatusOr<IndexSpec> MakeIndexSpec(std::string_view kind, Metric metric, int dim,
                                  std::string_view params_json);
// The spec's parameters as a JSON object (only the keys of its kind).
std::string IndexParamsJson(const IndexSpec& spec);
// An empty index (IVF kinds untrained).
StatusOr<std::unique_ptr<VectorIndex>> CreateIndex(const IndexSpec& spec);
// An index holding x[n*dim] with ids[n]; IVF kinds are trained on x first (so n must reach the
// training minimum). n == 0 yields an empty (for IVF: untrained) index.
StatusOr<std::unique_ptr<VectorIndex>> BuildIndex(const IndexSpec& spec, int64_t n, const float* x,
                                                  const int64_t* ids);
// Loads any file written by VectorIndex::save(). NotFound when missing, DataLoss when corrupt,
// FailedPrecondition when written by a newer ragserve (a newer file format).
StatusOr<std::unique_ptr<VectorIndex>> LoadIndex(const std::string& path);

}  // namespace ragserve::index
