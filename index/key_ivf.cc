#include "index/key_ivf.h"

#include <faiss/IndexFlat.h>
#include <faiss/IndexIVFFlat.h>
#include <faiss/impl/IDSelector.h>
#include <faiss/index_io.h>

#include <cmath>
#include <filesystem>
#include <limits>
#include <mutex>
#include <vector>

#include "index/internal/faiss_selector.h"

namespace ragserve::index {

KeyIvfIndex::KeyIvfIndex(int dim, const KeyIvfParams& p) : dim_(dim), params_(p) {}
KeyIvfIndex::~KeyIvfIndex() = default;

StatusOr<std::unique_ptr<KeyIvfIndex>> KeyIvfIndex::Create(int dim, const KeyIvfParams& p) {
  RS_CHECK_ARG(dim >= 1, "dim must be >= 1, got ", dim);
  RS_CHECK_ARG(p.nlist >= 0, "nlist must be >= 0, got ", p.nlist);
  RS_CHECK_ARG(p.nprobe >= 1, "nprobe must be >= 1, got ", p.nprobe);
  return std::unique_ptr<KeyIvfIndex>(new KeyIvfIndex(dim, p));
}

int64_t KeyIvfIndex::memory_bytes() const {
  std::shared_lock lock(mu_);
  if (ivf_ == nullptr) return 0;
  // Inverted lists (code + id per vector) and the coarse centroids.
  return static_cast<int64_t>(ivf_->ntotal * (ivf_->code_size + sizeof(faiss::Index::idx_t)) +
                              ivf_->nlist * dim_ * sizeof(float));
}

int64_t KeyIvfIndex::size() const {
  std::shared_lock lock(mu_);
  return ivf_ ? static_cast<int64_t>(ivf_->ntotal) : 0;
}

bool KeyIvfIndex::needs_training() const {
  std::shared_lock lock(mu_);
  return ivf_ == nullptr;
}

Status KeyIvfIndex::train(int64_t n, const float* x) {
  RS_CHECK_ARG(x != nullptr || n == 0, "null training vectors");
  RS_RETURN_IF_ERROR(CheckFinite(x, n * dim_, "training key"));
  const int nlist = params_.nlist > 0
                        ? params_.nlist
                        : std::max(1, static_cast<int>(4 * std::sqrt(static_cast<double>(n))));
  if (n < nlist) {
    return FailedPrecondition(StrCat("IVF training needs >= nlist=", nlist, " keys, got ", n));
  }
  std::unique_lock lock(mu_);
  try {
    auto q = std::make_unique<faiss::IndexFlatIP>(dim_);
    auto ivf = std::make_unique<faiss::IndexIVFFlat>(q.get(), dim_, static_cast<size_t>(nlist),
                                                     faiss::METRIC_INNER_PRODUCT);
    ivf->cp.seed = 1234;
    ivf->train(n, x);
    quantizer_ = std::move(q);
    ivf_ = std::move(ivf);
  } catch (const std::exception& e) {
    return Internal(StrCat("faiss IVF train: ", e.what()));
  }
  return OkStatus();
}

Status KeyIvfIndex::add(int64_t n, const float* x, const int64_t* ids) {
  RS_CHECK_ARG(n >= 0, "n must be >= 0, got ", n);
  if (n == 0) return OkStatus();
  RS_CHECK_ARG(x != nullptr && ids != nullptr, "null vectors or ids");
  RS_RETURN_IF_ERROR(CheckFinite(x, n * dim_, "key"));
  for (int64_t i = 0; i < n; ++i) RS_CHECK_ARG(ids[i] >= 0, "id must be >= 0, got ", ids[i]);
  std::unique_lock lock(mu_);
  if (!ivf_) return FailedPrecondition("IVF key index is not trained");
  try {
    std::vector<faiss::Index::idx_t> fid(ids, ids + n);
    faiss::IDSelectorArray sel(fid.size(), fid.data());
    ivf_->remove_ids(sel);
    ivf_->add_with_ids(n, x, fid.data());
  } catch (const std::exception& e) {
    return Internal(StrCat("faiss IVF add: ", e.what()));
  }
  return OkStatus();
}

Status KeyIvfIndex::SearchWithStats(int64_t n, const float* q, int k, float* distances,
                                    int64_t* ids, const SearchParams& params,
                                    KeySearchStats* stats) const {
  RS_RETURN_IF_ERROR(CheckSearchArgs(n, q, k, dim_, distances, ids));
  std::shared_lock lock(mu_);
  if (!ivf_) return FailedPrecondition("IVF key index is not trained");
  const int nprobe = std::min<int>(params.nprobe > 0 ? params.nprobe : params_.nprobe,
                                   static_cast<int>(ivf_->nlist));
  try {
    std::vector<faiss::Index::idx_t> assign(static_cast<size_t>(n) * nprobe);
    std::vector<float> cdis(static_cast<size_t>(n) * nprobe);
    quantizer_->search(n, q, nprobe, cdis.data(), assign.data());
    faiss::IVFSearchParameters sp;
    sp.nprobe = static_cast<size_t>(nprobe);
    internal::FunctionSelector fsel(params.filter);
    if (params.filter != nullptr) sp.sel = &fsel;
    faiss::IndexIVFStats st;
    std::vector<faiss::Index::idx_t> lab(static_cast<size_t>(n) * k);
    ivf_->search_preassigned(n, q, k, assign.data(), cdis.data(), distances, lab.data(), false, &sp,
                             &st);
    for (int64_t i = 0; i < n * k; ++i) {
      ids[i] = lab[i];
      if (lab[i] < 0) distances[i] = -std::numeric_limits<float>::infinity();
    }
    if (stats != nullptr) {
      stats->keys_scored += static_cast<int64_t>(st.ndis);
      stats->hops += static_cast<int64_t>(n) * nprobe;
    }
  } catch (const std::exception& e) {
    return Internal(StrCat("faiss IVF search: ", e.what()));
  }
  return OkStatus();
}

StatusOr<int64_t> KeyIvfIndex::remove(int64_t n, const int64_t* ids) {
  RS_CHECK_ARG(n >= 0, "n must be >= 0, got ", n);
  std::unique_lock lock(mu_);
  if (!ivf_ || n == 0) return int64_t{0};
  try {
    std::vector<faiss::Index::idx_t> fid(ids, ids + n);
    faiss::IDSelectorArray sel(fid.size(), fid.data());
    return static_cast<int64_t>(ivf_->remove_ids(sel));
  } catch (const std::exception& e) {
    return Internal(StrCat("faiss IVF remove: ", e.what()));
  }
}

Status KeyIvfIndex::save(const std::string& path) const {
  std::shared_lock lock(mu_);
  if (!ivf_) return FailedPrecondition("IVF key index is not trained");
  const std::string tmp = path + ".tmp";
  try {
    faiss::write_index(ivf_.get(), tmp.c_str());
  } catch (const std::exception& e) {
    return Internal(StrCat("faiss write_index('", tmp, "'): ", e.what()));
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) return Internal(StrCat("rename '", tmp, "' -> '", path, "': ", ec.message()));
  return OkStatus();
}

}  // namespace ragserve::index
