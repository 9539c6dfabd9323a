#include "services/router/ingest_chunking.h"

#include <string>
#include <utility>
#include <vector>

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
    for (chunking::Chunk& c : chunks) {
      v1::Document* p = out->Add();
      p->set_id(d.id() + "#" + std::to_string(c.index));
      p->set_text(std::move(c.text));
      p->set_metadata_json(d.metadata_json());
      p->set_document_id(d.id());
      p->set_chunk_index(c.index);
      p->set_offset(c.offset);
    }
  }
}

}  // namespace ragserve::router
