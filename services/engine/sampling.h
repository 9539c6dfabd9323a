// Token sampling and stop conditions for generation.
//
// Sampler: repetition penalty (HF/CTRL style over the distinct tokens of the history) ->
// greedy when temperature == 0, else temperature -> top-k -> softmax -> top-p (nucleus) -> a draw
// from a generator seeded by `seed` (std::mt19937_64, whose output the standard fixes, so the same
// seed, logits and history give the same token on every platform).
// StopChecker: EOS ids, stop strings (text is held back while it could still become a stop string,
// and the stop string itself is never emitted), max tokens.
// Thread-safety: a Sampler / StopChecker belongs to one sequence.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "services/common/status.h"
#include "services/engine/tokenizer.h"

namespace ragserve::engine {

struct SamplingParams {
  float temperature = 0.0f;         // 0: greedy (argmax); else > 0
  int top_k = 0;                    // keep the k most likely tokens; 0: all
  float top_p = 1.0f;               // keep the smallest set with probability >= top_p; in (0, 1]
  float repetition_penalty = 1.0f;  // > 0; 1: off. Seen tokens: logit > 0 ? l / p : l * p
  uint64_t seed = 0;
};

// Index of the largest value (the smallest index among equal maxima); -1 for an empty span.
int32_t ArgMax(std::span<const float> logits);

class Sampler {
 public:
  // InvalidArgument naming the bad field (temperature < 0 or not finite, top_k < 0,
  // top_p outside (0, 1], repetition_penalty <= 0).
  static StatusOr<Sampler> Create(const SamplingParams& params);
  // Picks the next token from logits[vocab] given the sequence so far (prompt + generated; used
  // only by the repetition penalty). Advances the generator only when sampling (temperature > 0).
  int32_t Sample(std::span<const float> logits, std::span<const int32_t> history);
  // Advances the generator as `tokens` calls of Sample would (a resumed request continues the
  // seeded sequence of draws where the uninterrupted one would be).
  void SkipDraws(int64_t tokens);
  const SamplingParams& params() const { return params_; }

 private:
  explicit Sampler(const SamplingParams& p) : params_(p), rng_(p.seed) {}
  SamplingParams params_;
  std::mt19937_64 rng_;
  std::vector<float> work_;
  std::vector<int32_t> idx_;
};

enum class StopReason { kNone, kEos, kStopString, kMaxTokens };
// "none", "eos", "stop_string", "max_tokens".
const char* StopReasonName(StopReason r);

struct StopCriteria {
  int max_tokens = 128;                   // generated tokens (>= 1)
  std::vector<int32_t> eos_ids;           // any of these ends generation (not emitted as text)
  std::vector<std::string> stop_strings;  // generation ends when the text contains one
};

class StopChecker {
 public:
  // tokenizer (not owned, may be null: then no text and stop strings are ignored).
  StopChecker(const StopCriteria& criteria, const Tokenizer* tokenizer);
  // Feeds the next generated token. Appends to *text the text that is now final (never part of a
  // stop string) and returns why generation stops after this token, or kNone to continue.
  // Cost per token: O(total stop-string length + the token's text), independent of the output.
  StopReason Push(int32_t token, std::string* text);
  // Feeds tokens delivered before a hand-over (a resumed request): the stream decoder, the held
  // back text and the stop-string state become what they were after them, nothing is emitted and
  // they do not count towards max_tokens.
  void Replay(std::span<const int32_t> tokens);
  // Text held back at the end (call once when generation stopped for a reason other than a stop
  // string, or was cut off): the rest of the output.
  std::string Flush();
  int generated() const { return generated_; }

 private:
  // Appends the text of `token` to pending_; returns the offset of the first stop string in
  // pending_ (npos if none) and sets *hold to the longest suffix of pending_ that is a proper
  // prefix of a stop string.
  size_t ScanPending(size_t* hold) const;

  StopCriteria c_;
  std::vector<std::vector<size_t>> failure_;  // KMP failure function of each stop string
  const Tokenizer* tok_;
  std::unique_ptr<Tokenizer::StreamDecoder> dec_;
  std::string pending_;  // decoded text not yet released
  int generated_ = 0;
  bool stopped_ = false;
};

}  // namespace ragserve::engine
