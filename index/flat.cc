#include "index/flat.h"

#include <algorithm>
#include <mutex>

#include "index/internal/index_file.h"
#include "index/internal/index_util.h"

namespace ragserve::index {

StatusOr<std::unique_ptr<FlatIndex>> FlatIndex::Create(int dim, Metric metric) {
  RS_CHECK_ARG(dim >= 1, "flat index: dim must be >= 1, got ", dim);
  return std::unique_ptr<FlatIndex>(new FlatIndex(dim, metric));
}

int64_t FlatIndex::size() const {
  ReaderMutexLock lock(mu_);
  return static_cast<int64_t>(ids_.size());
}

int64_t FlatIndex::memory_bytes() const {
  ReaderMutexLock lock(mu_);
  return static_cast<int64_t>(data_.capacity() * sizeof(float) + norms_.capacity() * sizeof(float) +
                              ids_.capacity() * sizeof(int64_t) + row_of_.size() * 32);
}

int64_t FlatIndex::memory_bytes_to_add(int64_t n) const {
  if (n <= 0) return 0;
  ReaderMutexLock lock(mu_);
  const int64_t rows = static_cast<int64_t>(ids_.size());
  const int64_t cap = static_cast<int64_t>(ids_.capacity());
  if (n > INT64_MAX / 4 - rows) return INT64_MAX;
  // data_ and norms_ grow with ids_ (vector growth: at most to 2x the rows needed).
  const int64_t grown = rows + n > cap ? 2 * (rows + n) - cap : 0;
  const int64_t per_row = int64_t{dim_} * static_cast<int64_t>(sizeof(float)) +
                          static_cast<int64_t>(sizeof(float) + sizeof(int64_t));
  int64_t arrays = 0, map = 0, bytes = 0;
  if (__builtin_mul_overflow(grown, per_row, &arrays) || __builtin_mul_overflow(n, 32, &map) ||
      __builtin_add_overflow(arrays, map, &bytes)) {
    return INT64_MAX;
  }
  return bytes;
}

Status FlatIndex::add(int64_t n, const float* x, const int64_t* ids) {
  RS_RETURN_IF_ERROR(internal::CheckAddArgs(n, x, ids, dim_));
  if (n == 0) return OkStatus();
  std::vector<float> normalized;
  x = internal::MetricInput(metric_, n, dim_, x, &normalized);
  WriterMutexLock lock(mu_);
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
    norms_[r] = internal::Dot(row, row, dim_);
  }
  return OkStatus();
}

StatusOr<int64_t> FlatIndex::remove(int64_t n, const int64_t* ids) {
  RS_RETURN_IF_ERROR(internal::CheckRemoveArgs(n, ids));
  WriterMutexLock lock(mu_);
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

Status FlatIndex::search(int64_t n, const float* q, int k, float* distances, int64_t* ids,
                         const SearchParams& params) const {
  RS_RETURN_IF_ERROR(internal::CheckSearchArgs(n, q, k, distances, ids, dim_));
  if (n == 0) return OkStatus();
  std::vector<float> normalized;
  q = internal::MetricInput(metric_, n, dim_, q, &normalized);
  ReaderMutexLock lock(mu_);
  const internal::ExactRows rows{.x = data_.data(),
                                 .rows = static_cast<int64_t>(ids_.size()),
                                 .dim = dim_,
                                 .sq_norms = norms_.data(),
                                 .ids = ids_.data()};
  internal::ExactTopK(rows, metric_, n, q, k, params.filter, distances, ids);
  if (params.stats != nullptr) params.stats->scored += n * rows.rows;
  return OkStatus();
}

Status FlatIndex::save(const std::string& path) const {
  std::string payload;
  {
    ReaderMutexLock lock(mu_);
    const uint64_t rows = ids_.size();
    internal::Put<uint64_t>(&payload, rows);
    payload.append(reinterpret_cast<const char*>(ids_.data()), rows * sizeof(int64_t));
    payload.append(reinterpret_cast<const char*>(data_.data()), data_.size() * sizeof(float));
  }
  return internal::WriteIndexFile(path, {internal::kFlatCode, metric_, dim_}, payload);
}

StatusOr<std::unique_ptr<FlatIndex>> FlatIndex::Load(const std::string& path) {
  const auto file = internal::ReadIndexFileOfKind(path, {internal::kFlatCode}, "a flat");
  RS_RETURN_IF_ERROR(file.status());
  const internal::FileHeader& h = file->header;
  internal::Reader r(file->payload);
  uint64_t rows = 0;
  const size_t row_bytes = sizeof(int64_t) + h.dim * sizeof(float);
  if (!r.Get(&rows) || rows > r.remaining() / row_bytes || r.remaining() != rows * row_bytes) {
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
