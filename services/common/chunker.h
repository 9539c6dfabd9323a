// Splitting long documents into passages for retrieval, streaming (gRPC-free; used by ragctl
// ingest and available to any service).
//
// Tokens are whitespace-separated words (ASCII whitespace). A passage holds at most max_tokens of
// them; the next passage starts overlap_tokens before the previous one ended. Where a passage ends
// is chosen in the second half of the window: after the last paragraph break (a blank line) if
// there is one, else after the last sentence end (a word ending in . ! or ?, possibly followed by
// closing quotes or brackets), else at max_tokens. A passage's text is the document's bytes from
// its first word to its last (inner whitespace and newlines kept).
//
// Memory: a Chunker keeps the words of one passage window plus the unscanned piece, whatever the
// document's size; a "word" longer than kMaxWordBytes is cut there (at a UTF-8 boundary).
#pragma once

#include <cstdint>
#include <deque>
#include <string>
#include <string_view>
#include <vector>

#include "services/common/status.h"

namespace ragserve::chunking {

inline constexpr int64_t kMaxWordBytes = 1024;
inline constexpr int kMaxChunkTokens = 100000;

struct ChunkOptions {
  int max_tokens = 200;     // 1..kMaxChunkTokens
  int overlap_tokens = 32;  // 0..max_tokens-1
};

// InvalidArgument naming the bad value.
Status ValidateChunkOptions(const ChunkOptions& o);

struct Chunk {
  int32_t index = 0;   // position of the passage in its document, from 0
  int64_t offset = 0;  // byte offset of `text` in the document's text
  std::string text;
};

class Chunker {
 public:
  // `o` must be valid (ValidateChunkOptions).
  explicit Chunker(ChunkOptions o) : opts_(o) {}
  // Appends the next piece of the document (any size; a UTF-8 sequence or a word may straddle
  // pieces) and appends the passages completed by it to *out.
  void Feed(std::string_view piece, std::vector<Chunk>* out);
  // Ends the document: appends its last passages. The Chunker is then ready for a new document.
  void Finish(std::vector<Chunk>* out);

 private:
  struct Word {
    int64_t begin = 0, end = 0;  // absolute byte offsets
    bool sentence_end = false;
    bool paragraph_end = false;  // a blank line follows
  };
  void Scan(std::vector<Chunk>* out);
  void EndWord(int64_t end, std::vector<Chunk>* out);
  // Emits one passage from the front of words_ and keeps the overlap.
  void Emit(size_t count, std::vector<Chunk>* out);
  size_t CutPoint() const;
  void Trim();

  const ChunkOptions opts_;
  std::string buf_;       // the document's bytes from buf_base_ on
  int64_t buf_base_ = 0;  // absolute offset of buf_[0]
  int64_t scanned_ = 0;   // absolute offset scanned so far
  bool in_word_ = false;
  int64_t word_begin_ = 0;
  int gap_newlines_ = 0;  // newlines since the last word ended
  std::deque<Word> words_;
  size_t covered_ = 0;  // leading words_ already sent in the previous passage (the overlap)
  int32_t next_index_ = 0;
};

// Streaming HTML to text: drops tags, comments and the content of <script> and <style>; block
// tags (p, div, br, h1-h6, li, tr, ...) become blank lines so that the Chunker sees paragraphs;
// decodes &amp; &lt; &gt; &quot; &apos; &nbsp; and numeric entities. Not a validating parser:
// any input gives some text.
class HtmlToText {
 public:
  // Appends the text of the next piece of HTML to *out.
  void Feed(std::string_view piece, std::string* out);
  // Ends the document (flushes a pending entity).
  void Finish(std::string* out);

 private:
  enum class State { kText, kTag, kComment, kSkip, kEntity };
  void EndTag(std::string* out);
  void EndEntity(std::string* out);
  State state_ = State::kText;
  std::string tag_;     // inside <...>: the bytes so far (at most 64 kept)
  std::string entity_;  // inside &...;
  std::string skip_;    // kSkip: "script" or "style"
  std::string window_;  // kSkip / kComment: the last bytes seen, lowercased
};

}  // namespace ragserve::chunking
