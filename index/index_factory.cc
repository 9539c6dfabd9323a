#include "index/index_factory.h"

#include <nlohmann/json.hpp>

#include "index/internal/index_file.h"

namespace ragserve::index {

namespace {
bool IsIvf(std::string_view kind) { return kind == "ivf_flat" || kind == "ivf_pq"; }

Status ReadInt(const nlohmann::json& v, std::string_view key, int64_t lo, int64_t hi,
               int64_t* out) {
  if (!v.is_number_integer()) {
    return InvalidArgument(StrCat("index param '", key, "' must be an integer, got ", v.dump()));
  }
  const int64_t x = v.get<int64_t>();
  RS_CHECK_ARG(x >= lo && x <= hi, "index param '", key, "' must be in [", lo, ", ", hi, "], got ",
               x);
  *out = x;
  return OkStatus();
}
}  // namespace

StatusOr<IndexSpec> MakeIndexSpec(std::string_view kind, Metric metric, int dim,
                                  std::string_view params_json) {
  RS_CHECK_ARG(kind == "flat" || kind == "hnsw" || IsIvf(kind), "unknown index kind '", kind,
               "' (expected flat, hnsw, ivf_flat or ivf_pq)");
  RS_CHECK_ARG(dim >= 1 && dim <= 65536, "dimension must be in [1, 65536], got ", dim);
  IndexSpec spec;
  spec.kind = std::string(kind);
  spec.metric = metric;
  spec.dim = dim;
  nlohmann::json j = nlohmann::json::object();
  if (!params_json.empty()) {
    try {
      j = nlohmann::json::parse(params_json);
    } catch (const std::exception& e) {
      return InvalidArgument(StrCat("index params are not valid JSON: ", e.what()));
    }
    RS_CHECK_ARG(j.is_object(), "index params must be a JSON object, got ", j.dump());
  }
  for (const auto& [key, v] : j.items()) {
    int64_t x = 0;
    if (spec.kind == "hnsw" && key == "M") {
      RS_RETURN_IF_ERROR(ReadInt(v, key, 2, 2048, &x));
      spec.hnsw.M = static_cast<int>(x);
    } else if (spec.kind == "hnsw" && key == "ef_construction") {
      RS_RETURN_IF_ERROR(ReadInt(v, key, 1, 1 << 20, &x));
      spec.hnsw.ef_construction = static_cast<int>(x);
    } else if (spec.kind == "hnsw" && key == "ef_search") {
      RS_RETURN_IF_ERROR(ReadInt(v, key, 1, 1 << 20, &x));
      spec.hnsw.ef_search = static_cast<int>(x);
    } else if (spec.kind == "hnsw" && key == "initial_capacity") {
      RS_RETURN_IF_ERROR(ReadInt(v, key, 1, int64_t{1} << 40, &x));
      spec.hnsw.initial_capacity = x;
    } else if (IsIvf(spec.kind) && key == "nlist") {
      RS_RETURN_IF_ERROR(ReadInt(v, key, 0, 1 << 24, &x));
      spec.ivf.nlist = static_cast<int>(x);
    } else if (IsIvf(spec.kind) && key == "nprobe") {
      RS_RETURN_IF_ERROR(ReadInt(v, key, 0, 1 << 24, &x));
      spec.ivf.nprobe = static_cast<int>(x);
    } else if (spec.kind == "ivf_pq" && key == "pq_m") {
      RS_RETURN_IF_ERROR(ReadInt(v, key, 0, dim, &x));
      spec.ivf.pq_m = static_cast<int>(x);
    } else if (spec.kind == "ivf_pq" && key == "pq_nbits") {
      RS_RETURN_IF_ERROR(ReadInt(v, key, 1, 16, &x));
      spec.ivf.pq_nbits = static_cast<int>(x);
    } else {
      return InvalidArgument(StrCat("index param '", key, "' does not apply to kind ", kind));
    }
  }
  if (spec.kind == "hnsw") RS_RETURN_IF_ERROR(ValidateHnswParams(spec.hnsw));
  if (IsIvf(spec.kind)) RS_RETURN_IF_ERROR(ValidateIvfParams(spec.ivf, dim, kind == "ivf_pq"));
  return spec;
}

std::string IndexParamsJson(const IndexSpec& spec) {
  nlohmann::json j = nlohmann::json::object();
  if (spec.kind == "hnsw") {
    j["M"] = spec.hnsw.M;
    j["ef_construction"] = spec.hnsw.ef_construction;
    j["ef_search"] = spec.hnsw.ef_search;
  } else if (IsIvf(spec.kind)) {
    j["nlist"] = spec.ivf.nlist;
    j["nprobe"] = spec.ivf.nprobe;
    if (spec.kind == "ivf_pq") {
      j["pq_m"] = spec.ivf.pq_m;
      j["pq_nbits"] = spec.ivf.pq_nbits;
    }
  }
  return j.dump();
}

StatusOr<std::unique_ptr<VectorIndex>> CreateIndex(const IndexSpec& spec) {
  if (spec.kind == "flat") {
    RS_ASSIGN_OR_RETURN(auto idx, FlatIndex::Create(spec.dim, spec.metric));
    return std::unique_ptr<VectorIndex>(std::move(idx));
  }
  if (spec.kind == "hnsw") {
    RS_ASSIGN_OR_RETURN(auto idx, HnswIndex::Create(spec.dim, spec.metric, spec.hnsw));
    return std::unique_ptr<VectorIndex>(std::move(idx));
  }
  if (IsIvf(spec.kind)) {
    RS_ASSIGN_OR_RETURN(auto idx,
                        IvfIndex::Create(spec.dim, spec.metric, spec.kind == "ivf_pq", spec.ivf));
    return std::unique_ptr<VectorIndex>(std::move(idx));
  }
  return InvalidArgument(StrCat("unknown index kind '", spec.kind, "'"));
}

StatusOr<std::unique_ptr<VectorIndex>> BuildIndex(const IndexSpec& spec, int64_t n, const float* x,
                                                  const int64_t* ids) {
  RS_CHECK_ARG(n >= 0, "build: n must be >= 0, got ", n);
  IndexSpec s = spec;
  if (s.kind == "hnsw") s.hnsw.initial_capacity = std::max<int64_t>(s.hnsw.initial_capacity, n);
  RS_ASSIGN_OR_RETURN(auto idx, CreateIndex(s));
  if (n == 0) return idx;
  if (idx->needs_training()) RS_RETURN_IF_ERROR(idx->train(n, x));
  RS_RETURN_IF_ERROR(idx->add(n, x, ids));
  return idx;
}

StatusOr<std::unique_ptr<VectorIndex>> LoadIndex(const std::string& path) {
  internal::FileHeader h;
  std::string payload;
  RS_RETURN_IF_ERROR(internal::ReadIndexFile(path, &h, &payload));
  payload.clear();
  switch (h.kind_code) {
    case internal::kFlatCode: {
      RS_ASSIGN_OR_RETURN(auto idx, FlatIndex::Load(path));
      return std::unique_ptr<VectorIndex>(std::move(idx));
    }
    case internal::kHnswCode: {
      RS_ASSIGN_OR_RETURN(auto idx, HnswIndex::Load(path));
      return std::unique_ptr<VectorIndex>(std::move(idx));
    }
    case internal::kIvfFlatCode:
    case internal::kIvfPqCode: {
      RS_ASSIGN_OR_RETURN(auto idx, IvfIndex::Load(path));
      return std::unique_ptr<VectorIndex>(std::move(idx));
    }
    case internal::kAttentionAwareCode: {
      RS_ASSIGN_OR_RETURN(auto idx, AttentionAwareIndex::Load(path));
      return std::unique_ptr<VectorIndex>(std::move(idx));
    }
    default:
      return DataLoss(StrCat("index file ", path, " has unknown kind code ", h.kind_code));
  }
}

}  // namespace ragserve::index
