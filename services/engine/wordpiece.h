// WordPiece tokenizer of BERT-family encoders, read from a Hugging Face tokenizer.json.
//
// Pipeline (the Hugging Face `tokenizers` semantics):
//   BertNormalizer  clean_text: drop U+0000, U+FFFD and control characters (categories Cc, Cf, Cs,
//                   Co, Cn except \t \n \r), whitespace -> ' '; handle_chinese_chars: spaces around
//                   CJK ideographs; strip_accents (default: = lowercase): NFD, drop Mn marks;
//                   lowercase: per code point (utf8proc simple case mapping).
//   BertPreTokenizer  split on whitespace; every punctuation character (ASCII punctuation or a
//                   Unicode P* category) is a word of its own.
//   WordPiece       greedy longest match first; pieces after the first carry the continuation
//                   prefix ("##"); a word with an unmatched rest, or longer than
//                   max_input_chars_per_word characters, is one unk token.
//   post-processor  [CLS] tokens [SEP]; truncation keeps the first max_len - 2 tokens.
// Invalid UTF-8 bytes are treated as U+FFFD (dropped by clean_text).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "services/common/status.h"

namespace ragserve::engine {

struct WordPieceOptions {
  bool clean_text = true;
  bool handle_chinese_chars = true;
  bool strip_accents = true;
  bool lowercase = true;
  std::string continuing_prefix = "##";
  int max_input_chars_per_word = 100;
  // tokenizer.json "truncation.max_length" (0 when absent): the encoder caps its length with it.
  int truncation_max_length = 0;
};

class WordPieceTokenizer {
 public:
  // Parses a tokenizer.json whose model is WordPiece (normalizer BertNormalizer or absent,
  // pre_tokenizer BertPreTokenizer or absent). InvalidArgument naming what is wrong: not JSON, not
  // WordPiece, a vocab entry that is not a non-negative integer, duplicate ids, ids above 2^24,
  // missing [CLS]/[SEP]/unk tokens. Never throws.
  static StatusOr<std::unique_ptr<WordPieceTokenizer>> FromJson(std::string_view json_text);
  // Reads and parses a file (NotFound when it cannot be read).
  static StatusOr<std::unique_ptr<WordPieceTokenizer>> Load(const std::string& path);

  // [CLS] + the WordPiece ids of `text` + [SEP], at most max_len ids (max_len >= 2). Thread-safe.
  std::vector<int32_t> Encode(std::string_view text, int max_len) const;
  // The normalized, pre-tokenized words of `text` (exposed for tests).
  std::vector<std::string> Words(std::string_view text) const;

  // Largest token id + 1 (the embedding table must have at least this many rows).
  int32_t id_limit() const { return id_limit_; }
  int32_t cls_id() const { return cls_id_; }
  int32_t sep_id() const { return sep_id_; }
  int32_t unk_id() const { return unk_id_; }
  const WordPieceOptions& options() const { return opts_; }

 private:
  WordPieceTokenizer() = default;
  void AppendWordIds(const std::string& word, std::vector<int32_t>* out) const;

  WordPieceOptions opts_;
  std::unordered_map<std::string, int32_t> vocab_;
  int32_t id_limit_ = 0;
  int32_t cls_id_ = -1, sep_id_ = -1, unk_id_ = -1;
};

}  // namespace ragserve::engine
