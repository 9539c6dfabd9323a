#include "services/engine/unicode.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <array>

namespace ragserve::engine::unicode {
namespace {

struct ByteTables {
  std::array<uint32_t, 256> byte_to_cp{};
  std::array<int16_t, 512> cp_to_byte{};  // every mapped code point is < 512
  ByteTables() {
    cp_to_byte.fill(-1);
    // Printable Latin-1 bytes stand for themselves; the other 68 bytes take 256, 257, ...
    uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      byte_to_cp[b] = printable ? static_cast<uint32_t>(b) : next++;
      cp_to_byte[byte_to_cp[b]] = static_cast<int16_t>(b);
    }
  }
};

const ByteTables& Tables() {
  static const ByteTables tables;
  return tables;
}

}  // namespace

uint32_t ByteToCodepoint(uint8_t b) { return Tables().byte_to_cp[b]; }

int CodepointToByte(uint32_t cp) { return cp < 512 ? Tables().cp_to_byte[cp] : -1; }

int32_t DecodeUtf8(std::string_view s, size_t* pos) {
  const size_t n = Utf8CharLen(s, *pos);
  const auto* p = reinterpret_cast<const unsigned char*>(s.data()) + *pos;
  *pos += n;
  if (n == 1) return p[0] < 0x80 ? p[0] : -1;
  if (n == 2) return ((p[0] & 0x1F) << 6) | (p[1] & 0x3F);
  if (n == 3) return ((p[0] & 0x0F) << 12) | ((p[1] & 0x3F) << 6) | (p[2] & 0x3F);
  return ((p[0] & 0x07) << 18) | ((p[1] & 0x3F) << 12) | ((p[2] & 0x3F) << 6) | (p[3] & 0x3F);
}

size_t Utf8CharLen(std::string_view s, size_t pos) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data()) + pos;
  const size_t left = s.size() - pos;
  const unsigned c = p[0];
  auto cont = [&](size_t i) { return i < left && (p[i] & 0xC0) == 0x80; };
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF) return cont(1) ? 2 : 1;
  if (c >= 0xE0 && c <= 0xEF) {
    if (!cont(1) || !cont(2)) return 1;
    if (c == 0xE0 && p[1] < 0xA0) return 1;   // overlong
    if (c == 0xED && p[1] >= 0xA0) return 1;  // surrogate
    return 3;
  }
  if (c >= 0xF0 && c <= 0xF4) {
    if (!cont(1) || !cont(2) || !cont(3)) return 1;
    if (c == 0xF0 && p[1] < 0x90) return 1;   // overlong
    if (c == 0xF4 && p[1] >= 0x90) return 1;  // > U+10FFFF
    return 4;
  }
  return 1;
}

size_t IncompleteUtf8Tail(std::string_view s) {
  const size_t n = s.size();
  for (size_t i = 1; i <= 3 && i <= n; ++i) {
    const unsigned c = static_cast<unsigned char>(s[n - i]);
    if ((c & 0xC0) == 0x80) continue;  // continuation byte: keep looking for the lead
    size_t need = 0;
    if (c >= 0xC2 && c <= 0xDF) need = 2;
    if (c >= 0xE0 && c <= 0xEF) need = 3;
    if (c >= 0xF0 && c <= 0xF4) need = 4;
    return need > i ? i : 0;
  }
  return 0;
}

std::string BytesToVocabString(std::string_view raw) {
  std::string out;
  out.reserve(raw.size() * 2);
  for (unsigned char b : raw) AppendUtf8(ByteToCodepoint(b), &out);
  return out;
}

StatusOr<std::shared_ptr<RegexSplitter>> RegexSplitter::Compile(std::string_view pattern,
                                                                bool literal) {
  uint32_t options = PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF;
  if (literal) options = PCRE2_LITERAL | PCRE2_MATCH_INVALID_UTF | PCRE2_UTF;
  int error = 0;
  PCRE2_SIZE offset = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                   options, &error, &offset, nullptr);
  if (code == nullptr) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(error, msg, sizeof(msg));
    return InvalidArgument(StrCat("cannot compile regex '", pattern, "' at offset ", offset, ": ",
                                  reinterpret_cast<const char*>(msg)));
  }
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // falls back to the interpreter when JIT fails
  std::shared_ptr<RegexSplitter> re(new RegexSplitter());
  re->code_ = code;
  return re;
}

RegexSplitter::~RegexSplitter() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

std::vector<std::pair<size_t, size_t>> RegexSplitter::Matches(std::string_view text) const {
  std::vector<std::pair<size_t, size_t>> out;
  auto* code = static_cast<pcre2_code*>(code_);
  pcre2_match_data* md = pcre2_match_data_create_from_pattern(code, nullptr);
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t start = 0;
  while (start <= text.size()) {
    int rc = pcre2_match(code, subject, text.size(), start, 0, md, nullptr);
    if (rc < 0) break;  // PCRE2_ERROR_NOMATCH or a resource limit: the rest is one gap
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    size_t b = ov[0], e = ov[1];
    if (e > b) {
      out.emplace_back(b, e);
      start = e;
    } else {  // empty match: step over one character
      if (b >= text.size()) break;
      start = b + Utf8CharLen(text, b);
    }
  }
  pcre2_match_data_free(md);
  return out;
}

std::vector<std::string_view> RegexSplitter::Split(std::string_view text, SplitBehavior behavior,
                                                   bool invert) const {
  struct Seg {
    size_t b, e;
    bool match;
  };
  std::vector<Seg> segs;
  size_t last = 0;
  for (auto [b, e] : Matches(text)) {
    if (b > last) segs.push_back({last, b, invert});
    segs.push_back({b, e, !invert});
    last = e;
  }
  if (last < text.size()) segs.push_back({last, text.size(), invert});

  std::vector<std::pair<size_t, size_t>> pieces;
  bool prev_match = false;
  for (const Seg& s : segs) {
    bool extend = false;
    switch (behavior) {
      case SplitBehavior::kIsolated:
        break;
      case SplitBehavior::kRemoved:
        if (s.match) continue;
        break;
      case SplitBehavior::kMergedWithPrevious:
        extend = s.match && !prev_match && !pieces.empty();
        break;
      case SplitBehavior::kMergedWithNext:
        extend = !s.match && prev_match && !pieces.empty();
        break;
      case SplitBehavior::kContiguous:
        extend = s.match && prev_match && !pieces.empty();
        break;
    }
    if (extend) {
      pieces.back().second = s.e;
    } else {
      pieces.emplace_back(s.b, s.e);
    }
    prev_match = s.match;
  }
  std::vector<std::string_view> out;
  out.reserve(pieces.size());
  for (auto [b, e] : pieces) out.push_back(text.substr(b, e - b));
  return out;
}

}  // namespace ragserve::engine::unicode
