#include "index/vector_io.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

namespace ragserve::index {

namespace {
constexpr int kMaxDim = 1 << 20;

// Shared reader of the *vecs layout: each record is int32 dim then dim elements of `elem` bytes.
template <typename Out, typename In>
StatusOr<Matrix<Out>> ParseVecs(std::string_view bytes, std::string_view name,
                                std::string_view ext) {
  RS_CHECK_ARG(!bytes.empty(), name, ": empty ", ext, " file");
  RS_CHECK_ARG(bytes.size() >= 4, name, ": truncated ", ext, " file (", bytes.size(),
               " bytes, the first dimension header needs 4)");
  int32_t d = 0;
  std::memcpy(&d, bytes.data(), 4);
  RS_CHECK_ARG(d >= 1 && d <= kMaxDim, name, ": vector 0 has an invalid dimension header ", d,
               " (expected 1..", kMaxDim, ")");
  const size_t record = 4 + static_cast<size_t>(d) * sizeof(In);
  if (bytes.size() % record != 0) {
    return InvalidArgument(StrCat(name, ": truncated or malformed ", ext, " file: ", bytes.size(),
                                  " bytes is not a multiple of the record size ", record,
                                  " (dimension ", d, "); vector ", bytes.size() / record,
                                  " is incomplete"));
  }
  Matrix<Out> m;
  m.n = static_cast<int64_t>(bytes.size() / record);
  m.dim = d;
  m.values.resize(static_cast<size_t>(m.n) * d);
  for (int64_t i = 0; i < m.n; ++i) {
    const char* p = bytes.data() + i * record;
    int32_t di = 0;
    std::memcpy(&di, p, 4);
    if (di != d) {
      return InvalidArgument(
          StrCat(name, ": vector ", i, " has dimension header ", di, " but vector 0 has ", d));
    }
    for (int j = 0; j < d; ++j) {
      In v;
      std::memcpy(&v, p + 4 + j * sizeof(In), sizeof(In));
      if constexpr (std::is_floating_point_v<In>) {
        if (!std::isfinite(v)) {
          return InvalidArgument(
              StrCat(name, ": vector ", i, " component ", j, " is not finite (", v, ")"));
        }
      }
      m.values[i * d + j] = static_cast<Out>(v);
    }
  }
  return m;
}

StatusOr<std::string> Slurp(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) {
    return NotFound(StrCat("file ", path, " does not exist or is not a regular file"));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFound(StrCat("cannot open ", path));
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

Status WriteBytes(const std::string& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(data.data(), data.size());
  out.flush();
  if (!out) return Internal(StrCat("cannot write ", path));
  return OkStatus();
}

template <typename T>
std::string EncodeVecs(int64_t n, int dim, const T* x) {
  std::string s;
  s.reserve(n * (4 + dim * sizeof(T)));
  for (int64_t i = 0; i < n; ++i) {
    int32_t d = dim;
    s.append(reinterpret_cast<const char*>(&d), 4);
    s.append(reinterpret_cast<const char*>(x + i * dim), dim * sizeof(T));
  }
  return s;
}

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) {
    s.remove_suffix(1);
  }
  return s;
}

// Value text after "'key':" in a NumPy header dict, up to the next top-level ',' or '}'.
bool DictValue(std::string_view header, std::string_view key, std::string_view* out) {
  const std::string quoted1 = StrCat("'", key, "'");
  size_t p = header.find(quoted1);
  if (p == std::string_view::npos) return false;
  p = header.find(':', p + quoted1.size());
  if (p == std::string_view::npos) return false;
  size_t q = p + 1;
  int depth = 0;
  size_t end = q;
  for (; end < header.size(); ++end) {
    const char c = header[end];
    if (c == '(') ++depth;
    if (c == ')') --depth;
    if (depth == 0 && (c == ',' || c == '}')) break;
    if (depth < 0) return false;
  }
  if (end >= header.size()) return false;
  *out = Trim(header.substr(q, end - q));
  return true;
}
}  // namespace

StatusOr<Matrix<float>> ParseFvecs(std::string_view bytes, std::string_view name) {
  return ParseVecs<float, float>(bytes, name, ".fvecs");
}
StatusOr<Matrix<float>> ParseBvecs(std::string_view bytes, std::string_view name) {
  return ParseVecs<float, uint8_t>(bytes, name, ".bvecs");
}
StatusOr<Matrix<int32_t>> ParseIvecs(std::string_view bytes, std::string_view name) {
  return ParseVecs<int32_t, int32_t>(bytes, name, ".ivecs");
}

StatusOr<Matrix<float>> ParseNpy(std::string_view bytes, std::string_view name) {
  static constexpr char kMagic[] = "\x93NUMPY";
  RS_CHECK_ARG(bytes.size() >= 10 && std::memcmp(bytes.data(), kMagic, 6) == 0, name,
               ": not a .npy file (missing \\x93NUMPY magic)");
  const int major = static_cast<unsigned char>(bytes[6]);
  RS_CHECK_ARG(major >= 1 && major <= 3, name, ": unsupported .npy version ", major);
  size_t header_len = 0, offset = 0;
  if (major == 1) {
    uint16_t l;
    std::memcpy(&l, bytes.data() + 8, 2);
    header_len = l;
    offset = 10;
  } else {
    RS_CHECK_ARG(bytes.size() >= 12, name, ": truncated .npy header");
    uint32_t l;
    std::memcpy(&l, bytes.data() + 8, 4);
    header_len = l;
    offset = 12;
  }
  RS_CHECK_ARG(header_len <= bytes.size() - offset, name, ": .npy header length ", header_len,
               " runs past the end of the file (", bytes.size(), " bytes)");
  const std::string_view header = bytes.substr(offset, header_len);
  std::string_view descr, fortran, shape;
  RS_CHECK_ARG(DictValue(header, "descr", &descr) && DictValue(header, "fortran_order", &fortran) &&
                   DictValue(header, "shape", &shape),
               name, ": .npy header lacks descr, fortran_order or shape: ", header);
  RS_CHECK_ARG(descr == "'<f4'" || descr == "'float32'" || descr == "'=f4'", name,
               ": .npy dtype must be little-endian float32 ('<f4'), got ", descr);
  RS_CHECK_ARG(fortran == "False", name, ": .npy must be C order (fortran_order False), got ",
               fortran);
  RS_CHECK_ARG(shape.size() >= 2 && shape.front() == '(' && shape.back() == ')', name,
               ": .npy shape is malformed: ", shape);
  std::vector<int64_t> dims;
  std::string_view inner = shape.substr(1, shape.size() - 2);
  while (!inner.empty()) {
    size_t comma = inner.find(',');
    std::string_view tok = Trim(inner.substr(0, comma));
    if (!tok.empty()) {
      int64_t v = 0;
      for (char c : tok) {
        RS_CHECK_ARG(c >= '0' && c <= '9' && v < (int64_t{1} << 40), name,
                     ": .npy shape has a bad entry '", tok, "'");
        v = v * 10 + (c - '0');
      }
      dims.push_back(v);
    }
    if (comma == std::string_view::npos) break;
    inner.remove_prefix(comma + 1);
  }
  RS_CHECK_ARG(dims.size() == 2, name, ": .npy array must be 2-D, got ", dims.size(),
               " dimensions (shape ", shape, ")");
  RS_CHECK_ARG(dims[1] >= 1 && dims[1] <= kMaxDim, name, ": .npy vector dimension ", dims[1],
               " out of range 1..", kMaxDim);
  const size_t data_off = offset + header_len;
  const size_t avail = bytes.size() - data_off;
  RS_CHECK_ARG(dims[0] <= static_cast<int64_t>(avail / 4 / dims[1] + 1) &&
                   static_cast<size_t>(dims[0] * dims[1] * 4) == avail,
               name, ": .npy data is ", avail, " bytes but shape (", dims[0], ", ", dims[1],
               ") needs ", dims[0] * dims[1] * 4, " (truncated or trailing bytes)");
  Matrix<float> m;
  m.n = dims[0];
  m.dim = static_cast<int>(dims[1]);
  m.values.resize(m.n * m.dim);
  if (!m.values.empty()) std::memcpy(m.values.data(), bytes.data() + data_off, avail);
  for (size_t i = 0; i < m.values.size(); ++i) {
    if (!std::isfinite(m.values[i])) {
      return InvalidArgument(StrCat(name, ": vector ", i / m.dim, " component ", i % m.dim,
                                    " is not finite (", m.values[i], ")"));
    }
  }
  return m;
}

StatusOr<Matrix<float>> ReadVectorFile(const std::string& path) {
  const std::string ext = std::filesystem::path(path).extension().string();
  if (ext != ".fvecs" && ext != ".bvecs" && ext != ".npy") {
    return InvalidArgument(StrCat(path, ": unknown vector file extension '", ext,
                                  "' (expected .fvecs, .bvecs or .npy)"));
  }
  RS_ASSIGN_OR_RETURN(std::string bytes, Slurp(path));
  if (ext == ".fvecs") return ParseFvecs(bytes, path);
  if (ext == ".bvecs") return ParseBvecs(bytes, path);
  return ParseNpy(bytes, path);
}

StatusOr<Matrix<int32_t>> ReadIvecsFile(const std::string& path) {
  RS_ASSIGN_OR_RETURN(std::string bytes, Slurp(path));
  return ParseIvecs(bytes, path);
}

Status WriteFvecs(const std::string& path, int64_t n, int dim, const float* x) {
  return WriteBytes(path, EncodeVecs(n, dim, x));
}
Status WriteIvecs(const std::string& path, int64_t n, int dim, const int32_t* x) {
  return WriteBytes(path, EncodeVecs(n, dim, x));
}

Status WriteNpy(const std::string& path, int64_t n, int dim, const float* x) {
  std::string header =
      StrCat("{'descr': '<f4', 'fortran_order': False, 'shape': (", n, ", ", dim, "), }");
  while ((10 + header.size() + 1) % 64 != 0) header.push_back(' ');
  header.push_back('\n');
  std::string s("\x93NUMPY\x01\x00", 8);
  const uint16_t hl = static_cast<uint16_t>(header.size());
  s.append(reinterpret_cast<const char*>(&hl), 2);
  s += header;
  s.append(reinterpret_cast<const char*>(x), n * dim * sizeof(float));
  return WriteBytes(path, s);
}

StatusOr<JsonlDocument> ParseJsonlLine(std::string_view line, int64_t line_no) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(line);
  } catch (const std::exception& e) {
    return InvalidArgument(StrCat("line ", line_no, ": not valid JSON: ", e.what()));
  }
  RS_CHECK_ARG(j.is_object(), "line ", line_no, ": expected a JSON object, got ", j.type_name());
  JsonlDocument doc;
  auto id = j.find("id");
  RS_CHECK_ARG(id != j.end(), "line ", line_no, ": missing \"id\"");
  if (id->is_string()) {
    doc.id = id->get<std::string>();
  } else if (id->is_number_integer()) {
    doc.id = id->dump();
  } else {
    return InvalidArgument(
        StrCat("line ", line_no, ": \"id\" must be a string or an integer, got ", id->type_name()));
  }
  RS_CHECK_ARG(!doc.id.empty(), "line ", line_no, ": \"id\" is empty");
  auto text = j.find("text");
  RS_CHECK_ARG(text != j.end() && text->is_string(), "line ", line_no,
               ": \"text\" must be present and a string");
  doc.text = text->get<std::string>();
  auto meta = j.find("metadata");
  if (meta != j.end() && !meta->is_null()) {
    RS_CHECK_ARG(meta->is_object(), "line ", line_no, ": \"metadata\" must be an object, got ",
                 meta->type_name());
    doc.metadata_json = meta->dump();
  }
  return doc;
}

Status ReadJsonl(const std::string& path,
                 const std::function<Status(int64_t line_no, JsonlDocument&& doc)>& sink) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) {
    return NotFound(StrCat("file ", path, " does not exist or is not a regular file"));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFound(StrCat("cannot open ", path));
  std::string line;
  int64_t line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (Trim(line).empty()) continue;
    auto doc = ParseJsonlLine(line, line_no);
    if (!doc.ok()) return Annotate(doc.status(), path);
    RS_RETURN_IF_ERROR(sink(line_no, std::move(doc).value()));
  }
  return OkStatus();
}

}  // namespace ragserve::index
