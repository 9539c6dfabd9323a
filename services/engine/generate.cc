#include "services/engine/generate.h"

namespace ragserve::engine {

StatusOr<GenerateResult> Generate(Model& model, const Tokenizer* tokenizer,
                                  std::span<const int32_t> prompt, const GenerateOptions& options,
                                  KvCache* kv, const TokenCallback& on_token) {
  RS_CHECK_ARG(!prompt.empty(), "Generate: empty prompt");
  RS_CHECK_ARG(options.stop.max_tokens >= 1, "Generate: max_tokens must be >= 1, got ",
               options.stop.max_tokens);
  RS_ASSIGN_OR_RETURN(Sampler sampler, Sampler::Create(options.sampling));
  std::unique_ptr<KvCache> own;
  if (kv == nullptr) {
    own = model.NewKvCache();
    kv = own.get();
  }
  StopCriteria stop = options.stop;
  if (stop.eos_ids.empty()) stop.eos_ids = model.config().eos_token_ids;
  StopChecker checker(stop, tokenizer);

  std::vector<int32_t> history(prompt.begin(), prompt.end());
  const int32_t start = static_cast<int32_t>(kv->length());
  std::vector<float> logits;
  RS_RETURN_IF_ERROR(model.Prefill(prompt, start, kv, options.prefill_chunk, &logits));
  GenerateResult r;
  for (;;) {
    const int32_t tok = sampler.Sample(logits, history);
    if (options.keep_step_logits) r.step_logits.push_back(logits);
    r.tokens.push_back(tok);
    history.push_back(tok);
    std::string piece;
    r.reason = checker.Push(tok, &piece);
    r.text += piece;
    if (on_token && !on_token(tok, piece)) break;
    if (r.reason != StopReason::kNone) break;
    const int32_t pos = static_cast<int32_t>(kv->length());
    SequenceStep st{std::span<const int32_t>(&history.back(), 1), pos, kv};
    RS_RETURN_IF_ERROR(
        model.Forward(std::span<const SequenceStep>(&st, 1), LogitsMode::kLast, &logits));
  }
  if (r.reason != StopReason::kStopString) r.text += checker.Flush();
  return r;
}

}  // namespace ragserve::engine
