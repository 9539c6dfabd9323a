// Wire helpers shared by services and their clients: the Tensor codec of the internal protos, the
// passage keys that decoders report and routers match, and the documents of a chunked document. A
// service or client includes this instead of another service's headers, so each binary links only
// what it uses (this file's library, ragserve_wire, needs only the generated protobuf messages and
// xxHash).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "ragserve/v1/common.pb.h"
#include "services/common/status.h"

namespace ragserve::v1 {
class Document;  // ragserve/v1/index.pb.h
}  // namespace ragserve::v1
namespace ragserve::chunking {
struct Chunk;  // services/common/chunker.h
}  // namespace ragserve::chunking

namespace ragserve::wire {

// Decodes a Tensor of F32 (DTYPE_UNSPECIFIED counts as F32), or F16 when allow_f16, into floats.
// `shape` is the expected shape; a dimension of -1 accepts any size (>= 0). InvalidArgument naming
// `what` on a dtype, rank, dimension or byte-size mismatch, or a shape whose size overflows; the
// byte count is checked (overflow-safe) before the output is allocated. The only decoder of
// tensors: services and clients call it rather than reading Tensor.data themselves.
StatusOr<std::vector<float>> TensorToFloats(const v1::Tensor& t, const std::vector<int64_t>& shape,
                                            bool allow_f16, const char* what);
// The element count of `t` checked against `shape` as above, without looking at the data;
// InvalidArgument when the product of the dimensions overflows int64.
StatusOr<int64_t> CheckedElementCount(const v1::Tensor& t, const std::vector<int64_t>& shape,
                                      const char* what);
// Writes x[prod(shape)] into `out` as an F32 tensor of that shape (replacing its contents).
void FloatsToTensor(const float* x, const std::vector<int64_t>& shape, v1::Tensor* out);

// The key of a passage's text: 16 lowercase hex digits of its 64-bit XXH3 hash. Decoders report
// the passages resident in their KV cache this way (LoadReport.cached_passage_keys) and
// cache-aware routers look them up by it.
std::string PassageKey(std::string_view passage_text);

// Passage `c` of a document `document_id` cut into several (ragctl ingest and the router's Ingest
// alike): id "<document_id>#<chunk index>", the document's metadata, document_id, chunk_index and
// byte offset set, so every retrieved passage names where it came from.
v1::Document ChunkDocument(const std::string& document_id, const std::string& metadata_json,
                           chunking::Chunk c);

}  // namespace ragserve::wire
