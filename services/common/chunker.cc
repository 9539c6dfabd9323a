#include "services/common/chunker.h"

#include <algorithm>
#include <cctype>
#include <cstdlib>

#include "services/common/utf8.h"

namespace ragserve::chunking {

namespace {

bool IsSpace(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

bool IsUtf8Continuation(char c) { return (static_cast<unsigned char>(c) & 0xC0) == 0x80; }

// A word that ends a sentence: its last byte before closing quotes/brackets is . ! or ?.
bool EndsSentence(std::string_view w) {
  while (!w.empty() && (w.back() == '"' || w.back() == '\'' || w.back() == ')' || w.back() == ']' ||
                        w.back() == '*' || w.back() == '_')) {
    w.remove_suffix(1);
  }
  return !w.empty() && (w.back() == '.' || w.back() == '!' || w.back() == '?');
}

}  // namespace

Status ValidateChunkOptions(const ChunkOptions& o) {
  RS_CHECK_ARG(o.max_tokens >= 1 && o.max_tokens <= kMaxChunkTokens, "chunk size must be in [1, ",
               kMaxChunkTokens, "] tokens, got ", o.max_tokens);
  RS_CHECK_ARG(o.overlap_tokens >= 0 && o.overlap_tokens < o.max_tokens,
               "chunk overlap must be in [0, chunk size), got ", o.overlap_tokens, " with size ",
               o.max_tokens);
  return OkStatus();
}

void Chunker::Feed(std::string_view piece, std::vector<Chunk>* out) {
  buf_.append(piece);
  Scan(out);
  Trim();
}

void Chunker::Scan(std::vector<Chunk>* out) {
  const int64_t end = buf_base_ + static_cast<int64_t>(buf_.size());
  for (int64_t p = scanned_; p < end; ++p) {
    const char c = buf_[p - buf_base_];
    if (IsSpace(c)) {
      if (in_word_) EndWord(p, out);
      if (c == '\n') ++gap_newlines_;
      continue;
    }
    if (in_word_ && p - word_begin_ >= kMaxWordBytes && !IsUtf8Continuation(c)) {
      EndWord(p, out);  // an endless "word": cut it
    }
    if (!in_word_) {
      if (!words_.empty() && gap_newlines_ >= 2) words_.back().paragraph_end = true;
      gap_newlines_ = 0;
      in_word_ = true;
      word_begin_ = p;
    }
  }
  scanned_ = end;
}

void Chunker::EndWord(int64_t end, std::vector<Chunk>* out) {
  Word w;
  w.begin = word_begin_;
  w.end = end;
  w.sentence_end = EndsSentence(std::string_view(buf_).substr(
      static_cast<size_t>(w.begin - buf_base_), static_cast<size_t>(w.end - w.begin)));
  words_.push_back(w);
  in_word_ = false;
  // Once a word follows the window, the gap after its last word is known: cut a passage.
  if (words_.size() > static_cast<size_t>(opts_.max_tokens)) Emit(CutPoint(), out);
}

size_t Chunker::CutPoint() const {
  const size_t max = static_cast<size_t>(opts_.max_tokens);
  const size_t lo = std::max<size_t>({max / 2, covered_ + 1, 1});
  for (size_t j = max; j >= lo; --j) {
    if (words_[j - 1].paragraph_end) return j;
  }
  for (size_t j = max; j >= lo; --j) {
    if (words_[j - 1].sentence_end) return j;
  }
  return max;
}

void Chunker::Emit(size_t count, std::vector<Chunk>* out) {
  Chunk c;
  c.index = next_index_++;
  c.offset = words_[0].begin;
  c.text = buf_.substr(static_cast<size_t>(words_[0].begin - buf_base_),
                       static_cast<size_t>(words_[count - 1].end - words_[0].begin));
  out->push_back(std::move(c));
  // The next passage starts overlap_tokens earlier, but always after this one's first word.
  const size_t overlap = std::min<size_t>(static_cast<size_t>(opts_.overlap_tokens), count - 1);
  words_.erase(words_.begin(), words_.begin() + static_cast<std::ptrdiff_t>(count - overlap));
  covered_ = overlap;
}

void Chunker::Trim() {
  // Keep the bytes from the first word of the window (or the word being read) on.
  int64_t keep = scanned_;
  if (!words_.empty()) keep = words_.front().begin;
  if (in_word_) keep = std::min(keep, word_begin_);
  if (keep > buf_base_) {
    buf_.erase(0, static_cast<size_t>(keep - buf_base_));
    buf_base_ = keep;
  }
}

void Chunker::Finish(std::vector<Chunk>* out) {
  if (in_word_) EndWord(scanned_, out);
  while (words_.size() > static_cast<size_t>(opts_.max_tokens)) Emit(CutPoint(), out);
  if (words_.size() > covered_) Emit(words_.size(), out);
  buf_.clear();
  buf_base_ = scanned_ = 0;
  in_word_ = false;
  gap_newlines_ = 0;
  words_.clear();
  covered_ = 0;
  next_index_ = 0;
}

// ---- HtmlToText --------------------------------------------------------------------------------

namespace {

bool IsBlockTag(std::string_view name) {
  static const char* const kBlock[] = {
      "p",      "div",    "br",         "h1",    "h2",    "h3",  "h4",   "h5",      "h6",
      "li",     "ul",     "ol",         "tr",    "table", "pre", "hr",   "section", "article",
      "header", "footer", "blockquote", "title", "dd",    "dt",  "main", "nav",     "aside"};
  for (const char* b : kBlock) {
    if (name == b) return true;
  }
  return false;
}

// A Unicode scalar value for an HTML character reference: NUL, surrogates and values past
// U+10FFFF become U+FFFD.
uint32_t ScalarOrReplacement(uint32_t cp) {
  return cp == 0 || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF) ? 0xFFFD : cp;
}

}  // namespace

void HtmlToText::EndTag(std::string* out) {
  std::string_view t = tag_;
  const bool closing = !t.empty() && t[0] == '/';
  if (closing) t.remove_prefix(1);
  std::string name;
  for (char c : t) {
    if (!std::isalnum(static_cast<unsigned char>(c))) break;
    name.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(c))));
  }
  state_ = State::kText;
  if (!closing && (name == "script" || name == "style")) {
    state_ = State::kSkip;
    skip_ = "</" + name;
    window_.clear();
    return;
  }
  out->append(IsBlockTag(name) ? "\n\n" : " ");
}

void HtmlToText::EndEntity(std::string* out) {
  static const std::pair<const char*, const char*> kNamed[] = {{"&amp;", "&"},  {"&lt;", "<"},
                                                               {"&gt;", ">"},   {"&quot;", "\""},
                                                               {"&apos;", "'"}, {"&nbsp;", " "}};
  for (const auto& [name, text] : kNamed) {
    if (entity_ == name) {
      out->append(text);
      entity_.clear();
      return;
    }
  }
  if (entity_.size() > 3 && entity_[1] == '#' && entity_.back() == ';') {
    const bool hex = entity_[2] == 'x' || entity_[2] == 'X';
    const std::string digits = entity_.substr(hex ? 3 : 2, entity_.size() - (hex ? 4 : 3));
    char* end = nullptr;
    const unsigned long cp = std::strtoul(digits.c_str(), &end, hex ? 16 : 10);
    if (!digits.empty() && end != nullptr && *end == '\0') {
      AppendUtf8(ScalarOrReplacement(static_cast<uint32_t>(std::min<unsigned long>(cp, 0x110000))),
                 out);
      entity_.clear();
      return;
    }
  }
  out->append(entity_);  // not an entity we know: the text as written
  entity_.clear();
}

void HtmlToText::Feed(std::string_view piece, std::string* out) {
  for (char c : piece) {
    switch (state_) {
      case State::kText:
        if (c == '<') {
          state_ = State::kTag;
          tag_.clear();
        } else if (c == '&') {
          state_ = State::kEntity;
          entity_ = "&";
        } else {
          out->push_back(c);
        }
        break;
      case State::kTag:
        if (c == '>') {
          EndTag(out);
        } else if (tag_.size() < 64) {
          tag_.push_back(c);
          if (tag_ == "!--") {
            state_ = State::kComment;
            window_.clear();
          }
        }
        break;
      case State::kComment:
        window_.push_back(c);
        if (window_.size() > 3) window_.erase(0, 1);
        if (window_ == "-->") state_ = State::kText;
        break;
      case State::kSkip:
        if (window_.size() == skip_.size()) {
          if (c == '>') state_ = State::kText;  // the end of "</script ...>"
          break;
        }
        window_.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(c))));
        if (skip_.compare(0, window_.size(), window_) != 0) {
          window_.clear();
          if (c == '<') window_ = "<";
        }
        break;
      case State::kEntity:
        entity_.push_back(c);
        if (c == ';' || entity_.size() > 12 ||
            !(std::isalnum(static_cast<unsigned char>(c)) || c == '#' || c == ';')) {
          const bool text_char =
              c != ';' && !std::isalnum(static_cast<unsigned char>(c)) && c != '#';
          if (text_char) entity_.pop_back();
          state_ = State::kText;
          EndEntity(out);
          if (text_char) Feed(std::string_view(&c, 1), out);
        }
        break;
    }
  }
}

void HtmlToText::Finish(std::string* out) {
  if (state_ == State::kEntity) EndEntity(out);
  state_ = State::kText;
  tag_.clear();
  window_.clear();
}

}  // namespace ragserve::chunking
