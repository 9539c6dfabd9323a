#include "index/ivf.h"

#include <faiss/IndexFlat.h>
#include <faiss/IndexIVFFlat.h>
#include <faiss/IndexIVFPQ.h>
#include <faiss/impl/FaissException.h>
#include <faiss/impl/IDSelector.h>
#include <faiss/impl/io.h>
#include <faiss/index_io.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "index/internal/faiss_selector.h"
#include "index/internal/index_file.h"
#include "index/internal/index_util.h"

namespace ragserve::index {

namespace {
using idx_t = faiss::Index::idx_t;

using internal::FunctionSelector;

int AutoPqM(int dim) {
  for (int m = std::max(1, dim / 4); m >= 1; --m) {
    if (dim % m == 0) return m;
  }
  return 1;
}

faiss::MetricType FaissMetric(Metric m) {
  return m == Metric::kL2 ? faiss::METRIC_L2 : faiss::METRIC_INNER_PRODUCT;
}
}  // namespace

Status ValidateIvfParams(const IvfParams& p, int dim, bool pq) {
  RS_CHECK_ARG(p.nlist >= 0, "ivf: nlist must be >= 0 (0 = automatic), got ", p.nlist);
  RS_CHECK_ARG(p.nprobe >= 0, "ivf: nprobe must be >= 0 (0 = automatic), got ", p.nprobe);
  RS_CHECK_ARG(p.kmeans_iterations >= 1, "ivf: kmeans_iterations must be >= 1, got ",
               p.kmeans_iterations);
  if (pq) {
    RS_CHECK_ARG(p.pq_m >= 0, "ivf_pq: pq_m must be >= 0 (0 = automatic), got ", p.pq_m);
    RS_CHECK_ARG(p.pq_m == 0 || dim % p.pq_m == 0, "ivf_pq: pq_m=", p.pq_m,
                 " must divide the dimension ", dim);
    RS_CHECK_ARG(p.pq_nbits >= 1 && p.pq_nbits <= 16, "ivf_pq: pq_nbits must be in [1, 16], got ",
                 p.pq_nbits);
  }
  return OkStatus();
}

IvfIndex::IvfIndex(int dim, Metric metric, bool pq, const IvfParams& params)
    : dim_(dim), metric_(metric), pq_(pq), params_(params) {}

IvfIndex::~IvfIndex() = default;

StatusOr<std::unique_ptr<IvfIndex>> IvfIndex::Create(int dim, Metric metric, bool pq,
                                                     const IvfParams& params) {
  RS_CHECK_ARG(dim >= 1, "ivf: dim must be >= 1, got ", dim);
  RS_RETURN_IF_ERROR(ValidateIvfParams(params, dim, pq));
  IvfParams p = params;
  if (pq && p.pq_m == 0) p.pq_m = AutoPqM(dim);
  return std::unique_ptr<IvfIndex>(new IvfIndex(dim, metric, pq, p));
}

int64_t IvfIndex::size() const {
  ReaderMutexLock lock(mu_);
  return static_cast<int64_t>(present_.size());
}

bool IvfIndex::needs_training() const {
  ReaderMutexLock lock(mu_);
  return ivf_ == nullptr;
}

IvfParams IvfIndex::params() const {
  ReaderMutexLock lock(mu_);
  IvfParams p = params_;
  if (ivf_ != nullptr && p.nprobe == 0) p.nprobe = DefaultNprobe();
  return p;
}

int IvfIndex::DefaultNprobe() const {
  return std::min(params_.nlist, std::max(16, params_.nlist / 8));
}

int64_t IvfIndex::memory_bytes() const {
  ReaderMutexLock lock(mu_);
  if (ivf_ == nullptr) return 0;
  const size_t code = ivf_->code_size;
  return static_cast<int64_t>(
      ivf_->ntotal * (code + sizeof(idx_t)) + ivf_->nlist * dim_ * sizeof(float) +
      (pq_ ? params_.pq_m * (size_t{1} << params_.pq_nbits) * (dim_ / params_.pq_m) * 4 : 0) +
      present_.size() * 32);
}

int64_t IvfIndex::memory_bytes_to_add(int64_t n) const {
  if (n <= 0) return 0;
  int64_t per_vector = 0;
  {
    ReaderMutexLock lock(mu_);
    if (ivf_ != nullptr) {
      per_vector = 2 * static_cast<int64_t>(ivf_->code_size + sizeof(idx_t)) + 32;
    }
  }
  if (per_vector == 0) return VectorIndex::memory_bytes_to_add(n);
  int64_t bytes = 0;
  if (__builtin_mul_overflow(n, per_vector, &bytes)) return INT64_MAX;
  return bytes;
}

Status IvfIndex::train(int64_t n, const float* x) {
  RS_RETURN_IF_ERROR(internal::CheckTrainArgs(n, x, dim_, "ivf"));
  WriterMutexLock lock(mu_);
  if (ivf_ != nullptr) return FailedPrecondition("ivf: index is already trained");
  const int nlist = params_.nlist > 0
                        ? params_.nlist
                        : static_cast<int>(std::clamp<double>(
                              std::round(4 * std::sqrt(static_cast<double>(n))), 1, n));
  RS_CHECK_ARG(n >= nlist, "ivf: training needs at least nlist=", nlist, " vectors, got ", n);
  if (pq_) {
    const int64_t need = int64_t{1} << params_.pq_nbits;
    RS_CHECK_ARG(n >= need, "ivf_pq: training needs at least 2^pq_nbits=", need, " vectors, got ",
                 n);
  }
  std::vector<float> normalized;
  x = internal::MetricInput(metric_, n, dim_, x, &normalized);
  try {
    auto* quantizer = new faiss::IndexFlat(dim_, FaissMetric(metric_));
    std::unique_ptr<faiss::IndexIVF> ivf;
    if (pq_) {
      ivf = std::make_unique<faiss::IndexIVFPQ>(quantizer, dim_, nlist, params_.pq_m,
                                                params_.pq_nbits, FaissMetric(metric_));
    } else {
      ivf = std::make_unique<faiss::IndexIVFFlat>(quantizer, dim_, nlist, FaissMetric(metric_));
    }
    ivf->own_fields = true;
    ivf->cp.niter = params_.kmeans_iterations;
    ivf->cp.seed = params_.seed;
    ivf->train(n, x);
    ivf_ = std::move(ivf);
  } catch (const std::exception& e) {
    return InvalidArgument(
        StrCat("ivf: training on ", n, " vectors with nlist=", nlist, " failed: ", e.what()));
  }
  params_.nlist = nlist;
  return OkStatus();
}

Status IvfIndex::add(int64_t n, const float* x, const int64_t* ids) {
  RS_RETURN_IF_ERROR(internal::CheckAddArgs(n, x, ids, dim_));
  if (n == 0) return OkStatus();
  std::vector<float> normalized;
  x = internal::MetricInput(metric_, n, dim_, x, &normalized);
  WriterMutexLock lock(mu_);
  if (ivf_ == nullptr) {
    return FailedPrecondition(
        StrCat("ivf: index must be trained before add (", n, " vectors offered)"));
  }
  const std::vector<int64_t> order = internal::LastOccurrences(n, ids);
  std::vector<idx_t> replace;
  for (int64_t i : order) {
    if (present_.count(ids[i])) replace.push_back(ids[i]);
  }
  std::vector<float> xs;
  std::vector<idx_t> xids;
  if (static_cast<int64_t>(order.size()) != n) {
    xs.reserve(order.size() * dim_);
    for (int64_t i : order) {
      xs.insert(xs.end(), x + i * dim_, x + (i + 1) * dim_);
      xids.push_back(ids[i]);
    }
  } else {
    xids.assign(ids, ids + n);
  }
  try {
    if (!replace.empty()) {
      faiss::IDSelectorBatch sel(replace.size(), replace.data());
      ivf_->remove_ids(sel);
    }
    ivf_->add_with_ids(static_cast<idx_t>(xids.size()), xs.empty() ? x : xs.data(), xids.data());
  } catch (const std::exception& e) {
    return Internal(StrCat("ivf: add failed: ", e.what()));
  }
  present_.insert(xids.begin(), xids.end());
  return OkStatus();
}

void IvfIndex::SearchLists(int64_t n, const float* q, int k, int nprobe,
                           const faiss::IDSelector* sel, float* distances, int64_t* ids,
                           SearchStats* stats) const {
  static_assert(sizeof(idx_t) == sizeof(int64_t));
  auto* labels = reinterpret_cast<idx_t*>(ids);
  faiss::SearchParametersIVF sp;
  sp.nprobe = nprobe;
  sp.sel = const_cast<faiss::IDSelector*>(sel);  // FAISS takes it non-const, only reads it
  const int slices = static_cast<int>(std::min<int64_t>(omp_get_max_threads(), n));
  std::vector<faiss::IndexIVFStats> slice_stats(slices);
  std::vector<std::string> errors(slices);
#pragma omp parallel for if (slices > 1)
  for (int s = 0; s < slices; ++s) {
    const int64_t i0 = n * s / slices, m = n * (s + 1) / slices - i0;
    try {
      std::vector<idx_t> assign(static_cast<size_t>(m) * nprobe);
      std::vector<float> coarse(static_cast<size_t>(m) * nprobe);
      ivf_->quantizer->search(m, q + i0 * dim_, nprobe, coarse.data(), assign.data());
      ivf_->search_preassigned(m, q + i0 * dim_, k, assign.data(), coarse.data(),
                               distances + i0 * k, labels + i0 * k, false, &sp, &slice_stats[s]);
    } catch (const std::exception& e) {
      errors[s] = e.what();
    }
  }
  for (const std::string& e : errors) {
    if (!e.empty()) throw std::runtime_error(e);
  }
  if (stats == nullptr) return;
  for (const auto& st : slice_stats) stats->scored += static_cast<int64_t>(st.ndis);
  stats->hops += n * nprobe;
}

void IvfIndex::WidenShortRows(int64_t n, const float* q, int k, int nprobe,
                              const faiss::IDSelector* sel, float* distances, int64_t* ids,
                              SearchStats* stats) const {
  const int nlist = params_.nlist;
  for (int64_t i = 0; i < n; ++i) {
    int probe = nprobe;
    while (ids[i * k + k - 1] < 0 && probe < nlist) {
      probe = std::min(nlist, probe * 4);
      SearchLists(1, q + i * dim_, k, probe, sel, distances + i * k, ids + i * k, stats);
    }
  }
}

Status IvfIndex::search(int64_t n, const float* q, int k, float* distances, int64_t* ids,
                        const SearchParams& params) const {
  RS_RETURN_IF_ERROR(internal::CheckSearchArgs(n, q, k, distances, ids, dim_));
  RS_CHECK_ARG(params.nprobe >= 0, "ivf: nprobe must be >= 0, got ", params.nprobe);
  if (n == 0) return OkStatus();
  std::vector<float> normalized;
  q = internal::MetricInput(metric_, n, dim_, q, &normalized);
  ReaderMutexLock lock(mu_);
  if (ivf_ == nullptr || present_.empty()) {
    for (int64_t i = 0; i < n; ++i) internal::PadRow(metric_, k, distances + i * k, ids + i * k);
    return OkStatus();
  }
  int nprobe =
      params.nprobe > 0 ? params.nprobe : (params_.nprobe > 0 ? params_.nprobe : DefaultNprobe());
  nprobe = std::min(nprobe, params_.nlist);
  std::unique_ptr<FunctionSelector> selector;
  if (params.filter != nullptr) selector = std::make_unique<FunctionSelector>(params.filter);
  try {
    SearchLists(n, q, k, nprobe, selector.get(), distances, ids, params.stats);
    if (selector != nullptr) {
      WidenShortRows(n, q, k, nprobe, selector.get(), distances, ids, params.stats);
    }
  } catch (const std::exception& e) {
    return Internal(StrCat("ivf: search failed: ", e.what()));
  }
  const float pad = HigherIsBetter(metric_) ? -std::numeric_limits<float>::infinity()
                                            : std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < n * k; ++i) {
    if (ids[i] < 0) {
      ids[i] = -1;
      distances[i] = pad;
    }
  }
  return OkStatus();
}

StatusOr<int64_t> IvfIndex::remove(int64_t n, const int64_t* ids) {
  RS_RETURN_IF_ERROR(internal::CheckRemoveArgs(n, ids));
  WriterMutexLock lock(mu_);
  std::vector<idx_t> gone;
  for (int64_t i = 0; i < n; ++i) {
    if (present_.erase(ids[i])) gone.push_back(ids[i]);
  }
  if (gone.empty()) return int64_t{0};
  try {
    faiss::IDSelectorBatch sel(gone.size(), gone.data());
    ivf_->remove_ids(sel);
  } catch (const std::exception& e) {
    return Internal(StrCat("ivf: remove failed: ", e.what()));
  }
  return static_cast<int64_t>(gone.size());
}

Status IvfIndex::save(const std::string& path) const {
  std::string payload;
  {
    ReaderMutexLock lock(mu_);
    internal::Put<int32_t>(&payload, params_.nlist);
    internal::Put<int32_t>(&payload, params_.nprobe);
    internal::Put<int32_t>(&payload, params_.pq_m);
    internal::Put<int32_t>(&payload, params_.pq_nbits);
    internal::Put<int32_t>(&payload, params_.kmeans_iterations);
    internal::Put<int32_t>(&payload, params_.seed);
    internal::Put<uint8_t>(&payload, ivf_ != nullptr ? 1 : 0);
    if (ivf_ != nullptr) {
      faiss::VectorIOWriter w;
      try {
        faiss::write_index(ivf_.get(), &w);
      } catch (const std::exception& e) {
        return Internal(StrCat("ivf: serializing failed: ", e.what()));
      }
      payload.append(reinterpret_cast<const char*>(w.data.data()), w.data.size());
    }
  }
  return internal::WriteIndexFile(
      path, {pq_ ? internal::kIvfPqCode : internal::kIvfFlatCode, metric_, dim_}, payload);
}

StatusOr<std::unique_ptr<IvfIndex>> IvfIndex::Load(const std::string& path) {
  const auto file =
      internal::ReadIndexFileOfKind(path, {internal::kIvfFlatCode, internal::kIvfPqCode}, "an ivf");
  RS_RETURN_IF_ERROR(file.status());
  const internal::FileHeader& h = file->header;
  const bool pq = h.kind_code == internal::kIvfPqCode;
  internal::Reader r(file->payload);
  IvfParams p;
  uint8_t trained = 0;
  if (!r.Get(&p.nlist) || !r.Get(&p.nprobe) || !r.Get(&p.pq_m) || !r.Get(&p.pq_nbits) ||
      !r.Get(&p.kmeans_iterations) || !r.Get(&p.seed) || !r.Get(&trained) ||
      !ValidateIvfParams(p, h.dim, pq).ok()) {
    return DataLoss(StrCat("ivf index file ", path, " has a bad parameter block"));
  }
  auto index = std::unique_ptr<IvfIndex>(new IvfIndex(h.dim, h.metric, pq, p));
  if (!trained) return index;
  faiss::VectorIOReader reader;
  const std::string_view rest = r.rest();
  reader.data.assign(rest.begin(), rest.end());
  try {
    std::unique_ptr<faiss::Index> raw(faiss::read_index(&reader));
    auto* ivf = dynamic_cast<faiss::IndexIVF*>(raw.get());
    if (ivf == nullptr || ivf->d != h.dim) {
      return DataLoss(StrCat("ivf index file ", path, " holds no IVF index of dim ", h.dim));
    }
    raw.release();
    WriterMutexLock lock(index->mu_);  // not shared yet; held so that the analysis checks this
    index->ivf_.reset(ivf);
    auto* invlists = ivf->invlists;
    for (size_t l = 0; l < invlists->nlist; ++l) {
      const size_t ls = invlists->list_size(l);
      faiss::InvertedLists::ScopedIds lids(invlists, l);
      for (size_t j = 0; j < ls; ++j) index->present_.insert(lids[j]);
    }
  } catch (const std::exception& e) {
    return DataLoss(StrCat("ivf index file ", path, " could not be read: ", e.what()));
  }
  return index;
}

}  // namespace ragserve::index
