#include "services/engine/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>

#include "nlohmann/json.hpp"

namespace ragserve::engine {

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

namespace {

using nlohmann::json;

StatusOr<DType> ParseDType(const std::string& s, const std::string& name) {
  if (s == "F32") return DType::kF32;
  if (s == "F16") return DType::kF16;
  if (s == "BF16") return DType::kBF16;
  return InvalidArgument(StrCat("safetensors: tensor \"", name, "\" has unsupported dtype \"", s,
                                "\" (supported: F32, F16, BF16)"));
}

StatusOr<TensorInfo> ParseEntry(const std::string& name, const json& e, uint64_t data_size) {
  if (!e.is_object()) {
    return InvalidArgument(StrCat("safetensors: entry \"", name, "\" is not an object"));
  }
  TensorInfo t;
  t.name = name;
  auto dt = e.find("dtype");
  if (dt == e.end() || !dt->is_string()) {
    return InvalidArgument(StrCat("safetensors: tensor \"", name, "\" has no string dtype"));
  }
  RS_ASSIGN_OR_RETURN(t.dtype, ParseDType(dt->get<std::string>(), name));
  auto sh = e.find("shape");
  if (sh == e.end() || !sh->is_array() || sh->size() > 8) {
    return InvalidArgument(StrCat("safetensors: tensor \"", name, "\" has no valid shape"));
  }
  // numel overflow guard: every dim and the running product stay below 2^48.
  constexpr int64_t kLimit = int64_t{1} << 48;
  int64_t numel = 1;
  for (const auto& d : *sh) {
    if (!d.is_number_integer() || d.get<int64_t>() < 0 || d.get<int64_t>() >= kLimit) {
      return InvalidArgument(
          StrCat("safetensors: tensor \"", name, "\" has bad dimension ", d.dump()));
    }
    const int64_t v = d.get<int64_t>();
    t.shape.push_back(v);
    if (v != 0 && numel > kLimit / v) {
      return InvalidArgument(StrCat("safetensors: tensor \"", name, "\" shape is too large"));
    }
    numel *= v;
  }
  auto off = e.find("data_offsets");
  if (off == e.end() || !off->is_array() || off->size() != 2 || !(*off)[0].is_number_unsigned() ||
      !(*off)[1].is_number_unsigned()) {
    if (off != e.end() && off->is_array() && off->size() == 2 && (*off)[0].is_number_integer() &&
        (*off)[1].is_number_integer()) {
      return InvalidArgument(
          StrCat("safetensors: tensor \"", name, "\" has negative data_offsets"));
    }
    return InvalidArgument(StrCat("safetensors: tensor \"", name, "\" has no valid data_offsets"));
  }
  t.begin = (*off)[0].get<uint64_t>();
  t.end = (*off)[1].get<uint64_t>();
  if (t.end < t.begin) {
    return InvalidArgument(StrCat("safetensors: tensor \"", name, "\" data_offsets [", t.begin,
                                  ", ", t.end, "] are reversed"));
  }
  const uint64_t want = static_cast<uint64_t>(numel) * kernels::DTypeSize(t.dtype);
  if (t.end - t.begin != want) {
    return InvalidArgument(StrCat("safetensors: tensor \"", name, "\" spans ", t.end - t.begin,
                                  " bytes but its shape and dtype need ", want));
  }
  if (t.end > data_size) {
    return DataLoss(StrCat("safetensors: tensor \"", name, "\" ends at byte ", t.end,
                           " beyond the data buffer of ", data_size, " bytes (truncated file?)"));
  }
  return t;
}

}  // namespace

StatusOr<SafetensorsHeader> ParseSafetensorsHeader(const uint8_t* data, size_t size,
                                                   uint64_t file_size) {
  if (size < 8 || file_size < 8) {
    return DataLoss(StrCat("safetensors: file of ", file_size, " bytes has no 8-byte header size"));
  }
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | data[i];
  if (n > kMaxSafetensorsHeader) {
    return InvalidArgument(StrCat("safetensors: header size ", n, " exceeds the limit of ",
                                  kMaxSafetensorsHeader, " bytes"));
  }
  if (n > file_size - 8 || n > size - 8) {
    return DataLoss(StrCat("safetensors: header size ", n, " runs past the end of the ", file_size,
                           "-byte file (truncated?)"));
  }
  SafetensorsHeader h;
  h.data_offset = 8 + n;
  const char* text = reinterpret_cast<const char*>(data + 8);
  json j = json::parse(text, text + n, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return InvalidArgument("safetensors: header is not valid JSON");
  if (!j.is_object()) return InvalidArgument("safetensors: header is not a JSON object");
  const uint64_t data_size = file_size - h.data_offset;
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (!it->is_object()) return InvalidArgument("safetensors: __metadata__ is not an object");
      for (auto m = it->begin(); m != it->end(); ++m) {
        if (!m->is_string()) {
          return InvalidArgument(
              StrCat("safetensors: __metadata__ value of \"", m.key(), "\" is not a string"));
        }
        h.metadata[m.key()] = m->get<std::string>();
      }
      continue;
    }
    RS_ASSIGN_OR_RETURN(TensorInfo t, ParseEntry(it.key(), *it, data_size));
    h.tensors.emplace(t.name, std::move(t));
  }
  // No two tensors may share bytes.
  std::vector<const TensorInfo*> by_off;
  for (const auto& [name, t] : h.tensors) {
    if (t.end > t.begin) by_off.push_back(&t);
  }
  std::sort(by_off.begin(), by_off.end(),
            [](const TensorInfo* a, const TensorInfo* b) { return a->begin < b->begin; });
  for (size_t i = 1; i < by_off.size(); ++i) {
    if (by_off[i]->begin < by_off[i - 1]->end) {
      return InvalidArgument(StrCat("safetensors: tensors \"", by_off[i - 1]->name, "\" and \"",
                                    by_off[i]->name, "\" overlap"));
    }
  }
  return h;
}

StatusOr<std::unique_ptr<MappedFile>> MappedFile::Open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return NotFound(StrCat("cannot open ", path, ": ", std::strerror(errno)));
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int e = errno;
    ::close(fd);
    return Internal(StrCat("fstat ", path, ": ", std::strerror(e)));
  }
  std::unique_ptr<MappedFile> f(new MappedFile());
  f->path_ = path;
  f->size_ = static_cast<size_t>(st.st_size);
  if (f->size_ > 0) {
    void* p = ::mmap(nullptr, f->size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      const int e = errno;
      ::close(fd);
      return Internal(StrCat("mmap ", path, ": ", std::strerror(e)));
    }
    f->data_ = static_cast<const uint8_t*>(p);
  }
  ::close(fd);
  return f;
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(const_cast<uint8_t*>(data_), size_);
}

StatusOr<SafetensorsFile> OpenSafetensors(const std::string& path) {
  SafetensorsFile out;
  RS_ASSIGN_OR_RETURN(out.file, MappedFile::Open(path));
  auto h = ParseSafetensorsHeader(out.file->data(), out.file->size(), out.file->size());
  if (!h.ok()) return Annotate(h.status(), path);
  out.header = std::move(h).value();
  return out;
}

Status WriteSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                        const std::map<std::string, std::string>& metadata) {
  std::vector<const TensorToWrite*> sorted;
  for (const auto& t : tensors) sorted.push_back(&t);
  std::sort(sorted.begin(), sorted.end(),
            [](const TensorToWrite* a, const TensorToWrite* b) { return a->name < b->name; });
  json j = json::object();
  uint64_t off = 0;
  for (const TensorToWrite* t : sorted) {
    int64_t numel = 1;
    for (int64_t d : t->shape) numel *= d;
    RS_CHECK_ARG(static_cast<uint64_t>(numel) * kernels::DTypeSize(t->dtype) == t->bytes.size(),
                 "tensor \"", t->name, "\" has ", t->bytes.size(), " bytes, shape needs ",
                 numel * kernels::DTypeSize(t->dtype));
    j[t->name] = {{"dtype", std::string(kernels::DTypeName(t->dtype))},
                  {"shape", t->shape},
                  {"data_offsets", {off, off + t->bytes.size()}}};
    off += t->bytes.size();
  }
  if (!metadata.empty()) j["__metadata__"] = metadata;
  std::string header = j.dump();
  while ((8 + header.size()) % 8 != 0) header.push_back(' ');
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return Internal(StrCat("cannot create ", path));
  uint8_t len[8];
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(n >> (8 * i));
  out.write(reinterpret_cast<const char*>(len), 8);
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  for (const TensorToWrite* t : sorted) {
    out.write(reinterpret_cast<const char*>(t->bytes.data()),
              static_cast<std::streamsize>(t->bytes.size()));
  }
  out.close();
  if (!out) return Internal(StrCat("write failed: ", path));
  return OkStatus();
}

}  // namespace ragserve::engine
