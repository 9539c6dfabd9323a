// safetensors files: header parsing (bounds-checked, fuzzed), memory-mapped reading, writing.
//
// Layout: u64 little-endian N, then N bytes of JSON {"name": {"dtype", "shape", "data_offsets":
// [begin, end]}, "__metadata__": {...}}, then the data buffer; offsets are relative to the buffer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "kernels/cpu/ops.h"
#include "services/common/status.h"

namespace ragserve::engine {

using kernels::DType;

// Largest accepted JSON header (the format's own limit is 100 MB).
inline constexpr uint64_t kMaxSafetensorsHeader = 100ull << 20;

struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets into the data buffer
  uint64_t end = 0;
  int64_t numel() const;
};

struct SafetensorsHeader {
  uint64_t data_offset = 0;                   // 8 + N: where the data buffer starts in the file
  std::map<std::string, TensorInfo> tensors;  // sorted by name
  std::map<std::string, std::string> metadata;
};

// Parses and validates the header of a safetensors file whose first `size` bytes (the whole file,
// or at least its header when `file_size` says how long the file is) are `data`. Checks: N fits,
// JSON is an object of well-formed entries, dtype is F32/F16/BF16, shape dims >= 0,
// end - begin == numel * dtype size, end within the file, no two tensors overlap. Errors name the
// tensor (InvalidArgument for a malformed header, DataLoss for a truncated file). Never crashes.
StatusOr<SafetensorsHeader> ParseSafetensorsHeader(const uint8_t* data, size_t size,
                                                   uint64_t file_size);

// A read-only memory map of a whole file. Move-only; unmaps on destruction.
class MappedFile {
 public:
  static StatusOr<std::unique_ptr<MappedFile>> Open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  MappedFile() = default;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  std::string path_;
};

// One mmapped safetensors file with its validated header.
struct SafetensorsFile {
  std::unique_ptr<MappedFile> file;
  SafetensorsHeader header;
  // Address of a tensor's first byte (the header was validated against the file size).
  const void* Data(const TensorInfo& t) const {
    return file->data() + header.data_offset + t.begin;
  }
};
StatusOr<SafetensorsFile> OpenSafetensors(const std::string& path);

// A tensor to write: raw bytes of `dtype` matching `shape` (row-major).
struct TensorToWrite {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};
// Writes a safetensors file (tensors laid out in name order, header padded to 8 bytes).
Status WriteSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                        const std::map<std::string, std::string>& metadata = {});

}  // namespace ragserve::engine
