#include "services/router/ingest_chunking.h"

#include <string>
#include <utility>
#include <vector>

#include "services/common/wire.h"

namespace ragserve::router {

void ChunkDocuments(const google::protobuf::RepeatedPtrField<v1::Document>& docs,
                    const chunking::ChunkOptions& o,
                    google::protobuf::RepeatedPtrField<v1::Document>* out) {
  std::vector<chunking::Chunk> chunks;
  for (const v1::Document& d : docs) {
    chunks.clear();
    if (d.vector_size() == 0 && d.document_id().empty() && !d.text().empty()) {
      chunking::Chunker chunker(o);
      chunker.Feed(d.text(), &chunks);
      chunker.Finish(&chunks);
    }
    if (chunks.size() <= 1) {
      *out->Add() = d;
      continue;
    }
    for (chunking::Chunk& c : chunks)
      *out->Add() = wire::ChunkDocument(d.id(), d.metadata_json(), std::move(c));
  }
}

}  // namespace ragserve::router
