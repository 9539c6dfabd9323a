// The one on-disk envelope of every ragserve index file (internal to the index module):
//   "RSVIDX01" | u32 kind_code | u32 metric | u32 dim | u32 format | u64 payload_len |
//   payload | u64 fnv1a64(payload)
// written durably (temp file, fsync, rename, fsync of the folder) and verified on read (magic,
// sizes, checksum). `format` is the version of the payloads: 0 for files written before it was
// introduced (the field was reserved and zero), kFormatVersion for files written now; a reader
// accepts 0..kFormatVersion and rejects newer files with FailedPrecondition naming both versions.
// Payloads: flat, ivf_flat, ivf_pq are the same at formats 0 and 1; hnsw gains a u32 flags word
// at format 1 (hnsw.cc); attention_aware exists from format 1.
#pragma once

#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <string>
#include <string_view>

#include "index/vector_index.h"
#include "services/common/status.h"

namespace ragserve::index::internal {

constexpr uint32_t kFormatVersion = 1;

enum KindCode : uint32_t {
  kFlatCode = 1,
  kHnswCode = 2,
  kIvfFlatCode = 3,
  kIvfPqCode = 4,
  kAttentionAwareCode = 5,
  kBm25Code = 6,  // index/bm25.h (a lexical index: dim is written as 1)
};

struct FileHeader {
  uint32_t kind_code = 0;
  Metric metric = Metric::kL2;
  int dim = 0;
  uint32_t format = kFormatVersion;  // what WriteIndexFile records; ReadIndexFile reports
};

uint64_t Fnv1a64(const void* data, size_t len);
// Writes header + payload to path atomically (temp file, fsync, rename, fsync of the folder).
Status WriteIndexFile(const std::string& path, const FileHeader& h, const std::string& payload);
// Reads and verifies an index file. NotFound when missing, DataLoss on corruption,
// FailedPrecondition for a format newer than kFormatVersion.
Status ReadIndexFile(const std::string& path, FileHeader* h, std::string* payload);
// A verified file: its header and payload.
struct IndexFile {
  FileHeader header;
  std::string payload;
};
// ReadIndexFile plus a kind check: InvalidArgument when the file holds another kind than `codes`
// (`expected` names the kind in the message, e.g. "a flat").
StatusOr<IndexFile> ReadIndexFileOfKind(const std::string& path,
                                        std::initializer_list<uint32_t> codes,
                                        std::string_view expected);

// Little-endian POD append/consume helpers for payloads.
template <typename T>
void Put(std::string* s, const T& v) {
  s->append(reinterpret_cast<const char*>(&v), sizeof(T));
}
class Reader {
 public:
  explicit Reader(std::string_view s) : s_(s) {}
  template <typename T>
  bool Get(T* v) {
    if (s_.size() - pos_ < sizeof(T)) return false;
    std::memcpy(v, s_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return true;
  }
  bool GetBytes(void* dst, size_t len) {
    if (s_.size() - pos_ < len) return false;
    std::memcpy(dst, s_.data() + pos_, len);
    pos_ += len;
    return true;
  }
  // Steps over len bytes and returns where they start, or nullptr (nothing consumed) when fewer
  // remain.
  const char* Skip(size_t len) {
    if (s_.size() - pos_ < len) return nullptr;
    const char* at = s_.data() + pos_;
    pos_ += len;
    return at;
  }
  size_t remaining() const { return s_.size() - pos_; }
  // The bytes not read yet.
  std::string_view rest() const { return s_.substr(pos_); }

 private:
  std::string_view s_;
  size_t pos_ = 0;
};

}  // namespace ragserve::index::internal
