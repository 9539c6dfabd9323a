// Passages cut from long documents (services/common/chunker.h).
#include "services/common/chunker.h"

#include <gtest/gtest.h>

#include <random>
#include <sstream>

namespace ragserve::chunking {
namespace {

std::vector<Chunk> ChunkAll(std::string_view doc, ChunkOptions o, size_t piece = 0) {
  Chunker c(o);
  std::vector<Chunk> out;
  if (piece == 0) piece = doc.size() + 1;
  for (size_t i = 0; i < doc.size(); i += piece) c.Feed(doc.substr(i, piece), &out);
  c.Finish(&out);
  return out;
}

std::vector<std::string> Words(std::string_view text) {
  std::istringstream in{std::string(text)};
  std::vector<std::string> w;
  for (std::string s; in >> s;) w.push_back(s);
  return w;
}

std::string RandomDoc(uint64_t seed, int words) {
  std::mt19937_64 rng(seed);
  const char* kWords[] = {"river", "ferry", "é", "keeper", "of", "the", "light.", "north?", "a"};
  std::string doc;
  for (int i = 0; i < words; ++i) {
    doc += kWords[rng() % 9];
    const int gap = static_cast<int>(rng() % 10);
    doc += gap == 0 ? "\n\n" : gap == 1 ? "\n" : gap == 2 ? "  \t" : " ";
  }
  return doc;
}

TEST(ChunkerTest, PassagesCoverTheDocumentWithOverlapAndExactOffsets) {
  const std::string doc = RandomDoc(1, 2000);
  const ChunkOptions o{.max_tokens = 50, .overlap_tokens = 10};
  const auto chunks = ChunkAll(doc, o);
  ASSERT_GT(chunks.size(), 40u);
  const auto all = Words(doc);
  size_t next = 0;  // index in `all` of the first word not yet covered
  for (size_t i = 0; i < chunks.size(); ++i) {
    const Chunk& c = chunks[i];
    EXPECT_EQ(c.index, static_cast<int32_t>(i));
    EXPECT_EQ(doc.substr(c.offset, c.text.size()), c.text);  // offsets point into the document
    const auto w = Words(c.text);
    ASSERT_GE(w.size(), 1u);
    EXPECT_LE(w.size(), 50u);
    // The passage starts at most overlap_tokens before the first uncovered word.
    const size_t start = (i == 0) ? 0 : next - std::min<size_t>(10, next);
    size_t first = next - std::min<size_t>(next, 10);
    while (first < next && !std::equal(w.begin(), w.end(), all.begin() + first)) ++first;
    ASSERT_TRUE(std::equal(w.begin(), w.end(), all.begin() + first)) << "chunk " << i;
    EXPECT_GE(first, start);
    EXPECT_LE(first, next);
    next = first + w.size();
  }
  EXPECT_EQ(next, all.size());  // every word is in some passage
}

TEST(ChunkerTest, FeedingInPiecesGivesTheSamePassages) {
  const std::string doc = RandomDoc(2, 3000);
  const ChunkOptions o{.max_tokens = 64, .overlap_tokens = 16};
  const auto whole = ChunkAll(doc, o);
  for (size_t piece : {1, 7, 100, 4096}) {
    const auto pieces = ChunkAll(doc, o, piece);
    ASSERT_EQ(pieces.size(), whole.size()) << piece;
    for (size_t i = 0; i < whole.size(); ++i) {
      EXPECT_EQ(pieces[i].text, whole[i].text) << piece;
      EXPECT_EQ(pieces[i].offset, whole[i].offset) << piece;
    }
  }
}

TEST(ChunkerTest, CutsAtParagraphsThenSentencesInTheSecondHalfOfTheWindow) {
  std::string para;
  for (int i = 0; i < 60; ++i) para += "word ";
  // 60 words, a blank line, 60 more: a 100-token window ends at the paragraph.
  auto chunks = ChunkAll(para + "\n\n" + para, {.max_tokens = 100, .overlap_tokens = 0});
  ASSERT_EQ(chunks.size(), 2u);
  EXPECT_EQ(Words(chunks[0].text).size(), 60u);
  // Sentences of 30 words (no paragraphs): the window ends after the 3rd sentence (90 words).
  std::string text;
  for (int s = 0; s < 6; ++s) {
    for (int i = 0; i < 29; ++i) text += "w ";
    text += "end. ";
  }
  chunks = ChunkAll(text, {.max_tokens = 100, .overlap_tokens = 0});
  ASSERT_GE(chunks.size(), 2u);
  EXPECT_EQ(Words(chunks[0].text).size(), 90u);
  EXPECT_EQ(chunks[0].text.substr(chunks[0].text.size() - 4), "end.");
  // A boundary in the first half is not used: the window is filled to max_tokens.
  chunks = ChunkAll("a. " + para + para, {.max_tokens = 100, .overlap_tokens = 0});
  EXPECT_EQ(Words(chunks[0].text).size(), 100u);
}

TEST(ChunkerTest, ShortDocumentsAndEndlessWordsAndEmptyInput) {
  auto chunks = ChunkAll("  just a few words  ", {.max_tokens = 100, .overlap_tokens = 10});
  ASSERT_EQ(chunks.size(), 1u);
  EXPECT_EQ(chunks[0].text, "just a few words");
  EXPECT_EQ(chunks[0].offset, 2);
  EXPECT_TRUE(ChunkAll(" \n\n\t ", {}).empty());
  // 10 KB without whitespace: cut into kMaxWordBytes "words", fed in small pieces.
  const auto big = ChunkAll(std::string(10240, 'x'), {.max_tokens = 4, .overlap_tokens = 1}, 333);
  ASSERT_GE(big.size(), 3u);
  for (const auto& c : big) EXPECT_LE(c.text.size(), 4 * kMaxWordBytes + 3);
  EXPECT_EQ(ValidateChunkOptions({.max_tokens = 10, .overlap_tokens = 10}).code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidateChunkOptions({.max_tokens = 0}).code(), StatusCode::kInvalidArgument);
}

std::string Html(std::string_view html, size_t piece = 0) {
  HtmlToText h;
  std::string out;
  if (piece == 0) piece = html.size() + 1;
  for (size_t i = 0; i < html.size(); i += piece) h.Feed(html.substr(i, piece), &out);
  h.Finish(&out);
  return out;
}

TEST(HtmlToTextTest, StripsTagsScriptsAndCommentsAndDecodesEntities) {
  const std::string html =
      "<html><head><title>T</title><style>p {color: red}</style>"
      "<script>if (a < b) { x = '</p>'; }</script></head>"
      "<body><h1>Ferry&nbsp;times</h1><!-- hidden <p>text</p> -->"
      "<p>Leaves at <b>nine</b> &amp; returns at &#49;&#x30;.</p>"
      "<p>Caf&eacute; &#233; &lt;ok&gt; & done</p></body></html>";
  const std::string text = Html(html);
  EXPECT_EQ(Words(text),
            (std::vector<std::string>{"T", "Ferry", "times", "Leaves", "at", "nine", "&", "returns",
                                      "at", "10.", "Caf&eacute;", "é", "<ok>", "&", "done"}));
  EXPECT_NE(text.find("times\n\n"), std::string::npos);  // block tags separate paragraphs
  for (size_t piece : {1, 2, 5, 13}) EXPECT_EQ(Html(html, piece), text) << piece;
}

}  // namespace
}  // namespace ragserve::chunking
