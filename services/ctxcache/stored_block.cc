#include "services/ctxcache/stored_block.h"

#include <xxhash.h>

#include <cstring>

namespace ragserve::ctxcache {
namespace {

constexpr char kMagic[8] = {'R', 'S', 'K', 'V', 'B', 'L', 'K', '1'};
constexpr uint32_t kVersion = 1;
// magic + version + header_bytes + 3 dims + dtype/flag/pad + tokens + 2 lengths
constexpr size_t kFixedHeader = 8 + 4 + 4 + 12 + 4 + 8 + 8;
constexpr uint32_t kMaxStringBytes = 1 << 16;

template <typename T>
void Put(std::string* out, T v) {
  static_assert(std::is_trivially_copyable_v<T>);
  char buf[sizeof(T)];
  std::memcpy(buf, &v, sizeof(T));  // the project targets little-endian hosts only
  out->append(buf, sizeof(T));
}

// Bounds-checked reader over the serialized bytes.
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
  bool Bytes(size_t n, std::string_view* out) {
    if (s_.size() - pos_ < n) return false;
    *out = s_.substr(pos_, n);
    pos_ += n;
    return true;
  }
  size_t pos() const { return pos_; }

 private:
  std::string_view s_;
  size_t pos_ = 0;
};

bool ValidDType(uint8_t d) { return d <= static_cast<uint8_t>(DType::kBF16); }

}  // namespace

int64_t StoredBlock::ByteSize() const {
  int64_t n = static_cast<int64_t>(fingerprint.size() + (positions.size() + token_ids.size()) * 4);
  for (const auto& l : k) n += static_cast<int64_t>(l.size());
  for (const auto& l : v) n += static_cast<int64_t>(l.size());
  return n;
}

Status StoredBlock::Validate() const {
  RS_CHECK_ARG(layers > 0 && layers <= kMaxLayers, "StoredBlock layers ", layers, " not in [1, ",
               kMaxLayers, "]");
  RS_CHECK_ARG(kv_heads > 0 && kv_heads <= kMaxKvHeads, "StoredBlock kv_heads ", kv_heads,
               " not in [1, ", kMaxKvHeads, "]");
  RS_CHECK_ARG(head_dim > 0 && head_dim <= kMaxHeadDim, "StoredBlock head_dim ", head_dim,
               " not in [1, ", kMaxHeadDim, "]");
  RS_CHECK_ARG(tokens > 0 && tokens <= kMaxBlockTokens, "StoredBlock tokens ", tokens,
               " not in [1, ", kMaxBlockTokens, "] (an empty passage has no KV)");
  RS_CHECK_ARG(ValidDType(static_cast<uint8_t>(dtype)), "StoredBlock dtype ",
               static_cast<int>(dtype), " is not f32/f16/bf16");
  const int64_t layer_bytes = LayerElements() * static_cast<int64_t>(kernels::DTypeSize(dtype));
  RS_CHECK_ARG(layer_bytes * 2 * layers <= kMaxBlockBytes, "StoredBlock of ",
               layer_bytes * 2 * layers, " bytes exceeds ", kMaxBlockBytes);
  RS_CHECK_ARG(!fingerprint.empty(), "StoredBlock fingerprint is empty");
  RS_CHECK_ARG(fingerprint.size() < kMaxStringBytes, "StoredBlock fingerprint of ",
               fingerprint.size(), " bytes is too long");
  RS_CHECK_ARG(static_cast<int64_t>(positions.size()) == tokens, "StoredBlock positions has ",
               positions.size(), " entries for ", tokens, " tokens");
  RS_CHECK_ARG(token_ids.empty() || static_cast<int64_t>(token_ids.size()) == tokens,
               "StoredBlock token_ids has ", token_ids.size(), " entries for ", tokens, " tokens");
  RS_CHECK_ARG(static_cast<int32_t>(k.size()) == layers && static_cast<int32_t>(v.size()) == layers,
               "StoredBlock has ", k.size(), " K and ", v.size(),
               " V layers for layers = ", layers);
  for (int32_t l = 0; l < layers; ++l) {
    RS_CHECK_ARG(static_cast<int64_t>(k[l].size()) == layer_bytes &&
                     static_cast<int64_t>(v[l].size()) == layer_bytes,
                 "StoredBlock layer ", l, " holds ", k[l].size(), " K / ", v[l].size(),
                 " V bytes; expected ", layer_bytes);
  }
  return OkStatus();
}

void StoredBlock::LayerToF32(int layer, bool is_value, float* out) const {
  const auto& src = is_value ? v[layer] : k[layer];
  kernels::ConvertToF32(src.data(), dtype, LayerElements(), out);
}

StoredBlock StoredBlock::ConvertTo(DType to) const {
  StoredBlock out = *this;
  if (to == dtype) return out;
  out.dtype = to;
  const int64_t n = LayerElements();
  std::vector<float> tmp(n);
  for (int32_t l = 0; l < layers; ++l) {
    for (bool is_value : {false, true}) {
      LayerToF32(l, is_value, tmp.data());
      auto& dst = is_value ? out.v[l] : out.k[l];
      dst.assign(n * kernels::DTypeSize(to), 0);
      kernels::ConvertFromF32(tmp.data(), to, n, dst.data());
    }
  }
  return out;
}

StatusOr<StoredBlock> MakeStoredBlock(int32_t kv_heads, int32_t head_dim, int64_t tokens,
                                      const std::vector<std::vector<float>>& k,
                                      const std::vector<std::vector<float>>& v,
                                      std::string fingerprint, DType dtype,
                                      std::vector<int32_t> positions) {
  RS_CHECK_ARG(k.size() == v.size(), "MakeStoredBlock: ", k.size(), " K layers but ", v.size(),
               " V layers");
  StoredBlock b;
  b.layers = static_cast<int32_t>(k.size());
  b.kv_heads = kv_heads;
  b.head_dim = head_dim;
  b.tokens = tokens;
  b.dtype = DType::kF32;
  b.fingerprint = std::move(fingerprint);
  if (positions.empty() && tokens > 0 && tokens <= kMaxBlockTokens) {
    positions.resize(tokens);
    for (int64_t i = 0; i < tokens; ++i) positions[i] = static_cast<int32_t>(i);
  }
  b.positions = std::move(positions);
  const int64_t n = b.LayerElements();
  for (size_t l = 0; l < k.size(); ++l) {
    RS_CHECK_ARG(static_cast<int64_t>(k[l].size()) == n && static_cast<int64_t>(v[l].size()) == n,
                 "MakeStoredBlock: layer ", l, " has ", k[l].size(), " K / ", v[l].size(),
                 " V floats; expected tokens*kv_heads*head_dim = ", n);
    auto bytes = [](const std::vector<float>& f) {
      std::vector<uint8_t> out(f.size() * sizeof(float));
      if (!f.empty()) std::memcpy(out.data(), f.data(), out.size());
      return out;
    };
    b.k.push_back(bytes(k[l]));
    b.v.push_back(bytes(v[l]));
  }
  RS_RETURN_IF_ERROR(b.Validate());
  if (dtype != DType::kF32) return b.ConvertTo(dtype);
  return b;
}

std::string SerializeStoredBlock(const StoredBlock& b, std::string_view tag) {
  std::string out;
  const size_t header = kFixedHeader + b.fingerprint.size() + tag.size() +
                        (b.positions.size() + b.token_ids.size()) * 4;
  out.reserve(header + static_cast<size_t>(b.ByteSize()) + 8);
  out.append(kMagic, sizeof(kMagic));
  Put<uint32_t>(&out, kVersion);
  Put<uint32_t>(&out, static_cast<uint32_t>(header));
  Put<int32_t>(&out, b.layers);
  Put<int32_t>(&out, b.kv_heads);
  Put<int32_t>(&out, b.head_dim);
  Put<uint8_t>(&out, static_cast<uint8_t>(b.dtype));
  Put<uint8_t>(&out, b.token_ids.empty() ? 0 : 1);
  Put<uint16_t>(&out, 0);
  Put<int64_t>(&out, b.tokens);
  Put<uint32_t>(&out, static_cast<uint32_t>(b.fingerprint.size()));
  Put<uint32_t>(&out, static_cast<uint32_t>(tag.size()));
  out.append(b.fingerprint);
  out.append(tag);
  out.append(reinterpret_cast<const char*>(b.positions.data()), b.positions.size() * 4);
  out.append(reinterpret_cast<const char*>(b.token_ids.data()), b.token_ids.size() * 4);
  for (int32_t l = 0; l < b.layers; ++l) {
    out.append(reinterpret_cast<const char*>(b.k[l].data()), b.k[l].size());
    out.append(reinterpret_cast<const char*>(b.v[l].data()), b.v[l].size());
  }
  Put<uint64_t>(&out, XXH64(out.data(), out.size(), 0));
  return out;
}

StatusOr<StoredBlock> DeserializeStoredBlock(std::string_view bytes,
                                             std::string_view expected_tag) {
  auto loss = [](auto&&... parts) { return DataLoss(StrCat("KV block: ", parts...)); };
  if (bytes.size() < kFixedHeader + 8) return loss("only ", bytes.size(), " bytes");
  if (std::memcmp(bytes.data(), kMagic, sizeof(kMagic)) != 0) return loss("bad magic");
  // The checksum first: a flipped bit anywhere is reported as such, not as a confusing field.
  uint64_t stored;
  std::memcpy(&stored, bytes.data() + bytes.size() - 8, 8);
  const uint64_t actual = XXH64(bytes.data(), bytes.size() - 8, 0);
  if (stored != actual) {
    return loss("checksum mismatch (stored ", stored, ", computed ", actual, ")");
  }
  Reader r(bytes.substr(0, bytes.size() - 8));
  std::string_view skip;
  r.Bytes(sizeof(kMagic), &skip);
  uint32_t version = 0, header = 0, fp_len = 0, tag_len = 0;
  StoredBlock b;
  uint8_t dtype = 0, has_ids = 0;
  uint16_t pad = 0;
  r.Get(&version);
  if (version != kVersion) return loss("version ", version, " (this build reads ", kVersion, ")");
  r.Get(&header);
  r.Get(&b.layers);
  r.Get(&b.kv_heads);
  r.Get(&b.head_dim);
  r.Get(&dtype);
  r.Get(&has_ids);
  r.Get(&pad);
  r.Get(&b.tokens);
  r.Get(&fp_len);
  if (!r.Get(&tag_len)) return loss("truncated header");
  if (!ValidDType(dtype) || has_ids > 1 || pad != 0) {
    return loss("bad dtype/flags ", int{dtype}, "/", int{has_ids}, "/", pad);
  }
  b.dtype = static_cast<DType>(dtype);
  if (b.layers <= 0 || b.layers > kMaxLayers || b.kv_heads <= 0 || b.kv_heads > kMaxKvHeads ||
      b.head_dim <= 0 || b.head_dim > kMaxHeadDim || b.tokens <= 0 || b.tokens > kMaxBlockTokens ||
      fp_len == 0 || fp_len >= kMaxStringBytes || tag_len >= kMaxStringBytes) {
    return loss("dims out of range: layers ", b.layers, ", kv_heads ", b.kv_heads, ", head_dim ",
                b.head_dim, ", tokens ", b.tokens, ", fingerprint ", fp_len, " B, tag ", tag_len,
                " B");
  }
  const uint64_t ids = static_cast<uint64_t>(b.tokens) * (1 + has_ids);
  const uint64_t want_header = kFixedHeader + fp_len + tag_len + ids * 4;
  const uint64_t layer_bytes =
      static_cast<uint64_t>(b.LayerElements()) * kernels::DTypeSize(b.dtype);
  const uint64_t want_total = want_header + layer_bytes * 2 * b.layers + 8;
  if (header != want_header) return loss("header size ", header, " != ", want_header);
  if (layer_bytes * 2 * b.layers > static_cast<uint64_t>(kMaxBlockBytes)) {
    return loss("payload of ", layer_bytes * 2 * b.layers, " bytes exceeds the limit");
  }
  if (bytes.size() != want_total) return loss(bytes.size(), " bytes; the header says ", want_total);
  std::string_view fp, tag, pos;
  r.Bytes(fp_len, &fp);
  r.Bytes(tag_len, &tag);
  if (!expected_tag.empty() && tag != expected_tag) {
    return loss("stored for another key (tag mismatch)");
  }
  b.fingerprint = std::string(fp);
  b.positions.resize(b.tokens);
  r.Bytes(b.tokens * 4, &pos);
  std::memcpy(b.positions.data(), pos.data(), pos.size());
  if (has_ids) {
    b.token_ids.resize(b.tokens);
    r.Bytes(b.tokens * 4, &pos);
    std::memcpy(b.token_ids.data(), pos.data(), pos.size());
  }
  b.k.resize(b.layers);
  b.v.resize(b.layers);
  for (int32_t l = 0; l < b.layers; ++l) {
    for (auto* dst : {&b.k[l], &b.v[l]}) {
      std::string_view data;
      if (!r.Bytes(layer_bytes, &data)) return loss("truncated payload at layer ", l);
      dst->assign(data.begin(), data.end());
    }
  }
  return b;
}

}  // namespace ragserve::ctxcache
