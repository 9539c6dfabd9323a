// Single-sequence generation: chunked prefill, then decode with a KV cache, sampling and stop
// conditions. The reference loop (ragserve-generate, tests); the decode worker batches its own.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "services/engine/model.h"
#include "services/engine/sampling.h"
#include "services/engine/tokenizer.h"

namespace ragserve::engine {

struct GenerateOptions {
  SamplingParams sampling;
  StopCriteria stop;              // eos_ids empty: the model config's eos ids are used
  int prefill_chunk = 256;        // chunked prefill size (<= 0: the whole prompt at once)
  bool keep_step_logits = false;  // fill GenerateResult::step_logits
};

struct GenerateResult {
  std::vector<int32_t> tokens;  // generated ids (an EOS that ended generation included)
  std::string text;             // decoded text (empty without a tokenizer), stop string excluded
  StopReason reason = StopReason::kNone;
  // With keep_step_logits: the raw logits [vocab] each generated token was sampled from.
  std::vector<std::vector<float>> step_logits;
};

// Called after every generated token with the token and the newly final text; return false to
// stop early (reason stays kNone).
using TokenCallback = std::function<bool(int32_t token, const std::string& text)>;

// Prefills `prompt` (>= 1 token) into `kv` (a fresh model cache when null) at positions 0.. and
// generates. tokenizer may be null. InvalidArgument for an empty prompt, ids outside the vocab,
// bad sampling params or max_tokens < 1.
StatusOr<GenerateResult> Generate(Model& model, const Tokenizer* tokenizer,
                                  std::span<const int32_t> prompt, const GenerateOptions& options,
                                  KvCache* kv = nullptr, const TokenCallback& on_token = nullptr);

}  // namespace ragserve::engine
