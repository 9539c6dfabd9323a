// ragserve-generate: runs the CPU engine on a model directory (HF layout) or a .gguf file and
// prints JSON.
//
//   ragserve-generate --model /tmp/tiny --prompt "The lighthouse" --max-tokens 32
//   ragserve-generate --model /tmp/tiny --prompt-ids 0,17,42 --max-tokens 64 --ignore-eos
//       --step-logits        (greedy; the logits of every step, as the reference test reads them)
//
// Output: {"fingerprint", "model_type", "prompt_ids", "tokens", "text", "stop_reason",
//          "prefill_ms", "decode_ms", "step_logits" (with --step-logits)}.
#include <chrono>
#include <filesystem>
#include <iostream>
#include <sstream>
#include <string>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "services/common/logging.h"
#include "services/engine/generate.h"
#include "services/engine/gguf_model.h"

namespace {

int Fail(const std::string& msg) {
  std::cerr << "ragserve-generate: " << msg << "\n";
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace ragserve::engine;
  std::string model_dir, prompt, prompt_ids, ops_name = "fast", weights_dtype;
  GenerateOptions go;
  go.stop.max_tokens = 32;
  bool ignore_eos = false, step_logits = false, add_bos = false;
  CLI::App app{"Generate with the ragserve CPU engine; prints JSON"};
  app.add_option("--model", model_dir,
                 "Model directory (config.json, model.safetensors) or a .gguf file")
      ->required();
  app.add_option("--prompt", prompt, "Prompt text (needs tokenizer.json in the model dir)");
  app.add_option("--prompt-ids", prompt_ids, "Prompt as token ids, comma-separated");
  app.add_flag("--add-bos", add_bos, "Prepend BOS to a text prompt");
  app.add_option("--max-tokens", go.stop.max_tokens, "Tokens to generate")
      ->check(CLI::Range(1, 1 << 20));
  app.add_option("--temperature", go.sampling.temperature, "0: greedy");
  app.add_option("--top-k", go.sampling.top_k, "0: off");
  app.add_option("--top-p", go.sampling.top_p, "1: off");
  app.add_option("--repetition-penalty", go.sampling.repetition_penalty, "1: off");
  app.add_option("--seed", go.sampling.seed, "Sampling seed");
  app.add_option("--stop", go.stop.stop_strings, "Stop string (repeatable)");
  app.add_flag("--ignore-eos", ignore_eos, "Do not stop on EOS");
  app.add_option("--chunk", go.prefill_chunk, "Prefill chunk size (0: whole prompt)");
  app.add_flag("--step-logits", step_logits, "Print the logits of every generated step");
  app.add_option("--weights-dtype", weights_dtype,
                 "Weight matrices after load: auto (as stored) | f32 | f16 | bf16 | q8_0 | q4_0 | "
                 "q4_k | q6_k");
  app.add_option("--ops", ops_name, "Kernel backend: fast | ref")
      ->check(CLI::IsMember({"fast", "ref"}));
  CLI11_PARSE(app, argc, argv);
  // Library log lines (a fallback dtype, a tokenizer warning) go to stderr: stdout is the JSON.
  if (auto st = ragserve::InitLogging("generate", "info"); !st.ok()) return Fail(st.ToString());
  go.keep_step_logits = step_logits;
  if (ignore_eos) go.stop.eos_ids = {-1};

  const ragserve::kernels::Ops* ops =
      ops_name == "ref" ? &ragserve::kernels::RefOps() : &ragserve::kernels::FastOps();
  auto wopts = ParseWeightsDtype(weights_dtype);
  if (!wopts.ok()) return Fail(wopts.status().ToString());
  auto model = Model::Load(model_dir, ops, *wopts);
  if (!model.ok()) return Fail(model.status().ToString());
  std::unique_ptr<Tokenizer> tok;
  const bool gguf = IsGgufModelPath(model_dir);
  const std::string tok_path = gguf ? model_dir : model_dir + "/tokenizer.json";
  std::string tok_error = "--prompt needs " + tok_path + " (or use --prompt-ids)";
  if (gguf || std::filesystem::exists(tok_path)) {
    auto t = LoadModelTokenizer(model_dir);
    if (t.ok()) {
      tok = std::move(t).value();
    } else if (!gguf) {
      return Fail(t.status().ToString());
    } else {  // a weights-only GGUF still runs on --prompt-ids
      tok_error = "--prompt needs a tokenizer: " + t.status().ToString();
    }
  }
  std::vector<int32_t> ids;
  if (!prompt_ids.empty()) {
    std::stringstream ss(prompt_ids);
    std::string item;
    while (std::getline(ss, item, ',')) {
      try {
        ids.push_back(static_cast<int32_t>(std::stol(item)));
      } catch (const std::exception&) {
        return Fail("--prompt-ids: \"" + item + "\" is not an integer");
      }
    }
  } else {
    if (!tok) return Fail(tok_error);
    ids = tok->Encode(prompt, add_bos);
  }
  if (ids.empty()) return Fail("empty prompt");

  const auto t0 = std::chrono::steady_clock::now();
  std::chrono::steady_clock::time_point t1;
  bool first = true;
  auto res = Generate(**model, tok.get(), ids, go, nullptr, [&](int32_t, const std::string&) {
    if (first) t1 = std::chrono::steady_clock::now();
    first = false;
    return true;
  });
  const auto t2 = std::chrono::steady_clock::now();
  if (!res.ok()) return Fail(res.status().ToString());
  nlohmann::json out;
  out["fingerprint"] = (*model)->fingerprint();
  out["model_type"] = (*model)->config().model_type;
  out["prompt_ids"] = ids;
  out["tokens"] = res->tokens;
  out["text"] = res->text;
  out["stop_reason"] = StopReasonName(res->reason);
  out["prefill_ms"] = std::chrono::duration<double, std::milli>(t1 - t0).count();
  out["decode_ms"] = std::chrono::duration<double, std::milli>(t2 - t1).count();
  if (step_logits) out["step_logits"] = res->step_logits;
  std::cout << out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  return 0;
}
