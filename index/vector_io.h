// Readers and writers of the vector file formats the offline build consumes, with full
// validation: .fvecs / .bvecs / .ivecs (per-vector little-endian int32 dimension header then the
// components as float32 / uint8 / int32), .npy (NumPy v1-3, little-endian float32, 2-D, C
// order), and JSONL documents ({"id", "text", "metadata"} per line).
// Every error is InvalidArgument naming the file, the vector (or line) and what is wrong;
// nothing is returned partially. Allocation is bounded by the input size (fuzz-safe).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "services/common/status.h"

namespace ragserve::index {

// n vectors of dim components, row-major.
template <typename T>
struct Matrix {
  int64_t n = 0;
  int dim = 0;
  std::vector<T> values;  // n * dim
  const T* row(int64_t i) const { return values.data() + i * dim; }
};

// Parsers of in-memory file contents; `name` is used in error messages. Float values must be
// finite.
StatusOr<Matrix<float>> ParseFvecs(std::string_view bytes, std::string_view name);
StatusOr<Matrix<float>> ParseBvecs(std::string_view bytes, std::string_view name);  // -> floats
StatusOr<Matrix<int32_t>> ParseIvecs(std::string_view bytes, std::string_view name);
StatusOr<Matrix<float>> ParseNpy(std::string_view bytes, std::string_view name);

// Reads a float vector file chosen by extension (.fvecs, .bvecs, .npy). NotFound when missing,
// InvalidArgument for an unknown extension or malformed contents.
StatusOr<Matrix<float>> ReadVectorFile(const std::string& path);
StatusOr<Matrix<int32_t>> ReadIvecsFile(const std::string& path);

// Writers (tests, tools): overwrite `path`.
Status WriteFvecs(const std::string& path, int64_t n, int dim, const float* x);
Status WriteIvecs(const std::string& path, int64_t n, int dim, const int32_t* x);
Status WriteNpy(const std::string& path, int64_t n, int dim, const float* x);

// One JSONL document. `id` is the JSON string, or the decimal form of a JSON integer.
struct JsonlDocument {
  std::string id;
  std::string text;
  std::string metadata_json = "{}";  // a JSON object
};
// Parses one line; errors name `line_no` (1-based) and the problem. Blank lines are an error
// here; ReadJsonl skips them.
StatusOr<JsonlDocument> ParseJsonlLine(std::string_view line, int64_t line_no);
// Streams the documents of a JSONL file to `sink` in order; stops at the first malformed line
// (InvalidArgument "<path>:<line>: ...") or the first error returned by `sink`.
Status ReadJsonl(const std::string& path,
                 const std::function<Status(int64_t line_no, JsonlDocument&& doc)>& sink);

}  // namespace ragserve::index
