// Byte-level BPE training for the tiny model's tokenizer (tools/make-tiny-model).
#pragma once

#include <string>
#include <vector>

#include "services/common/status.h"

namespace ragserve::engine {

// Trains a byte-level BPE on `texts` and returns a complete Hugging Face tokenizer.json document:
// model "BPE" (merges as "left right" strings), pre-tokenizer Sequence[Split(Llama-3 regex,
// Isolated), ByteLevel(use_regex=false)], ByteLevel decoder, no normalizer.
// Id layout: special_tokens get ids 0..n_special-1 (in the given order, as special added tokens),
// the 256 byte tokens n_special..n_special+255 (id = n_special + byte value), then one id per
// merge in merge order. vocab_size counts all three; the result has exactly vocab_size ids unless
// the texts run out of pairs to merge first (then fewer: every word is already one token).
// Each step merges the most frequent adjacent pair (ties: the smallest pair of ids), counting each
// pre-tokenized word once per occurrence. Deterministic for equal input, and independent of the
// order of `texts` (about 0.05 s for the 400-passage corpus at vocab 2048).
// InvalidArgument when vocab_size < 256 + n_special or > 1,000,000, or a special token is empty or
// repeated.
StatusOr<std::string> TrainByteLevelBpe(const std::vector<std::string>& texts, int vocab_size,
                                        const std::vector<std::string>& special_tokens);

}  // namespace ragserve::engine
