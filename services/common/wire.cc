#include "services/common/wire.h"

#include <xxhash.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <utility>

#include "ragserve/v1/index.pb.h"
#include "services/common/chunker.h"

namespace ragserve::wire {

namespace {

// IEEE half -> float (exact).
float HalfToFloat(uint16_t bits) {
  _Float16 h;
  std::memcpy(&h, &bits, sizeof bits);
  return static_cast<float>(h);
}

}  // namespace

StatusOr<int64_t> CheckedElementCount(const v1::Tensor& t, const std::vector<int64_t>& shape,
                                      const char* what) {
  RS_CHECK_ARG(t.shape_size() == static_cast<int>(shape.size()), what, ": expected ", shape.size(),
               " dimensions, got ", t.shape_size());
  int64_t n = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    const int64_t want = shape[i], got = t.shape(static_cast<int>(i));
    RS_CHECK_ARG(want < 0 || got == want, what, ": dimension ", i, " must be ", want, ", got ",
                 got);
    RS_CHECK_ARG(got >= 0, what, ": negative dimension ", i);
    RS_CHECK_ARG(!__builtin_mul_overflow(n, got, &n), what, ": shape overflows int64");
  }
  return n;
}

StatusOr<std::vector<float>> TensorToFloats(const v1::Tensor& t, const std::vector<int64_t>& shape,
                                            bool allow_f16, const char* what) {
  RS_ASSIGN_OR_RETURN(const int64_t n, CheckedElementCount(t, shape, what));
  int64_t elem_bytes = 0;
  if (t.dtype() == v1::DTYPE_F32 || t.dtype() == v1::DTYPE_UNSPECIFIED) {
    elem_bytes = 4;
  } else if (t.dtype() == v1::DTYPE_F16 && allow_f16) {
    elem_bytes = 2;
  } else {
    return InvalidArgument(StrCat(what, ": unsupported dtype ", v1::DType_Name(t.dtype()),
                                  allow_f16 ? " (F32 or F16)" : " (F32 only)"));
  }
  // The byte count is checked before anything is allocated: the shape is the client's word, the
  // bytes are what arrived.
  int64_t need = 0;
  RS_CHECK_ARG(!__builtin_mul_overflow(n, elem_bytes, &need), what, ": shape overflows int64");
  RS_CHECK_ARG(static_cast<int64_t>(t.data().size()) == need, what, ": ", n, " ",
               elem_bytes == 4 ? "F32" : "F16", " elements need ", need, " bytes, got ",
               t.data().size());
  std::vector<float> out(static_cast<size_t>(n));
  if (elem_bytes == 4) {
    std::memcpy(out.data(), t.data().data(), static_cast<size_t>(need));
  } else {
    for (int64_t i = 0; i < n; ++i) {
      uint16_t h;
      std::memcpy(&h, t.data().data() + 2 * i, 2);
      out[i] = HalfToFloat(h);
    }
  }
  return out;
}

void FloatsToTensor(const float* x, const std::vector<int64_t>& shape, v1::Tensor* out) {
  int64_t n = 1;
  out->set_dtype(v1::DTYPE_F32);
  out->clear_shape();
  for (int64_t s : shape) {
    out->add_shape(s);
    n *= s;
  }
  out->set_data(x, static_cast<size_t>(n) * sizeof(float));
}

std::string PassageKey(std::string_view passage_text) {
  char hex[17];
  std::snprintf(
      hex, sizeof(hex), "%016llx",
      static_cast<unsigned long long>(XXH3_64bits(passage_text.data(), passage_text.size())));
  return hex;
}

v1::Document ChunkDocument(const std::string& document_id, const std::string& metadata_json,
                           chunking::Chunk c) {
  v1::Document d;
  d.set_id(document_id + "#" + std::to_string(c.index));
  d.set_text(std::move(c.text));
  d.set_metadata_json(metadata_json);
  d.set_document_id(document_id);
  d.set_chunk_index(c.index);
  d.set_offset(c.offset);
  return d;
}

}  // namespace ragserve::wire
