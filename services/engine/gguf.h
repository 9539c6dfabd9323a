// GGUF files (llama.cpp's model format, versions 2 and 3): header, metadata key-values, tensor
// infos and the aligned data section, parsed with every count, size and offset checked (fuzzed:
// tests/fuzz/gguf_fuzz.cc). Any input gives a header whose every tensor lies inside the file, or
// an error naming what is wrong; never a crash or an allocation the file's size does not bound.
//
// Layout (little-endian): "GGUF", u32 version, u64 tensor_count, u64 kv_count; kv_count times
// {string key, u32 value type, value}; tensor_count times {string name, u32 n_dims,
// u64 ne[n_dims], u32 ggml type, u64 offset}; padding to `general.alignment` (a u32, default 32);
// the data section, where each tensor starts at its offset (a multiple of the alignment).
// A string is a u64 byte length + bytes (no NUL); an array is a u32 element type + u64 count +
// the elements. ne[0] is the fastest-varying dimension: an HF weight [out, in] is stored with
// ne = {in, out}. Quantized types pack ne[0] in blocks (gguf_quants.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "services/common/status.h"
#include "services/engine/safetensors.h"

namespace ragserve::engine {

enum class GgufValueType : uint32_t {
  kU8 = 0,
  kI8 = 1,
  kU16 = 2,
  kI16 = 3,
  kU32 = 4,
  kI32 = 5,
  kF32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kU64 = 10,
  kI64 = 11,
  kF64 = 12,
};
// "u8", "string", "array"... ("type N" for an unknown id).
std::string GgufValueTypeName(GgufValueType t);

// ggml tensor type ids (the published numbering).
enum class GgmlType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ8_1 = 9,
  kQ2_K = 10,
  kQ3_K = 11,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kQ8_K = 15,
  kI8 = 24,
  kI16 = 25,
  kI32 = 26,
  kI64 = 27,
  kF64 = 28,
  kBF16 = 30,
};

// Elements per block and bytes per block of a tensor type (1 and the element size for plain
// types). The parser knows the types above; others are rejected naming their id.
struct GgmlTypeInfo {
  const char* name;  // "Q4_K"
  int64_t block;
  int64_t block_bytes;
};
const GgmlTypeInfo* FindGgmlType(uint32_t type);  // nullptr for an unknown id
std::string GgmlTypeName(uint32_t type);          // "Q4_K", or "type 23" for an unknown id

// One metadata value. Scalars: integers (and bool) in `i` (`int_ok` false for a u64 above
// INT64_MAX), floats in `f`, strings as a view into the parsed buffer. Arrays: elem_type and
// count; fixed-size elements stay in the buffer at `raw` (little-endian), strings as views.
struct GgufValue {
  GgufValueType type = GgufValueType::kU8;
  int64_t i = 0;
  bool int_ok = false;
  double f = 0.0;
  std::string_view str;
  GgufValueType elem_type = GgufValueType::kU8;
  uint64_t count = 0;
  const uint8_t* raw = nullptr;
  std::vector<std::string_view> strings;

  bool is_integer() const;  // scalar of an integer type or bool
  bool is_float() const;    // scalar f32 / f64
  // Element k of a numeric array widened to double (k < count; the caller checks the type).
  double NumberAt(uint64_t k) const;
};

struct GgufTensorInfo {
  std::string name;
  uint32_t type = 0;        // GgmlType id (known: FindGgmlType != nullptr)
  std::vector<int64_t> ne;  // 1..4 dims, ne[0] fastest
  uint64_t offset = 0;      // from the start of the data section
  uint64_t bytes = 0;       // numel / block * block_bytes
  int64_t numel = 0;
};

struct GgufHeader {
  uint32_t version = 0;
  uint64_t alignment = 32;
  uint64_t data_offset = 0;  // file offset of the data section
  std::map<std::string, GgufValue, std::less<>> metadata;
  std::vector<GgufTensorInfo> tensors;  // file order
  std::map<std::string, size_t, std::less<>> tensor_index;

  const GgufValue* Find(std::string_view key) const;
  const GgufTensorInfo* FindTensor(std::string_view name) const;
  // Typed lookups. Missing key: `dflt` when given, else InvalidArgument naming the key; a value of
  // another type: InvalidArgument naming the key and its type. GetInt accepts any integer type,
  // GetFloat any integer or float type.
  StatusOr<int64_t> GetInt(std::string_view key, std::optional<int64_t> dflt = std::nullopt) const;
  StatusOr<double> GetFloat(std::string_view key, std::optional<double> dflt = std::nullopt) const;
  StatusOr<bool> GetBool(std::string_view key, std::optional<bool> dflt = std::nullopt) const;
  StatusOr<std::string> GetString(std::string_view key,
                                  std::optional<std::string> dflt = std::nullopt) const;
  // An array of `elem` (any numeric type when elem is kF32); nullptr when the key is missing.
  StatusOr<const GgufValue*> GetArray(std::string_view key, GgufValueType elem) const;
};

// Largest accepted counts (tensors, metadata entries); far above any real model.
inline constexpr uint64_t kMaxGgufTensors = 1 << 20;
inline constexpr uint64_t kMaxGgufMetadata = 1 << 20;

// Parses the GGUF file whose `size` bytes are `data`; the header keeps views into `data`.
// InvalidArgument for a malformed file (bad magic, unsupported version, unknown value or tensor
// type, duplicate key or tensor, nested array, bad alignment, a dimension that is not a multiple
// of the block size, misaligned or overlapping tensors), DataLoss for a truncated one (a
// count, string or tensor that runs past the end).
StatusOr<GgufHeader> ParseGgufHeader(const uint8_t* data, size_t size);

// One mmapped GGUF file with its validated header.
struct GgufFile {
  std::unique_ptr<MappedFile> file;
  GgufHeader header;
  const uint8_t* Data(const GgufTensorInfo& t) const {
    return file->data() + header.data_offset + t.offset;
  }
};
StatusOr<std::unique_ptr<GgufFile>> OpenGguf(const std::string& path);

// True when `path` is a regular file that starts with the GGUF magic.
bool IsGgufFile(const std::string& path);

}  // namespace ragserve::engine
