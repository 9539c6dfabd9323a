// The lexical tokenizer of the BM25 index: Unicode-aware normalisation and word splitting.
//
//   1. bytes that are not well-formed UTF-8 become spaces;
//   2. the text is normalised with utf8proc to NFKC with case folding (so "É", "é" and "e\u0301"
//      are one term, and "Straße" folds to "strasse");
//   3. words are the maximal runs of code points whose general category is a letter (L*), a
//      number (N*) or a mark (M*); everything else separates words.
// A word longer than kMaxTermBytes is cut there (at a code point boundary).
// tests/reference/bm25_ref.py re-implements these rules in Python (unicodedata).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace ragserve::index {

inline constexpr size_t kMaxTermBytes = 128;

// The terms of `text`, in order (duplicates kept).
std::vector<std::string> LexicalTerms(std::string_view text);

}  // namespace ragserve::index
