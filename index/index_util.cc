#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <unordered_map>

#include "index/internal/index_util.h"

namespace ragserve::index::internal {

Status CheckFinite(int64_t n, int dim, const float* x, std::string_view what) {
  const int64_t total = n * static_cast<int64_t>(dim);
  for (int64_t i = 0; i < total; ++i) {
    if (!std::isfinite(x[i])) {
      return InvalidArgument(StrCat(what, " ", i / dim, " has a non-finite value (", x[i],
                                    ") at component ", i % dim));
    }
  }
  return OkStatus();
}

Status CheckAddArgs(int64_t n, const float* x, const int64_t* ids, int dim) {
  RS_CHECK_ARG(n >= 1, "add: batch must hold at least one vector, got n=", n);
  RS_CHECK_ARG(x != nullptr && ids != nullptr, "add: null vector or id array");
  for (int64_t i = 0; i < n; ++i) {
    RS_CHECK_ARG(ids[i] >= 0, "add: id must be >= 0, got ", ids[i], " at position ", i);
  }
  return CheckFinite(n, dim, x, "add: vector");
}

Status CheckSearchArgs(int64_t n, const float* q, int k, const float* distances, const int64_t* ids,
                       int dim) {
  RS_CHECK_ARG(n >= 1, "search: batch must hold at least one query, got n=", n);
  RS_CHECK_ARG(k >= 1, "search: k must be >= 1, got ", k);
  RS_CHECK_ARG(q != nullptr && distances != nullptr && ids != nullptr,
               "search: null query or output array");
  return CheckFinite(n, dim, q, "search: query");
}

std::vector<float> NormalizedCopy(int64_t n, int dim, const float* x) {
  std::vector<float> out(x, x + n * dim);
  for (int64_t i = 0; i < n; ++i) {
    float* row = out.data() + i * dim;
    double s = 0;
    for (int j = 0; j < dim; ++j) s += static_cast<double>(row[j]) * row[j];
    if (s > 0) {
      const float inv = static_cast<float>(1.0 / std::sqrt(s));
      for (int j = 0; j < dim; ++j) row[j] *= inv;
    }
  }
  return out;
}

void PadRow(Metric metric, int k, float* distances, int64_t* ids) {
  const float pad = HigherIsBetter(metric) ? -std::numeric_limits<float>::infinity()
                                           : std::numeric_limits<float>::infinity();
  for (int j = 0; j < k; ++j) {
    distances[j] = pad;
    ids[j] = -1;
  }
}

std::vector<int64_t> LastOccurrences(int64_t n, const int64_t* ids) {
  std::unordered_map<int64_t, int64_t> last;
  last.reserve(n);
  for (int64_t i = 0; i < n; ++i) last[ids[i]] = i;
  std::vector<int64_t> out;
  out.reserve(last.size());
  if (static_cast<int64_t>(last.size()) == n) {
    for (int64_t i = 0; i < n; ++i) out.push_back(i);
    return out;
  }
  for (const auto& [id, i] : last) out.push_back(i);
  std::sort(out.begin(), out.end());
  return out;
}

void TopK::Push(float score, int64_t id) {
  auto worse_first = [this](const std::pair<float, int64_t>& a,
                            const std::pair<float, int64_t>& b) {
    // Max-heap on "badness": the front is the worst kept element.
    return Better(a.first, b.first);
  };
  if (!full()) {
    heap_.emplace_back(score, id);
    std::push_heap(heap_.begin(), heap_.end(), worse_first);
  } else if (Better(score, worst())) {
    std::pop_heap(heap_.begin(), heap_.end(), worse_first);
    heap_.back() = {score, id};
    std::push_heap(heap_.begin(), heap_.end(), worse_first);
  }
}

void TopK::Finish(Metric metric, float* distances, int64_t* ids) {
  std::sort(heap_.begin(), heap_.end(), [this](const auto& a, const auto& b) {
    if (a.first != b.first) return Better(a.first, b.first);
    return a.second < b.second;
  });
  PadRow(metric, k_, distances, ids);
  for (size_t j = 0; j < heap_.size(); ++j) {
    distances[j] = heap_[j].first;
    ids[j] = heap_[j].second;
  }
}

uint64_t Fnv1a64(const void* data, size_t len) {
  // FNV-1a over 8-byte words then the tail: fast enough for index files, detects corruption.
  const auto* p = static_cast<const unsigned char*>(data);
  uint64_t h = 1469598103934665603ULL;
  size_t i = 0;
  for (; i + 8 <= len; i += 8) {
    uint64_t w;
    std::memcpy(&w, p + i, 8);
    h ^= w;
    h *= 1099511628211ULL;
    h ^= h >> 29;
  }
  for (; i < len; ++i) {
    h ^= p[i];
    h *= 1099511628211ULL;
  }
  return h;
}

namespace {
constexpr char kMagic[8] = {'R', 'S', 'V', 'I', 'D', 'X', '0', '1'};
constexpr size_t kHeaderSize = 8 + 4 * 4 + 8;

Status FsyncPath(const std::string& path, bool directory) {
  int fd = ::open(path.c_str(), directory ? O_RDONLY | O_DIRECTORY : O_RDONLY);
  if (fd < 0) return Internal(StrCat("open ", path, ": ", std::strerror(errno)));
  int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) return Internal(StrCat("fsync ", path, ": ", std::strerror(errno)));
  return OkStatus();
}
}  // namespace

Status WriteIndexFile(const std::string& path, const FileHeader& h, const std::string& payload) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) return Internal(StrCat("cannot create index file ", tmp));
    std::string head(kMagic, 8);
    Put<uint32_t>(&head, h.kind_code);
    Put<uint32_t>(&head, static_cast<uint32_t>(h.metric));
    Put<uint32_t>(&head, static_cast<uint32_t>(h.dim));
    Put<uint32_t>(&head, 0);
    Put<uint64_t>(&head, payload.size());
    std::string tail;
    Put<uint64_t>(&tail, Fnv1a64(payload.data(), payload.size()));
    out.write(head.data(), head.size());
    out.write(payload.data(), payload.size());
    out.write(tail.data(), tail.size());
    out.flush();
    if (!out) return Internal(StrCat("write failed for index file ", tmp));
  }
  RS_RETURN_IF_ERROR(FsyncPath(tmp, false));
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) return Internal(StrCat("rename ", tmp, " -> ", path, ": ", ec.message()));
  auto parent = std::filesystem::path(path).parent_path();
  return FsyncPath(parent.empty() ? "." : parent.string(), true);
}

Status ReadIndexFile(const std::string& path, FileHeader* h, std::string* payload) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFound(StrCat("index file ", path, " does not exist or cannot be read"));
  std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (data.size() < kHeaderSize + 8 || std::memcmp(data.data(), kMagic, 8) != 0) {
    return DataLoss(StrCat("index file ", path, " has no ragserve index header"));
  }
  Reader r(std::string_view(data).substr(8));
  uint32_t kind, metric, dim, reserved;
  uint64_t len;
  r.Get(&kind);
  r.Get(&metric);
  r.Get(&dim);
  r.Get(&reserved);
  r.Get(&len);
  if (metric > 2 || dim == 0 || dim > (1u << 20) || len != data.size() - kHeaderSize - 8) {
    return DataLoss(StrCat("index file ", path, " has an inconsistent header (metric ", metric,
                           ", dim ", dim, ", payload ", len, " bytes in a ", data.size(),
                           "-byte file)"));
  }
  uint64_t sum;
  std::memcpy(&sum, data.data() + kHeaderSize + len, 8);
  if (sum != Fnv1a64(data.data() + kHeaderSize, len)) {
    return DataLoss(StrCat("index file ", path, " failed its checksum"));
  }
  h->kind_code = kind;
  h->metric = static_cast<Metric>(metric);
  h->dim = static_cast<int>(dim);
  payload->assign(data, kHeaderSize, len);
  return OkStatus();
}

}  // namespace ragserve::index::internal
