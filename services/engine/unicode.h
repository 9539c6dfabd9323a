// UTF-8 and regex helpers shared by the tokenizer and the BPE trainer (internal to the engine).
//
// Byte-level BPE (GPT-2 / Llama-3 / Qwen2) stores every byte 0..255 as one printable code point
// (ByteToCodepoint); RegexSplitter wraps a PCRE2 pattern compiled with Unicode properties.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "services/common/status.h"
#include "services/common/utf8.h"

namespace ragserve::engine::unicode {

// The GPT-2 bytes_to_unicode table: byte b -> the code point that stands for it in vocab strings.
uint32_t ByteToCodepoint(uint8_t b);
// Inverse of ByteToCodepoint; -1 when `cp` stands for no byte.
int CodepointToByte(uint32_t cp);
// Appends the UTF-8 encoding of `cp` (cp <= 0x10FFFF) to `out`.
using ::ragserve::AppendUtf8;
// Decodes one UTF-8 sequence at s[*pos] and advances *pos. An invalid or truncated sequence
// consumes exactly one byte and returns -1.
int32_t DecodeUtf8(std::string_view s, size_t* pos);
// Length 1..4 of the well-formed UTF-8 sequence starting at s[pos], or 1 for an invalid byte.
size_t Utf8CharLen(std::string_view s, size_t pos);
// Number of trailing bytes of `s` (0..3) that start a UTF-8 sequence that is not complete yet
// but could still become valid when more bytes arrive. 0 when `s` ends on a boundary.
size_t IncompleteUtf8Tail(std::string_view s);
// Maps every byte of `raw` through ByteToCodepoint (the vocab spelling of a byte string).
std::string BytesToVocabString(std::string_view raw);

// The split patterns of the public tokenizers (used as defaults and by the trainer).
inline constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
inline constexpr std::string_view kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// What happens to the matches of a Split pre-tokenizer (Hugging Face SplitDelimiterBehavior).
enum class SplitBehavior { kIsolated, kRemoved, kMergedWithPrevious, kMergedWithNext, kContiguous };

// A compiled PCRE2 pattern (UTF + UCP; invalid UTF-8 in the subject never matches and is kept as
// text between matches). Immutable after Compile; Split is thread-safe.
class RegexSplitter {
 public:
  // `literal` compiles `pattern` as a plain string. Errors name the pattern and PCRE2's message.
  static StatusOr<std::shared_ptr<RegexSplitter>> Compile(std::string_view pattern, bool literal);
  ~RegexSplitter();
  RegexSplitter(const RegexSplitter&) = delete;
  RegexSplitter& operator=(const RegexSplitter&) = delete;

  // All non-empty matches of the pattern in `text`, left to right, as [begin, end) byte offsets.
  std::vector<std::pair<size_t, size_t>> Matches(std::string_view text) const;
  // Splits `text` into non-empty pieces according to `behavior` (`invert` swaps matches and gaps).
  // The pieces are views into `text`.
  std::vector<std::string_view> Split(std::string_view text, SplitBehavior behavior,
                                      bool invert = false) const;

 private:
  RegexSplitter() = default;
  void* code_ = nullptr;  // pcre2_code_8*
};

}  // namespace ragserve::engine::unicode
