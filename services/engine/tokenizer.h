// Tokenizers loaded from a Hugging Face tokenizer.json (model type "BPE").
//
// Supported: byte-level BPE (GPT-2 / Llama-3 / Qwen2: ByteLevel and Split pre-tokenizers with the
// file's PCRE2 regex, ByteLevel decoder, optional ignore_merges) and SentencePiece-style BPE
// (Llama-2 / Mistral: Prepend/Replace normalizers or a Metaspace pre-tokenizer, "▁" for spaces,
// <0xHH> byte fallback, unk with fuse_unk, Replace/ByteFallback/Fuse/Strip or Metaspace decoder).
// Normalizers NFC/NFKC are accepted but not applied (input is expected to be in NFC already).
//
// Added tokens: the text is first split on added-token contents (leftmost, longest first; lstrip /
// rstrip absorb neighbouring whitespace). Added tokens marked "special" are matched only when the
// caller passes allow_special = true; non-special added tokens are always matched (as in HF).
//
// BOS / EOS: BOS is the first SpecialToken of a TemplateProcessing post-processor when present,
// else the first special added token named <|begin_of_text|>, <s>, <|startoftext|>, <bos>, <|bos|>.
// EOS is the first special added token named <|end_of_text|>, </s>, <|endoftext|>, <|im_end|>,
// <|eot_id|>, <eos>, <|eos|>. A model's config.json (bos/eos_token_id) takes precedence over both.
//
// Thread-safety: a Tokenizer is immutable after loading; Encode/Decode may run concurrently (the
// internal word cache is locked). A StreamDecoder belongs to one thread.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "services/common/status.h"

namespace ragserve::engine {

struct TokenizerImpl;

class Tokenizer {
 public:
  // Reads and parses a tokenizer.json; NotFound when the file cannot be read, InvalidArgument
  // (naming the bad field) when the document is malformed or uses an unsupported component.
  static StatusOr<std::unique_ptr<Tokenizer>> FromFile(const std::string& tokenizer_json_path);
  // Same, from the document text.
  static StatusOr<std::unique_ptr<Tokenizer>> FromJson(std::string_view tokenizer_json);
  ~Tokenizer();

  // Plain text (any bytes; invalid UTF-8 is kept byte for byte) -> ids. Special added tokens
  // written in the text are matched only when allow_special is true; add_bos prepends bos_id()
  // when the tokenizer has one.
  std::vector<int32_t> Encode(std::string_view text, bool add_bos = false,
                              bool allow_special = false) const;
  // Ids -> the exact bytes they stand for. skip_special drops special added tokens; ids outside
  // [0, vocab_size()) and unused ids decode to nothing.
  std::string Decode(const std::vector<int32_t>& ids, bool skip_special = true) const;
  // 1 + the largest id of the vocab and the added tokens.
  int32_t vocab_size() const;
  // Id of a vocab entry or added token spelled exactly `token` (vocab spelling, e.g. "Ġthe").
  std::optional<int32_t> TokenToId(std::string_view token) const;
  // Vocab spelling of `id`; empty for unused or out-of-range ids.
  std::string IdToToken(int32_t id) const;
  std::optional<int32_t> bos_id() const;
  std::optional<int32_t> eos_id() const;
  // True for ids of added tokens marked "special".
  bool IsSpecial(int32_t id) const;

  // Token-by-token decoder for streaming: the concatenation of every Push() result and Flush()
  // equals Decode(all ids) byte for byte. Push returns the newly completed text, holding back a
  // trailing incomplete UTF-8 sequence until it completes; Flush returns what is held back.
  // Special tokens are skipped (as Decode's default). The Tokenizer must outlive it.
  class StreamDecoder {
   public:
    explicit StreamDecoder(const Tokenizer& tokenizer);
    std::string Push(int32_t id);
    std::string Flush();

   private:
    const Tokenizer& tok_;
    std::string pending_;
    bool started_ = false;  // whether any output byte was produced (leading-space strip is done)
  };

 private:
  explicit Tokenizer(std::unique_ptr<TokenizerImpl> impl);
  std::unique_ptr<TokenizerImpl> impl_;
};

}  // namespace ragserve::engine
