// Server-side chunking of RagService.Ingest (services/router/ingest_chunking.h).
#include "services/router/ingest_chunking.h"

#include <gtest/gtest.h>

#include <string>

namespace ragserve::router {
namespace {

using google::protobuf::RepeatedPtrField;

std::string Words(int n) {
  std::string s;
  for (int i = 0; i < n; ++i) s += (i ? " w" : "w") + std::to_string(i);
  return s;
}

v1::Document Doc(const std::string& id, const std::string& text) {
  v1::Document d;
  d.set_id(id);
  d.set_text(text);
  d.set_metadata_json(R"({"source":"test"})");
  return d;
}

TEST(IngestChunkingTest, LongDocumentBecomesPassagesThatKeepItsIdOffsetAndMetadata) {
  RepeatedPtrField<v1::Document> in, out;
  const std::string text = Words(500);
  *in.Add() = Doc("book", text);
  ChunkDocuments(in, {.max_tokens = 200, .overlap_tokens = 32}, &out);
  // 500 words, windows of 200 advancing by 168: 0-199, 168-367, 336-499.
  ASSERT_EQ(out.size(), 3);
  for (int i = 0; i < out.size(); ++i) {
    const v1::Document& p = out[i];
    EXPECT_EQ(p.id(), "book#" + std::to_string(i));
    EXPECT_EQ(p.document_id(), "book");
    EXPECT_EQ(p.chunk_index(), i);
    EXPECT_EQ(p.metadata_json(), R"({"source":"test"})");
    // The offset points at the passage's bytes in the document's text.
    ASSERT_LE(p.offset() + static_cast<int64_t>(p.text().size()),
              static_cast<int64_t>(text.size()));
    EXPECT_EQ(text.substr(p.offset(), p.text().size()), p.text());
  }
  EXPECT_EQ(out[0].offset(), 0);
  EXPECT_EQ(out[1].text().substr(0, 5), "w168 ");  // 32 words of overlap
  EXPECT_EQ(out[2].text().substr(out[2].text().size() - 4), "w499");
}

TEST(IngestChunkingTest, ShortVectorAndAlreadyCutDocumentsPassUnchanged) {
  RepeatedPtrField<v1::Document> in, out;
  *in.Add() = Doc("short", Words(200));  // exactly one passage
  v1::Document with_vector = Doc("vec", Words(450));
  with_vector.add_vector(0.5f);
  *in.Add() = with_vector;
  v1::Document passage = Doc("book#3", Words(450));
  passage.set_document_id("book");
  passage.set_chunk_index(3);
  *in.Add() = passage;
  *in.Add() = Doc("empty", "");
  ChunkDocuments(in, {.max_tokens = 200, .overlap_tokens = 32}, &out);
  ASSERT_EQ(out.size(), 4);
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(out[i].SerializeAsString(), in[i].SerializeAsString()) << in[i].id();
  }
  EXPECT_TRUE(out[0].document_id().empty());
}

TEST(IngestChunkingTest, DocumentsKeepTheirOrderAroundACutOne) {
  RepeatedPtrField<v1::Document> in, out;
  *in.Add() = Doc("a", "first document");
  *in.Add() = Doc("b", Words(30));
  *in.Add() = Doc("c", "last document");
  ChunkDocuments(in, {.max_tokens = 10, .overlap_tokens = 0}, &out);
  ASSERT_EQ(out.size(), 5);
  EXPECT_EQ(out[0].id(), "a");
  EXPECT_EQ(out[1].id(), "b#0");
  EXPECT_EQ(out[2].id(), "b#1");
  EXPECT_EQ(out[3].id(), "b#2");
  EXPECT_EQ(out[3].text(), Words(30).substr(out[3].offset()));
  EXPECT_EQ(out[4].id(), "c");
}

}  // namespace
}  // namespace ragserve::router
