#include "index/flat.h"

#include <cblas.h>

#include <algorithm>
#include <mutex>

#include "index/internal/index_util.h"

namespace ragserve::index {

using internal::TopK;

namespace {
constexpr int64_t kQueryBlock = 64;
constexpr int64_t kDataBlock = 8192;

float SquaredNorm(const float* x, int dim) {
  float s = 0;
  for (int j = 0; j < dim; ++j) s += x[j] * x[j];
  return s;
}
}  // namespace

StatusOr<std::unique_ptr<FlatIndex>> FlatIndex::Create(int dim, Metric metric) {
  RS_CHECK_ARG(dim >= 1, "flat index: dim must be >= 1, got ", dim);
  return std::unique_ptr<FlatIndex>(new FlatIndex(dim, metric));
}

int64_t FlatIndex::size() const {
  std::shared_lock lock(mu_);
  return static_cast<int64_t>(ids_.size());
}

size_t FlatIndex::memory_bytes() const {
  std::shared_lock lock(mu_);
  return data_.capacity() * sizeof(float) + norms_.capacity() * sizeof(float) +
         ids_.capacity() * sizeof(int64_t) + row_of_.size() * 32;
}

Status FlatIndex::add(int64_t n, const float* x, const int64_t* ids) {
  RS_RETURN_IF_ERROR(internal::CheckAddArgs(n, x, ids, dim_));
  std::vector<float> normalized;
  if (metric_ == Metric::kCosine) {
    normalized = internal::NormalizedCopy(n, dim_, x);
    x = normalized.data();
  }
  std::unique_lock lock(mu_);
  for (int64_t i = 0; i < n; ++i) {
    const float* row = x + i * dim_;
    auto it = row_of_.find(ids[i]);
    int64_t r;
    if (it != row_of_.end()) {
      r = it->second;
    } else {
      r = static_cast<int64_t>(ids_.size());
      ids_.push_back(ids[i]);
      data_.resize(data_.size() + dim_);
      norms_.push_back(0);
      row_of_.emplace(ids[i], r);
    }
    std::copy(row, row + dim_, data_.begin() + r * dim_);
    norms_[r] = SquaredNorm(row, dim_);
  }
  return OkStatus();
}

StatusOr<int64_t> FlatIndex::remove(int64_t n, const int64_t* ids) {
  RS_CHECK_ARG(n >= 0 && (n == 0 || ids != nullptr), "remove: bad batch (n=", n, ")");
  std::unique_lock lock(mu_);
  int64_t removed = 0;
  for (int64_t i = 0; i < n; ++i) {
    auto it = row_of_.find(ids[i]);
    if (it == row_of_.end()) continue;
    const int64_t r = it->second;
    const int64_t last = static_cast<int64_t>(ids_.size()) - 1;
    row_of_.erase(it);
    if (r != last) {
      std::copy(data_.begin() + last * dim_, data_.begin() + (last + 1) * dim_,
                data_.begin() + r * dim_);
      norms_[r] = norms_[last];
      ids_[r] = ids_[last];
      row_of_[ids_[r]] = r;
    }
    ids_.pop_back();
    norms_.pop_back();
    data_.resize(data_.size() - dim_);
    ++removed;
  }
  return removed;
}

void FlatIndex::SearchBlock(int64_t nq, const float* q, const float* qnorms, int k,
                            float* distances, int64_t* ids,
                            const std::function<bool(int64_t)>* filter) const {
  const bool higher = HigherIsBetter(metric_);
  std::vector<TopK> tops;
  tops.reserve(nq);
  for (int64_t i = 0; i < nq; ++i) tops.emplace_back(k, higher);
  const int64_t rows = static_cast<int64_t>(ids_.size());
  std::vector<float> scores(static_cast<size_t>(nq * std::min(rows, kDataBlock)));
  for (int64_t b0 = 0; b0 < rows; b0 += kDataBlock) {
    const int64_t nb = std::min(kDataBlock, rows - b0);
    // scores[nq, nb] = q[nq, d] * x[b0:b0+nb, d]^T
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(nq), static_cast<int>(nb),
                dim_, 1.0f, q, dim_, data_.data() + b0 * dim_, dim_, 0.0f, scores.data(),
                static_cast<int>(nb));
    for (int64_t i = 0; i < nq; ++i) {
      TopK& top = tops[i];
      const float* s = scores.data() + i * nb;
      for (int64_t j = 0; j < nb; ++j) {
        float v = s[j];
        if (metric_ == Metric::kL2) v = std::max(0.0f, qnorms[i] + norms_[b0 + j] - 2 * v);
        if (!top.Accepts(v)) continue;
        const int64_t id = ids_[b0 + j];
        if (filter != nullptr && !(*filter)(id)) continue;
        top.Push(v, id);
      }
    }
  }
  for (int64_t i = 0; i < nq; ++i) tops[i].Finish(metric_, distances + i * k, ids + i * k);
}

Status FlatIndex::search(int64_t n, const float* q, int k, float* distances, int64_t* ids,
                         const SearchParams& params) const {
  RS_RETURN_IF_ERROR(internal::CheckSearchArgs(n, q, k, distances, ids, dim_));
  std::vector<float> normalized;
  if (metric_ == Metric::kCosine) {
    normalized = internal::NormalizedCopy(n, dim_, q);
    q = normalized.data();
  }
  std::vector<float> qnorms(n);
  for (int64_t i = 0; i < n; ++i) qnorms[i] = SquaredNorm(q + i * dim_, dim_);
  std::shared_lock lock(mu_);
  for (int64_t i0 = 0; i0 < n; i0 += kQueryBlock) {
    const int64_t nq = std::min(kQueryBlock, n - i0);
    SearchBlock(nq, q + i0 * dim_, qnorms.data() + i0, k, distances + i0 * k, ids + i0 * k,
                params.filter);
  }
  return OkStatus();
}

Status FlatIndex::save(const std::string& path) const {
  std::string payload;
  {
    std::shared_lock lock(mu_);
    const uint64_t rows = ids_.size();
    internal::Put<uint64_t>(&payload, rows);
    payload.append(reinterpret_cast<const char*>(ids_.data()), rows * sizeof(int64_t));
    payload.append(reinterpret_cast<const char*>(data_.data()), data_.size() * sizeof(float));
  }
  return internal::WriteIndexFile(path, {internal::kFlatCode, metric_, dim_}, payload);
}

StatusOr<std::unique_ptr<FlatIndex>> FlatIndex::Load(const std::string& path) {
  internal::FileHeader h;
  std::string payload;
  RS_RETURN_IF_ERROR(internal::ReadIndexFile(path, &h, &payload));
  if (h.kind_code != internal::kFlatCode) {
    return InvalidArgument(
        StrCat("index file ", path, " is not a flat index (kind code ", h.kind_code, ")"));
  }
  internal::Reader r(payload);
  uint64_t rows = 0;
  if (!r.Get(&rows) || r.remaining() != rows * (sizeof(int64_t) + h.dim * sizeof(float))) {
    return DataLoss(StrCat("flat index file ", path, " has a payload of the wrong size"));
  }
  std::vector<int64_t> ids(rows);
  std::vector<float> x(rows * h.dim);
  r.GetBytes(ids.data(), rows * sizeof(int64_t));
  r.GetBytes(x.data(), x.size() * sizeof(float));
  auto index = std::unique_ptr<FlatIndex>(new FlatIndex(h.dim, h.metric));
  if (rows > 0) RS_RETURN_IF_ERROR(Annotate(index->add(rows, x.data(), ids.data()), path));
  return index;
}

}  // namespace ragserve::index
