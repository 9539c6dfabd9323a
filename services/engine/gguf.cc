#include "services/engine/gguf.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

namespace ragserve::engine {
namespace {

constexpr GgmlTypeInfo kTypes[] = {
    {"F32", 1, 4},      {"F16", 1, 2},      {nullptr, 0, 0},    {nullptr, 0, 0},
    {"Q4_0", 32, 18},   {"Q4_1", 32, 20},   {"Q5_0", 32, 22},   {"Q5_1", 32, 24},
    {"Q8_0", 32, 34},   {"Q8_1", 32, 36},   {"Q2_K", 256, 84},  {"Q3_K", 256, 110},
    {"Q4_K", 256, 144}, {"Q5_K", 256, 176}, {"Q6_K", 256, 210}, {"Q8_K", 256, 292},
    {"I8", 1, 1},       {"I16", 1, 2},      {"I32", 1, 4},      {"I64", 1, 8},
    {"F64", 1, 8},      {"BF16", 1, 2},
};
// Type id -> index in kTypes (ids 4, 5 were removed from the format; 16..23 are IQ types this
// build does not know).
int TypeIndex(uint32_t t) {
  if (t <= 1) return static_cast<int>(t);
  if (t == 2 || t == 3) return static_cast<int>(t) + 2;
  if (t >= 6 && t <= 15) return static_cast<int>(t);
  if (t >= 24 && t <= 28) return static_cast<int>(t) - 8;
  if (t == 30) return 21;
  return -1;
}

constexpr uint64_t kMaxDim = uint64_t{1} << 48;

// A bounds-checked little-endian cursor over the file.
class Reader {
 public:
  Reader(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  size_t pos() const { return pos_; }
  size_t remaining() const { return size_ - pos_; }
  const uint8_t* here() const { return data_ + pos_; }
  template <typename T>
  bool Read(T* v) {
    if (remaining() < sizeof(T)) return false;
    std::memcpy(v, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return true;
  }
  bool ReadString(std::string_view* s) {
    uint64_t n = 0;
    if (!Read(&n) || n > remaining()) return false;
    *s = std::string_view(reinterpret_cast<const char*>(data_ + pos_), n);
    pos_ += n;
    return true;
  }
  bool Skip(uint64_t n) {
    if (n > remaining()) return false;
    pos_ += n;
    return true;
  }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

Status Truncated(const Reader& r, std::string_view what) {
  return DataLoss(
      StrCat("gguf: file ends inside ", what, " (at byte ", r.pos(), "; truncated file?)"));
}

// Bytes of a fixed-size value type; 0 for string / array / unknown.
size_t ScalarSize(GgufValueType t) {
  switch (t) {
    case GgufValueType::kU8:
    case GgufValueType::kI8:
    case GgufValueType::kBool:
      return 1;
    case GgufValueType::kU16:
    case GgufValueType::kI16:
      return 2;
    case GgufValueType::kU32:
    case GgufValueType::kI32:
    case GgufValueType::kF32:
      return 4;
    case GgufValueType::kU64:
    case GgufValueType::kI64:
    case GgufValueType::kF64:
      return 8;
    default:
      return 0;
  }
}

bool KnownValueType(uint32_t t) { return t <= static_cast<uint32_t>(GgufValueType::kF64); }

// Decodes one fixed-size scalar at p into v (integers to i, floats to f).
Status DecodeScalar(GgufValueType t, const uint8_t* p, std::string_view key, GgufValue* v) {
  auto load = [&](auto x) {
    std::memcpy(&x, p, sizeof(x));
    return x;
  };
  v->int_ok = true;
  switch (t) {
    case GgufValueType::kU8:
      v->i = load(uint8_t{});
      break;
    case GgufValueType::kI8:
      v->i = load(int8_t{});
      break;
    case GgufValueType::kU16:
      v->i = load(uint16_t{});
      break;
    case GgufValueType::kI16:
      v->i = load(int16_t{});
      break;
    case GgufValueType::kU32:
      v->i = load(uint32_t{});
      break;
    case GgufValueType::kI32:
      v->i = load(int32_t{});
      break;
    case GgufValueType::kI64:
      v->i = load(int64_t{});
      break;
    case GgufValueType::kU64: {
      const uint64_t u = load(uint64_t{});
      v->int_ok = u <= static_cast<uint64_t>(INT64_MAX);
      v->i = v->int_ok ? static_cast<int64_t>(u) : 0;
      break;
    }
    case GgufValueType::kBool:
      if (*p > 1) {
        return InvalidArgument(
            StrCat("gguf: metadata \"", key, "\" is a bool of value ", int{*p}, " (not 0 or 1)"));
      }
      v->i = *p;
      break;
    case GgufValueType::kF32:
      v->f = load(float{});
      v->int_ok = false;
      break;
    case GgufValueType::kF64:
      v->f = load(double{});
      v->int_ok = false;
      break;
    default:
      v->int_ok = false;
      break;
  }
  return OkStatus();
}

Status ReadArray(Reader& r, std::string_view key, GgufValue* v) {
  uint32_t et = 0;
  if (!r.Read(&et) || !r.Read(&v->count)) return Truncated(r, StrCat("array \"", key, "\""));
  if (!KnownValueType(et)) {
    return InvalidArgument(
        StrCat("gguf: metadata array \"", key, "\" has unknown element type ", et));
  }
  v->elem_type = static_cast<GgufValueType>(et);
  if (v->elem_type == GgufValueType::kArray) {
    return InvalidArgument(
        StrCat("gguf: metadata \"", key, "\" is an array of arrays (not supported)"));
  }
  if (v->elem_type == GgufValueType::kString) {
    // Every string takes at least its 8-byte length: the count is bounded by the bytes left.
    if (v->count > r.remaining() / 8) return Truncated(r, StrCat("string array \"", key, "\""));
    v->strings.resize(v->count);
    for (auto& s : v->strings) {
      if (!r.ReadString(&s)) return Truncated(r, StrCat("string array \"", key, "\""));
    }
    return OkStatus();
  }
  const size_t es = ScalarSize(v->elem_type);
  if (v->count > r.remaining() / es) return Truncated(r, StrCat("array \"", key, "\""));
  v->raw = r.here();
  if (v->elem_type == GgufValueType::kBool) {
    for (uint64_t k = 0; k < v->count; ++k) {
      if (v->raw[k] > 1) {
        return InvalidArgument(
            StrCat("gguf: metadata \"", key, "\"[", k, "] is a bool of value ", int{v->raw[k]}));
      }
    }
  }
  r.Skip(v->count * es);
  return OkStatus();
}

Status ReadValue(Reader& r, uint32_t type, std::string_view key, GgufValue* v) {
  if (!KnownValueType(type)) {
    return InvalidArgument(StrCat("gguf: metadata \"", key, "\" has unknown value type ", type));
  }
  v->type = static_cast<GgufValueType>(type);
  if (v->type == GgufValueType::kString) {
    if (!r.ReadString(&v->str)) return Truncated(r, StrCat("string \"", key, "\""));
    return OkStatus();
  }
  if (v->type == GgufValueType::kArray) return ReadArray(r, key, v);
  const size_t n = ScalarSize(v->type);
  if (r.remaining() < n) return Truncated(r, StrCat("value of \"", key, "\""));
  const uint8_t* p = r.here();
  r.Skip(n);
  return DecodeScalar(v->type, p, key, v);
}

Status ReadMetadata(Reader& r, uint64_t n_kv, GgufHeader* h) {
  // A key-value takes at least 8 (key length) + 4 (type) + 1 bytes.
  if (n_kv > kMaxGgufMetadata || n_kv > r.remaining() / 13) {
    return n_kv > kMaxGgufMetadata
               ? InvalidArgument(StrCat("gguf: metadata count ", n_kv, " exceeds the limit of ",
                                        kMaxGgufMetadata))
               : Truncated(r, StrCat("the ", n_kv, " metadata entries"));
  }
  for (uint64_t k = 0; k < n_kv; ++k) {
    std::string_view key;
    uint32_t type = 0;
    if (!r.ReadString(&key)) return Truncated(r, StrCat("metadata key #", k));
    if (!r.Read(&type)) return Truncated(r, StrCat("metadata \"", key, "\""));
    GgufValue v;
    RS_RETURN_IF_ERROR(ReadValue(r, type, key, &v));
    if (!h->metadata.emplace(std::string(key), std::move(v)).second) {
      return InvalidArgument(StrCat("gguf: metadata key \"", key, "\" appears twice"));
    }
  }
  return OkStatus();
}

Status ReadAlignment(GgufHeader* h) {
  const GgufValue* a = h->Find("general.alignment");
  if (a == nullptr) return OkStatus();
  if (a->type != GgufValueType::kU32) {
    return InvalidArgument(
        StrCat("gguf: general.alignment must be a u32, got ", GgufValueTypeName(a->type)));
  }
  const uint64_t v = static_cast<uint64_t>(a->i);
  if (v == 0 || (v & (v - 1)) != 0 || v > (uint64_t{1} << 20)) {
    return InvalidArgument(
        StrCat("gguf: general.alignment ", v, " is not a power of two in [1, 2^20]"));
  }
  h->alignment = v;
  return OkStatus();
}

// Reads one tensor info and checks its dims, type and byte size (not yet its offset).
Status ReadTensorInfo(Reader& r, uint64_t index, GgufTensorInfo* t) {
  std::string_view name;
  uint32_t n_dims = 0;
  if (!r.ReadString(&name)) return Truncated(r, StrCat("the name of tensor #", index));
  t->name = std::string(name);
  if (!r.Read(&n_dims)) return Truncated(r, StrCat("tensor \"", name, "\""));
  if (n_dims < 1 || n_dims > 4) {
    return InvalidArgument(StrCat("gguf: tensor \"", name, "\" has ", n_dims, " dims (1..4)"));
  }
  uint64_t numel = 1;
  for (uint32_t d = 0; d < n_dims; ++d) {
    uint64_t ne = 0;
    if (!r.Read(&ne)) return Truncated(r, StrCat("tensor \"", name, "\""));
    if (ne >= kMaxDim || (ne != 0 && numel > kMaxDim / ne)) {
      return InvalidArgument(
          StrCat("gguf: tensor \"", name, "\" dim ", d, " = ", ne, " makes it too large"));
    }
    numel *= ne;
    t->ne.push_back(static_cast<int64_t>(ne));
  }
  if (!r.Read(&t->type) || !r.Read(&t->offset)) {
    return Truncated(r, StrCat("tensor \"", name, "\""));
  }
  const GgmlTypeInfo* ti = FindGgmlType(t->type);
  if (ti == nullptr) {
    return InvalidArgument(
        StrCat("gguf: tensor \"", name, "\" has unknown or unsupported type id ", t->type));
  }
  if (t->ne[0] % ti->block != 0) {
    return InvalidArgument(StrCat("gguf: tensor \"", name, "\" of type ", ti->name, " has ne[0] = ",
                                  t->ne[0], ", not a multiple of its block size ", ti->block));
  }
  t->numel = static_cast<int64_t>(numel);
  t->bytes = numel / static_cast<uint64_t>(ti->block) * static_cast<uint64_t>(ti->block_bytes);
  return OkStatus();
}

// Offsets: aligned, inside the data section, no two tensors sharing bytes.
Status CheckPlacement(const GgufHeader& h, uint64_t data_size) {
  std::vector<const GgufTensorInfo*> by_off;
  for (const GgufTensorInfo& t : h.tensors) {
    if (t.offset % h.alignment != 0) {
      return InvalidArgument(StrCat("gguf: tensor \"", t.name, "\" offset ", t.offset,
                                    " is not a multiple of the alignment ", h.alignment));
    }
    if (t.offset > data_size || t.bytes > data_size - t.offset) {
      return DataLoss(StrCat("gguf: tensor \"", t.name, "\" (", t.bytes, " bytes at offset ",
                             t.offset, ") runs past the end of the ", data_size,
                             "-byte data section (truncated file?)"));
    }
    if (t.bytes > 0) by_off.push_back(&t);
  }
  std::sort(by_off.begin(), by_off.end(),
            [](const GgufTensorInfo* a, const GgufTensorInfo* b) { return a->offset < b->offset; });
  for (size_t i = 1; i < by_off.size(); ++i) {
    if (by_off[i]->offset < by_off[i - 1]->offset + by_off[i - 1]->bytes) {
      return InvalidArgument(StrCat("gguf: tensors \"", by_off[i - 1]->name, "\" and \"",
                                    by_off[i]->name, "\" overlap"));
    }
  }
  return OkStatus();
}

Status ReadPreamble(Reader& r, uint32_t* version, uint64_t* n_tensors, uint64_t* n_kv) {
  uint32_t magic = 0;
  if (!r.Read(&magic)) return Truncated(r, "the magic");
  if (std::memcmp(&magic, "GGUF", 4) != 0) {
    return InvalidArgument("gguf: bad magic (the file does not start with \"GGUF\")");
  }
  if (!r.Read(version)) return Truncated(r, "the version");
  if (*version == 0x02000000 || *version == 0x03000000) {
    return InvalidArgument("gguf: big-endian GGUF files are not supported");
  }
  if (*version != 2 && *version != 3) {
    return InvalidArgument(StrCat("gguf: unsupported version ", *version, " (supported: 2, 3)"));
  }
  if (!r.Read(n_tensors) || !r.Read(n_kv)) return Truncated(r, "the header counts");
  return OkStatus();
}

}  // namespace

std::string GgufValueTypeName(GgufValueType t) {
  static constexpr const char* kNames[] = {"u8",   "i8",     "u16",   "i16", "u32", "i32", "f32",
                                           "bool", "string", "array", "u64", "i64", "f64"};
  const auto i = static_cast<uint32_t>(t);
  return i < std::size(kNames) ? kNames[i] : StrCat("type ", i);
}

const GgmlTypeInfo* FindGgmlType(uint32_t type) {
  const int i = TypeIndex(type);
  return i < 0 ? nullptr : &kTypes[i];
}

std::string GgmlTypeName(uint32_t type) {
  const GgmlTypeInfo* t = FindGgmlType(type);
  return t != nullptr ? std::string(t->name) : StrCat("type ", type);
}

bool GgufValue::is_integer() const {
  return type != GgufValueType::kF32 && type != GgufValueType::kF64 && ScalarSize(type) != 0;
}

bool GgufValue::is_float() const {
  return type == GgufValueType::kF32 || type == GgufValueType::kF64;
}

double GgufValue::NumberAt(uint64_t k) const {
  GgufValue v;
  if (raw == nullptr || k >= count) return 0.0;
  const size_t es = ScalarSize(elem_type);
  (void)DecodeScalar(elem_type, raw + k * es, "", &v);
  const bool fp = elem_type == GgufValueType::kF32 || elem_type == GgufValueType::kF64;
  return fp ? v.f : static_cast<double>(v.i);
}

const GgufValue* GgufHeader::Find(std::string_view key) const {
  auto it = metadata.find(key);
  return it == metadata.end() ? nullptr : &it->second;
}

const GgufTensorInfo* GgufHeader::FindTensor(std::string_view name) const {
  auto it = tensor_index.find(name);
  return it == tensor_index.end() ? nullptr : &tensors[it->second];
}

StatusOr<GgufHeader> ParseGgufHeader(const uint8_t* data, size_t size) {
  Reader r(data, size);
  GgufHeader h;
  uint64_t n_tensors = 0, n_kv = 0;
  RS_RETURN_IF_ERROR(ReadPreamble(r, &h.version, &n_tensors, &n_kv));
  RS_RETURN_IF_ERROR(ReadMetadata(r, n_kv, &h));
  RS_RETURN_IF_ERROR(ReadAlignment(&h));
  // A tensor info takes at least 8 (name length) + 4 + 8 + 4 + 8 bytes.
  if (n_tensors > kMaxGgufTensors) {
    return InvalidArgument(
        StrCat("gguf: tensor count ", n_tensors, " exceeds the limit of ", kMaxGgufTensors));
  }
  if (n_tensors > r.remaining() / 32) return Truncated(r, StrCat("the ", n_tensors, " tensors"));
  h.tensors.resize(n_tensors);
  for (uint64_t k = 0; k < n_tensors; ++k) {
    RS_RETURN_IF_ERROR(ReadTensorInfo(r, k, &h.tensors[k]));
    if (!h.tensor_index.emplace(h.tensors[k].name, k).second) {
      return InvalidArgument(StrCat("gguf: tensor \"", h.tensors[k].name, "\" appears twice"));
    }
  }
  // The data section starts at the next multiple of the alignment (size_t cannot overflow here:
  // pos <= size and alignment <= 2^20).
  const uint64_t pos = r.pos();
  h.data_offset = (pos + h.alignment - 1) / h.alignment * h.alignment;
  if (h.data_offset > size && !h.tensors.empty()) {
    return DataLoss(StrCat("gguf: the data section (at byte ", h.data_offset,
                           ") starts past the end of the ", size, "-byte file"));
  }
  const uint64_t data_size = h.data_offset <= size ? size - h.data_offset : 0;
  RS_RETURN_IF_ERROR(CheckPlacement(h, data_size));
  return h;
}

namespace {

Status WrongType(std::string_view key, const GgufValue& v, std::string_view want) {
  return InvalidArgument(
      StrCat("gguf: metadata \"", key, "\" must be ", want, ", got ", GgufValueTypeName(v.type)));
}

}  // namespace

StatusOr<int64_t> GgufHeader::GetInt(std::string_view key, std::optional<int64_t> dflt) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) {
    if (dflt) return *dflt;
    return InvalidArgument(StrCat("gguf: missing metadata \"", key, "\""));
  }
  if (!v->is_integer() || v->type == GgufValueType::kBool) return WrongType(key, *v, "an integer");
  if (!v->int_ok) return InvalidArgument(StrCat("gguf: metadata \"", key, "\" is out of range"));
  return v->i;
}

StatusOr<double> GgufHeader::GetFloat(std::string_view key, std::optional<double> dflt) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) {
    if (dflt) return *dflt;
    return InvalidArgument(StrCat("gguf: missing metadata \"", key, "\""));
  }
  if (v->is_float()) return v->f;
  if (v->is_integer() && v->int_ok && v->type != GgufValueType::kBool) {
    return static_cast<double>(v->i);
  }
  return WrongType(key, *v, "a number");
}

StatusOr<bool> GgufHeader::GetBool(std::string_view key, std::optional<bool> dflt) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) {
    if (dflt) return *dflt;
    return InvalidArgument(StrCat("gguf: missing metadata \"", key, "\""));
  }
  if (v->type != GgufValueType::kBool) return WrongType(key, *v, "a bool");
  return v->i != 0;
}

StatusOr<std::string> GgufHeader::GetString(std::string_view key,
                                            std::optional<std::string> dflt) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) {
    if (dflt) return *dflt;
    return InvalidArgument(StrCat("gguf: missing metadata \"", key, "\""));
  }
  if (v->type != GgufValueType::kString) return WrongType(key, *v, "a string");
  return std::string(v->str);
}

StatusOr<const GgufValue*> GgufHeader::GetArray(std::string_view key, GgufValueType elem) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return static_cast<const GgufValue*>(nullptr);
  if (v->type != GgufValueType::kArray) return WrongType(key, *v, "an array");
  const bool numeric = v->elem_type != GgufValueType::kString;
  const bool ok = elem == GgufValueType::kF32 ? numeric && v->elem_type != GgufValueType::kBool
                                              : v->elem_type == elem;
  if (!ok) {
    return InvalidArgument(StrCat("gguf: metadata \"", key, "\" must be an array of ",
                                  GgufValueTypeName(elem), ", got an array of ",
                                  GgufValueTypeName(v->elem_type)));
  }
  return v;
}

StatusOr<std::unique_ptr<GgufFile>> OpenGguf(const std::string& path) {
  auto out = std::make_unique<GgufFile>();
  RS_ASSIGN_OR_RETURN(out->file, MappedFile::Open(path));
  auto h = ParseGgufHeader(out->file->data(), out->file->size());
  if (!h.ok()) return Annotate(h.status(), path);
  out->header = std::move(h).value();
  return out;
}

bool IsGgufFile(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  char magic[4] = {};
  const ssize_t n = ::read(fd, magic, 4);
  ::close(fd);
  return n == 4 && std::memcmp(magic, "GGUF", 4) == 0;
}

}  // namespace ragserve::engine
