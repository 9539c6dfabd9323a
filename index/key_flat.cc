#include "index/key_flat.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <mutex>

#include "index/key_util.h"

namespace ragserve::index {
namespace {
constexpr uint64_t kFlatMagic = 0x3154414c4659454bULL;  // "KEYFLAT1"
}  // namespace

StatusOr<std::unique_ptr<KeyFlatIndex>> KeyFlatIndex::Create(int dim) {
  RS_CHECK_ARG(dim >= 1, "dim must be >= 1, got ", dim);
  return std::unique_ptr<KeyFlatIndex>(new KeyFlatIndex(dim));
}

int64_t KeyFlatIndex::memory_bytes() const {
  std::shared_lock lock(mu_);
  return static_cast<int64_t>(data_.capacity() * sizeof(float) + ids_.capacity() * sizeof(int64_t));
}

int64_t KeyFlatIndex::size() const {
  std::shared_lock lock(mu_);
  return static_cast<int64_t>(ids_.size());
}

Status KeyFlatIndex::add(int64_t n, const float* x, const int64_t* ids) {
  RS_CHECK_ARG(n >= 0, "n must be >= 0, got ", n);
  if (n == 0) return OkStatus();
  RS_CHECK_ARG(x != nullptr && ids != nullptr, "null vectors or ids");
  RS_RETURN_IF_ERROR(CheckFinite(x, n * dim_, "key"));
  for (int64_t i = 0; i < n; ++i) RS_CHECK_ARG(ids[i] >= 0, "id must be >= 0, got ", ids[i]);
  std::unique_lock lock(mu_);
  for (int64_t i = 0; i < n; ++i) {
    auto it = row_.find(ids[i]);
    const float* v = x + i * dim_;
    if (it != row_.end()) {
      std::copy(v, v + dim_, data_.begin() + it->second * dim_);
      continue;
    }
    row_[ids[i]] = static_cast<int64_t>(ids_.size());
    ids_.push_back(ids[i]);
    data_.insert(data_.end(), v, v + dim_);
  }
  return OkStatus();
}

Status KeyFlatIndex::SearchWithStats(int64_t n, const float* q, int k, float* distances,
                                     int64_t* ids, const SearchParams& params,
                                     KeySearchStats* stats) const {
  RS_RETURN_IF_ERROR(CheckSearchArgs(n, q, k, dim_, distances, ids));
  std::shared_lock lock(mu_);
  const int64_t rows = static_cast<int64_t>(ids_.size());
  if (params.filter == nullptr) {
    key_internal::ExactTopK(n, q, rows, data_.data(), dim_, k, ids, distances);
  } else {
    std::vector<uint8_t> dead(static_cast<size_t>(rows));
    for (int64_t r = 0; r < rows; ++r) dead[r] = (*params.filter)(ids_[r]) ? 0 : 1;
    key_internal::ExactTopK(n, q, rows, data_.data(), dim_, k, ids, distances, &dead);
  }
  for (int64_t i = 0; i < n * k; ++i) {
    if (ids[i] >= 0) ids[i] = ids_[ids[i]];
  }
  if (stats != nullptr) stats->keys_scored += n * rows;
  return OkStatus();
}

StatusOr<int64_t> KeyFlatIndex::remove(int64_t n, const int64_t* ids) {
  RS_CHECK_ARG(n >= 0, "n must be >= 0, got ", n);
  std::unique_lock lock(mu_);
  int64_t removed = 0;
  for (int64_t i = 0; i < n; ++i) {
    auto it = row_.find(ids[i]);
    if (it == row_.end()) continue;
    const int64_t r = it->second;
    const int64_t last = static_cast<int64_t>(ids_.size()) - 1;
    if (r != last) {
      std::copy(data_.begin() + last * dim_, data_.begin() + (last + 1) * dim_,
                data_.begin() + r * dim_);
      ids_[r] = ids_[last];
      row_[ids_[r]] = r;
    }
    ids_.pop_back();
    data_.resize(static_cast<size_t>(last) * dim_);
    row_.erase(it);
    ++removed;
  }
  return removed;
}

Status KeyFlatIndex::save(const std::string& path) const {
  std::shared_lock lock(mu_);
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f) return Internal(StrCat("cannot open '", tmp, "' for writing"));
    const uint64_t magic = kFlatMagic;
    const int64_t dim = dim_, rows = static_cast<int64_t>(ids_.size());
    f.write(reinterpret_cast<const char*>(&magic), sizeof magic);
    f.write(reinterpret_cast<const char*>(&dim), sizeof dim);
    f.write(reinterpret_cast<const char*>(&rows), sizeof rows);
    f.write(reinterpret_cast<const char*>(ids_.data()), rows * sizeof(int64_t));
    f.write(reinterpret_cast<const char*>(data_.data()), rows * dim * sizeof(float));
    if (!f) return Internal(StrCat("write to '", tmp, "' failed"));
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) return Internal(StrCat("rename '", tmp, "' -> '", path, "': ", ec.message()));
  return OkStatus();
}

StatusOr<std::unique_ptr<KeyFlatIndex>> KeyFlatIndex::Load(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return NotFound(StrCat("cannot open '", path, "'"));
  uint64_t magic = 0;
  int64_t dim = 0, rows = 0;
  f.read(reinterpret_cast<char*>(&magic), sizeof magic);
  f.read(reinterpret_cast<char*>(&dim), sizeof dim);
  f.read(reinterpret_cast<char*>(&rows), sizeof rows);
  if (!f || magic != kFlatMagic || dim < 1 || dim > (1 << 16) || rows < 0 ||
      rows > (int64_t{1} << 34) / dim) {
    return DataLoss(StrCat("'", path, "' is not a key_flat index file"));
  }
  std::vector<int64_t> ids(static_cast<size_t>(rows));
  std::vector<float> data(static_cast<size_t>(rows * dim));
  f.read(reinterpret_cast<char*>(ids.data()), rows * sizeof(int64_t));
  f.read(reinterpret_cast<char*>(data.data()), rows * dim * sizeof(float));
  if (!f) return DataLoss(StrCat("'", path, "' is truncated"));
  auto idx = std::unique_ptr<KeyFlatIndex>(new KeyFlatIndex(static_cast<int>(dim)));
  RS_RETURN_IF_ERROR(idx->add(rows, data.data(), ids.data()));
  return idx;
}

}  // namespace ragserve::index
