#include "index/text_tokenizer.h"

#include <utf8proc.h>

#include <algorithm>
#include <cstdlib>

namespace ragserve::index {

namespace {

// `text` with every byte that is not part of a well-formed UTF-8 sequence replaced by a space.
std::string ValidUtf8(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  const auto* p = reinterpret_cast<const utf8proc_uint8_t*>(text.data());
  utf8proc_ssize_t left = static_cast<utf8proc_ssize_t>(text.size());
  while (left > 0) {
    utf8proc_int32_t cp = 0;
    const utf8proc_ssize_t n = utf8proc_iterate(p, left, &cp);
    if (n <= 0) {
      out.push_back(' ');
      ++p;
      --left;
      continue;
    }
    out.append(reinterpret_cast<const char*>(p), static_cast<size_t>(n));
    p += n;
    left -= n;
  }
  return out;
}

bool IsWordCodepoint(utf8proc_int32_t cp) {
  switch (utf8proc_category(cp)) {
    case UTF8PROC_CATEGORY_LU:
    case UTF8PROC_CATEGORY_LL:
    case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO:
    case UTF8PROC_CATEGORY_MN:
    case UTF8PROC_CATEGORY_MC:
    case UTF8PROC_CATEGORY_ME:
    case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL:
    case UTF8PROC_CATEGORY_NO:
      return true;
    default:
      return false;
  }
}

void SplitWords(std::string_view norm, std::vector<std::string>* out) {
  const auto* base = reinterpret_cast<const utf8proc_uint8_t*>(norm.data());
  const auto size = static_cast<utf8proc_ssize_t>(norm.size());
  std::string cur;
  for (utf8proc_ssize_t pos = 0; pos < size;) {
    utf8proc_int32_t cp = 0;
    utf8proc_ssize_t n = utf8proc_iterate(base + pos, size - pos, &cp);
    if (n <= 0) n = 1, cp = ' ';  // cannot happen after ValidUtf8 + utf8proc_map
    if (IsWordCodepoint(cp)) {
      if (cur.size() + static_cast<size_t>(n) <= kMaxTermBytes) cur.append(norm.substr(pos, n));
    } else if (!cur.empty()) {
      out->push_back(std::move(cur));
      cur.clear();
    }
    pos += n;
  }
  if (!cur.empty()) out->push_back(std::move(cur));
}

// ASCII text: NFKC is the identity, case folding is lowercasing and the word code points are the
// letters and digits, so this gives what the utf8proc path gives, several times faster.
void SplitAscii(std::string_view text, std::vector<std::string>* out) {
  std::string cur;
  for (char c : text) {
    const bool upper = c >= 'A' && c <= 'Z';
    if (upper || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')) {
      if (cur.size() < kMaxTermBytes) cur.push_back(upper ? static_cast<char>(c - 'A' + 'a') : c);
    } else if (!cur.empty()) {
      out->push_back(std::move(cur));
      cur.clear();
    }
  }
  if (!cur.empty()) out->push_back(std::move(cur));
}

}  // namespace

std::vector<std::string> LexicalTerms(std::string_view text) {
  std::vector<std::string> out;
  if (text.empty()) return out;
  if (std::all_of(text.begin(), text.end(), [](char c) { return (c & 0x80) == 0; })) {
    SplitAscii(text, &out);
    return out;
  }
  const std::string valid = ValidUtf8(text);
  utf8proc_uint8_t* mapped = nullptr;
  const utf8proc_ssize_t n =
      utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(valid.data()),
                   static_cast<utf8proc_ssize_t>(valid.size()), &mapped,
                   static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE |
                                                  UTF8PROC_COMPAT | UTF8PROC_CASEFOLD));
  if (n < 0 || mapped == nullptr) {
    // Only an allocation failure gets here (the input is valid UTF-8): split unnormalised.
    SplitWords(valid, &out);
    return out;
  }
  SplitWords(std::string_view(reinterpret_cast<const char*>(mapped), static_cast<size_t>(n)), &out);
  std::free(mapped);
  return out;
}

}  // namespace ragserve::index
