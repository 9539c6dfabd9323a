#include "index/internal/index_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

namespace ragserve::index::internal {

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
    Put<uint32_t>(&head, h.format);
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
  uint32_t kind, metric, dim, format;
  uint64_t len;
  r.Get(&kind);
  r.Get(&metric);
  r.Get(&dim);
  r.Get(&format);
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
  if (format > kFormatVersion) {
    return FailedPrecondition(StrCat("index file ", path, " has format version ", format,
                                     "; this build reads versions 0 to ", kFormatVersion,
                                     " (written by a newer ragserve?)"));
  }
  h->kind_code = kind;
  h->metric = static_cast<Metric>(metric);
  h->dim = static_cast<int>(dim);
  h->format = format;
  payload->assign(data, kHeaderSize, len);
  return OkStatus();
}

StatusOr<IndexFile> ReadIndexFileOfKind(const std::string& path,
                                        std::initializer_list<uint32_t> codes,
                                        std::string_view expected) {
  IndexFile f;
  RS_RETURN_IF_ERROR(ReadIndexFile(path, &f.header, &f.payload));
  if (std::find(codes.begin(), codes.end(), f.header.kind_code) == codes.end()) {
    return InvalidArgument(StrCat("index file ", path, " is not ", expected, " index (kind code ",
                                  f.header.kind_code, ")"));
  }
  return f;
}

}  // namespace ragserve::index::internal
