// Internal helpers shared by the index implementations (not part of any public contract).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "index/vector_index.h"
#include "services/common/status.h"

namespace ragserve::index::internal {

// InvalidArgument naming the first non-finite element, else OK.
Status CheckFinite(int64_t n, int dim, const float* x, std::string_view what);
// Validates the common arguments of add(): n >= 1, x/ids not null, ids >= 0, finite values.
Status CheckAddArgs(int64_t n, const float* x, const int64_t* ids, int dim);
// Validates the common arguments of search(): n >= 1, k >= 1, pointers, finite queries.
Status CheckSearchArgs(int64_t n, const float* q, int k, const float* distances, const int64_t* ids,
                       int dim);
// Returns x normalized to unit L2 norm row by row (zero rows stay zero).
std::vector<float> NormalizedCopy(int64_t n, int dim, const float* x);
// Fills one result row with the padding value of `metric` (id -1).
void PadRow(Metric metric, int k, float* distances, int64_t* ids);
// Indexes of the last occurrence of every distinct id (so a batch with duplicates acts like
// sequential upserts: the last one wins), in increasing order.
std::vector<int64_t> LastOccurrences(int64_t n, const int64_t* ids);

// On-disk envelope of every ragserve index file:
//   "RSVIDX01" | u32 kind_code | u32 metric | u32 dim | u32 reserved | u64 payload_len |
//   payload | u64 fnv1a64(payload)
struct FileHeader {
  uint32_t kind_code = 0;
  Metric metric = Metric::kL2;
  int dim = 0;
};
enum KindCode : uint32_t { kFlatCode = 1, kHnswCode = 2, kIvfFlatCode = 3, kIvfPqCode = 4 };
uint64_t Fnv1a64(const void* data, size_t len);
// Writes header + payload to path atomically (temp file, fsync, rename, fsync of the folder).
Status WriteIndexFile(const std::string& path, const FileHeader& h, const std::string& payload);
// Reads and verifies an index file (magic, sizes, checksum). DataLoss on corruption,
// NotFound when missing.
Status ReadIndexFile(const std::string& path, FileHeader* h, std::string* payload);

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

// Bounded top-k collector: keeps the k best (score, id) pairs for one query.
class TopK {
 public:
  TopK(int k, bool higher_is_better) : k_(k), higher_(higher_is_better) { heap_.reserve(k); }
  // Worst score kept so far (only meaningful when full()).
  float worst() const { return heap_.front().first; }
  bool full() const { return static_cast<int>(heap_.size()) >= k_; }
  // True when `score` would enter the set.
  bool Accepts(float score) const { return !full() || Better(score, worst()); }
  void Push(float score, int64_t id);
  // Writes the results best-first, padding to k.
  void Finish(Metric metric, float* distances, int64_t* ids);

 private:
  bool Better(float a, float b) const { return higher_ ? a > b : a < b; }
  int k_;
  bool higher_;
  std::vector<std::pair<float, int64_t>> heap_;  // heap whose front is the worst kept
};

}  // namespace ragserve::index::internal
