// ragserve-llamacpp-ref: llama.cpp itself, as an independent reference for ragserve's GGUF
// support: its quantizer writes the files, its tokenizer gives the ids, its forward pass the
// logits and its timings the speed to compare with. llama.cpp is a prebuilt library dlopened at
// run time from LIBDIR (tests/engine/llamacpp/node_modules/@node-llama-cpp/linux-x64/bins/
// linux-x64, installed by tools/setup-deps; see llamacpp_api.h), so the build never needs it.
//
//   ragserve-llamacpp-ref --lib LIBDIR info
//   ragserve-llamacpp-ref --lib LIBDIR quantize IN.gguf OUT.gguf q8_0|q4_0|q4_k_m|q6_k|bf16|f32
//   ragserve-llamacpp-ref --lib LIBDIR tokenize MODEL.gguf < texts.jsonl   (one JSON string per
//       line in, one id array per line out; special tokens written in the text are matched, no
//       BOS added: llama_tokenize(add_special=false, parse_special=true))
//   ragserve-llamacpp-ref --lib LIBDIR logits MODEL.gguf --ids 0,5,7 [--from K]
//       -> {"logits": rows K.. of the logits of every position, one batch}
//   ragserve-llamacpp-ref --lib LIBDIR generate MODEL.gguf --ids 0,5,7 --max-tokens N
//       -> {"tokens", "step_logits"}: greedy, prompt in one batch, then one token per decode
//   ragserve-llamacpp-ref --lib LIBDIR bench MODEL.gguf --prompt-tokens 128 --decode-tokens 64
//       [--threads T] [--reps R] -> {"prefill_tok_s", "decode_tok_s"} (best of R)
#include <dlfcn.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "tests/engine/llamacpp_api.h"

namespace ragserve::llamacpp {
namespace {

void QuietLog(int, const char*, void*) {}
void StderrLog(int, const char* text, void*) { std::cerr << text; }

// The first regular file in dir whose name starts with prefix and contains ".so".
std::string FindLib(const std::string& dir, const std::string& prefix) {
  std::error_code ec;
  std::vector<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    const std::string n = e.path().filename().string();
    if (n.rfind(prefix, 0) == 0 && n.find(".so") != std::string::npos) names.push_back(n);
  }
  std::sort(names.begin(), names.end());
  return names.empty() ? "" : dir + "/" + names.front();
}

template <typename F>
bool Sym(void* lib, const char* name, F* out, std::string* err) {
  *out = reinterpret_cast<F>(dlsym(lib, name));
  if (*out == nullptr && err->empty()) *err = std::string("symbol ") + name + " not found";
  return *out != nullptr;
}

// Bytes of `fill` that a default-params call left as they were at the end of the buffer: the
// call wrote at most sizeof(Params) - that many bytes.
size_t UntouchedTail(void (*f)(Params*)) {
  Params p;
  std::memset(p.bytes, 0xA5, sizeof(p.bytes));
  f(&p);
  size_t n = 0;
  while (n < sizeof(p.bytes) && p.bytes[sizeof(p.bytes) - 1 - n] == 0xA5) ++n;
  return n;
}

}  // namespace

std::string LlamaCpp::Load(const std::string& dir, bool verbose) {
  // libllama's RUNPATH is $ORIGIN: its libggml / libggml-base come from the same folder.
  const std::string llama = FindLib(dir, "libllama.");
  const std::string ggml = FindLib(dir, "libggml.");
  if (llama.empty() || ggml.empty()) return "no libllama.*.so / libggml.*.so in " + dir;
  void* l = dlopen(llama.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (l == nullptr) return std::string("dlopen: ") + dlerror();
  void* g = dlopen(ggml.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (g == nullptr) return std::string("dlopen: ") + dlerror();
  std::string err;
  Sym(l, "llama_backend_init", &backend_init, &err);
  Sym(l, "llama_log_set", &log_set, &err);
  Sym(l, "llama_print_system_info", &print_system_info, &err);
  Sym(l, "llama_model_default_params", &model_default_params, &err);
  Sym(l, "llama_context_default_params", &context_default_params, &err);
  Sym(l, "llama_model_quantize_default_params", &model_quantize_default_params, &err);
  Sym(l, "llama_model_quantize", &model_quantize, &err);
  Sym(l, "llama_model_load_from_file", &model_load_from_file, &err);
  Sym(l, "llama_model_free", &model_free, &err);
  Sym(l, "llama_init_from_model", &init_from_model, &err);
  Sym(l, "llama_free", &free_context, &err);
  Sym(l, "llama_set_n_threads", &set_n_threads, &err);
  Sym(l, "llama_model_get_vocab", &model_get_vocab, &err);
  Sym(l, "llama_vocab_n_tokens", &vocab_n_tokens, &err);
  Sym(l, "llama_tokenize", &tokenize, &err);
  Sym(l, "llama_batch_get_one", &batch_get_one, &err);
  Sym(l, "llama_decode", &decode, &err);
  Sym(l, "llama_get_logits_ith", &get_logits_ith, &err);
  Sym(g, "ggml_backend_load_all_from_path", &backend_load_all_from_path, &err);
  if (!err.empty()) return err;
  version = reinterpret_cast<const char* (*)()>(dlsym(l, "llama_version"));
  for (auto f : {model_default_params, context_default_params, model_quantize_default_params}) {
    if (UntouchedTail(f) < sizeof(Params) / 2) return "a llama_*_params struct outgrew Params";
  }
  log_set(verbose ? StderrLog : QuietLog, nullptr);
  backend_load_all_from_path(dir.c_str());
  backend_init();
  return "";
}

}  // namespace ragserve::llamacpp

namespace {

using namespace ragserve::llamacpp;
using Clock = std::chrono::steady_clock;

int Fail(const std::string& msg) {
  std::cerr << "ragserve-llamacpp-ref: " << msg << "\n";
  return 1;
}

std::vector<Token> ParseIds(const std::string& s) {
  std::vector<Token> ids;
  std::stringstream in(s);
  std::string item;
  while (std::getline(in, item, ',')) {
    if (!item.empty()) ids.push_back(std::stoi(item));
  }
  return ids;
}

struct Loaded {
  Model* model = nullptr;
  Context* ctx = nullptr;
  int n_vocab = 0;
};

// A context of n_ctx tokens whose batch holds n_batch tokens (default params otherwise: f16 KV
// cache, flash attention as llama.cpp decides), running on `threads` threads; null on failure.
Context* NewContext(LlamaCpp& api, Model* model, int n_ctx, int n_batch, int threads) {
  Params cp;
  api.context_default_params(&cp);
  const uint32_t ctx_tokens = static_cast<uint32_t>(std::max(n_ctx, 256));
  const uint32_t batch = static_cast<uint32_t>(std::max(n_batch, 512));
  std::memcpy(cp.bytes + 0, &ctx_tokens, 4);  // n_ctx
  std::memcpy(cp.bytes + 4, &batch, 4);       // n_batch
  std::memcpy(cp.bytes + 8, &batch, 4);       // n_ubatch
  Context* ctx = api.init_from_model(model, cp);
  if (ctx != nullptr) api.set_n_threads(ctx, threads, threads);
  return ctx;
}

// Loads the model (default params: mmap, CPU) and a NewContext.
std::string Open(LlamaCpp& api, const std::string& path, int n_ctx, int n_batch, int threads,
                 Loaded* out) {
  Params mp;
  api.model_default_params(&mp);
  out->model = api.model_load_from_file(path.c_str(), mp);
  if (out->model == nullptr) return "llama.cpp could not load " + path;
  out->ctx = NewContext(api, out->model, n_ctx, n_batch, threads);
  if (out->ctx == nullptr) return "llama.cpp could not create a context for " + path;
  out->n_vocab = api.vocab_n_tokens(api.model_get_vocab(out->model));
  return "";
}

void Close(LlamaCpp& api, Loaded* m) {
  if (m->ctx != nullptr) api.free_context(m->ctx);
  if (m->model != nullptr) api.model_free(m->model);
  *m = Loaded{};
}

Token Argmax(const float* v, int n) { return static_cast<Token>(std::max_element(v, v + n) - v); }

// Decodes ids in one batch at positions 0..n-1 of sequence 0, every position an output.
int DecodeAll(LlamaCpp& api, Context* ctx, std::vector<Token>& ids) {
  const int n = static_cast<int>(ids.size());
  std::vector<int32_t> pos(n), n_seq(n, 1);
  int32_t seq0 = 0;
  std::vector<int32_t*> seq(n, &seq0);
  std::vector<int8_t> logits(n, 1);
  for (int i = 0; i < n; ++i) pos[i] = i;
  Batch b{n, ids.data(), nullptr, pos.data(), n_seq.data(), seq.data(), logits.data()};
  return api.decode(ctx, b);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"llama.cpp as a reference: quantize, tokenize, logits, greedy, timings"};
  app.require_subcommand(1);
  std::string lib_dir, model, in_path, out_path, type, ids_text;
  bool verbose = false;
  int from = 0, max_tokens = 16, threads = 1, prompt_tokens = 128, decode_tokens = 64, reps = 3;
  app.add_option("--lib", lib_dir, "Folder of libllama*.so / libggml*.so")->required();
  app.add_flag("--verbose", verbose, "Show llama.cpp's log on stderr");
  app.add_option("--threads", threads, "Threads for llama.cpp's forward pass / quantizer");
  app.add_subcommand("info", "Print llama.cpp's version and system info");
  auto* quantize = app.add_subcommand("quantize", "llama_model_quantize IN -> OUT");
  quantize->add_option("in", in_path)->required();
  quantize->add_option("out", out_path)->required();
  quantize->add_option("type", type, "q8_0 | q4_0 | q4_k_m | q6_k | bf16 | f32")->required();
  auto* tokenize = app.add_subcommand("tokenize", "JSON strings per line -> id arrays");
  tokenize->add_option("model", model)->required();
  auto* logits = app.add_subcommand("logits", "Logits of every position of --ids");
  logits->add_option("model", model)->required();
  logits->add_option("--ids", ids_text)->required();
  logits->add_option("--from", from, "First row to print");
  auto* generate = app.add_subcommand("generate", "Greedy continuation of --ids");
  generate->add_option("model", model)->required();
  generate->add_option("--ids", ids_text)->required();
  generate->add_option("--max-tokens", max_tokens);
  auto* bench = app.add_subcommand("bench", "Prefill and decode tokens per second");
  bench->add_option("model", model)->required();
  bench->add_option("--prompt-tokens", prompt_tokens);
  bench->add_option("--decode-tokens", decode_tokens);
  bench->add_option("--reps", reps);
  CLI11_PARSE(app, argc, argv);

  LlamaCpp api{};
  if (std::string e = api.Load(lib_dir, verbose); !e.empty()) return Fail(e);
  nlohmann::json out;

  if (app.got_subcommand("info")) {
    out = {{"version", api.version != nullptr ? api.version() : ""},
           {"system_info", api.print_system_info()}};
  } else if (quantize->parsed()) {
    const std::vector<std::pair<std::string, int>> types = {
        {"q8_0", kFtypeQ8_0}, {"q4_0", kFtypeQ4_0}, {"q4_k_m", kFtypeQ4_K_M},
        {"q6_k", kFtypeQ6_K}, {"bf16", kFtypeBF16}, {"f32", kFtypeAllF32}};
    auto it = std::find_if(types.begin(), types.end(), [&](auto& t) { return t.first == type; });
    if (it == types.end()) return Fail("unknown type '" + type + "'");
    Params qp;
    api.model_quantize_default_params(&qp);
    const int32_t nthread = threads, ftype = it->second;
    std::memcpy(qp.bytes + 0, &nthread, 4);  // nthread
    std::memcpy(qp.bytes + 4, &ftype, 4);    // ftype
    const auto t0 = Clock::now();
    if (api.model_quantize(in_path.c_str(), out_path.c_str(), &qp) != 0) {
      return Fail("llama_model_quantize failed for " + in_path);
    }
    out = {{"out", out_path},
           {"type", type},
           {"seconds", std::chrono::duration<double>(Clock::now() - t0).count()}};
  } else if (tokenize->parsed()) {
    // The whole model (llama_model_params.vocab_only sits at no stable offset; the test models
    // are small).
    Loaded m;
    if (std::string e = Open(api, model, 256, 512, threads, &m); !e.empty()) return Fail(e);
    const Vocab* vocab = api.model_get_vocab(m.model);
    std::string line;
    while (std::getline(std::cin, line)) {
      if (line.empty()) continue;
      const std::string text = nlohmann::json::parse(line).get<std::string>();
      std::vector<Token> ids(text.size() + 16);
      int n = api.tokenize(vocab, text.data(), static_cast<int32_t>(text.size()), ids.data(),
                           static_cast<int32_t>(ids.size()), false, true);
      if (n < 0) {  // -n is the count needed
        ids.resize(-n);
        n = api.tokenize(vocab, text.data(), static_cast<int32_t>(text.size()), ids.data(),
                         static_cast<int32_t>(ids.size()), false, true);
      }
      if (n < 0) return Fail("llama_tokenize failed");
      ids.resize(n);
      std::cout << nlohmann::json(ids).dump() << "\n";
    }
    Close(api, &m);
    return 0;
  } else if (logits->parsed()) {
    std::vector<Token> ids = ParseIds(ids_text);
    Loaded m;
    const int n = static_cast<int>(ids.size());
    if (std::string e = Open(api, model, n + 8, n, threads, &m); !e.empty()) return Fail(e);
    if (DecodeAll(api, m.ctx, ids) != 0) return Fail("llama_decode failed");
    out["logits"] = nlohmann::json::array();
    for (int i = std::max(from, 0); i < n; ++i) {
      const float* row = api.get_logits_ith(m.ctx, i);
      out["logits"].push_back(std::vector<float>(row, row + m.n_vocab));
    }
    Close(api, &m);
  } else if (generate->parsed()) {
    std::vector<Token> ids = ParseIds(ids_text);
    Loaded m;
    const int n = static_cast<int>(ids.size());
    if (std::string e = Open(api, model, n + max_tokens + 8, n, threads, &m); !e.empty()) {
      return Fail(e);
    }
    std::vector<Token> tokens;
    std::vector<std::vector<float>> steps;
    if (api.decode(m.ctx, api.batch_get_one(ids.data(), n)) != 0) return Fail("decode failed");
    for (int s = 0; s < max_tokens; ++s) {
      const float* row = api.get_logits_ith(m.ctx, -1);
      steps.emplace_back(row, row + m.n_vocab);
      Token t = Argmax(row, m.n_vocab);
      tokens.push_back(t);
      if (s + 1 < max_tokens && api.decode(m.ctx, api.batch_get_one(&t, 1)) != 0) {
        return Fail("decode failed");
      }
    }
    out = {{"tokens", tokens}, {"step_logits", steps}};
    Close(api, &m);
  } else if (bench->parsed()) {
    // As engine_bench's dtype table measures ragserve: prefill = one prompt of prompt_tokens in
    // one batch (a fresh context each time); decode = greedy steps one token at a time after a
    // 16-token prompt. Best of `reps` each. Prompt ids: a fixed pattern over the vocabulary.
    double best_prefill = 0, best_decode = 0;
    Loaded m;
    if (std::string e =
            Open(api, model, prompt_tokens + decode_tokens + 32, prompt_tokens, threads, &m);
        !e.empty()) {
      return Fail(e);
    }
    std::vector<Token> ids(std::max(prompt_tokens, 16));
    for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<Token>((i * 7 + 3) % m.n_vocab);
    for (int r = 0; r < reps; ++r) {
      const int n_ctx = prompt_tokens + decode_tokens + 32;
      api.free_context(m.ctx);
      m.ctx = NewContext(api, m.model, n_ctx, prompt_tokens, threads);
      if (m.ctx == nullptr) return Fail("llama.cpp could not create a context");
      auto t0 = Clock::now();
      if (api.decode(m.ctx, api.batch_get_one(ids.data(), prompt_tokens)) != 0) {
        return Fail("decode failed");
      }
      best_prefill = std::max(
          best_prefill, prompt_tokens / std::chrono::duration<double>(Clock::now() - t0).count());
      // Decode, in a fresh context after 16 prompt tokens.
      api.free_context(m.ctx);
      m.ctx = NewContext(api, m.model, n_ctx, prompt_tokens, threads);
      if (m.ctx == nullptr) return Fail("llama.cpp could not create a context");
      if (api.decode(m.ctx, api.batch_get_one(ids.data(), 16)) != 0) return Fail("decode failed");
      Token t = Argmax(api.get_logits_ith(m.ctx, -1), m.n_vocab);
      t0 = Clock::now();
      for (int s = 0; s < decode_tokens; ++s) {
        if (api.decode(m.ctx, api.batch_get_one(&t, 1)) != 0) return Fail("decode failed");
        t = Argmax(api.get_logits_ith(m.ctx, -1), m.n_vocab);
      }
      best_decode = std::max(
          best_decode, decode_tokens / std::chrono::duration<double>(Clock::now() - t0).count());
    }
    Close(api, &m);
    out = {{"prefill_tok_s", best_prefill},
           {"decode_tok_s", best_decode},
           {"threads", threads},
           {"prompt_tokens", prompt_tokens},
           {"decode_tokens", decode_tokens}};
  }
  std::cout << out.dump() << "\n";
  return 0;
}
