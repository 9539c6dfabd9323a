// Server-side chunking of ingested documents: RagService.Ingest cuts a long document into
// passages as `ragctl ingest` does (services/common/chunker.h), so any client can send whole
// documents.
#pragma once

#include <google/protobuf/repeated_ptr_field.h>

#include "ragserve/v1/index.pb.h"
#include "services/common/chunker.h"

namespace ragserve::router {

// Appends the passages of `docs` to *out. A document is cut when its text is longer than one
// passage of `o` (valid per chunking::ValidateChunkOptions): its passages are "<id>#<n>" with
// document_id = id, chunk_index = n and offset = the passage's byte offset in the text, each
// with the document's metadata_json. A document that fits one passage, that carries a vector
// (the vector is the whole document's) or that already is a passage (document_id set) is
// appended unchanged.
void ChunkDocuments(const google::protobuf::RepeatedPtrField<v1::Document>& docs,
                    const chunking::ChunkOptions& o,
                    google::protobuf::RepeatedPtrField<v1::Document>* out);

}  // namespace ragserve::router
