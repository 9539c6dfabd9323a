// make-tiny-model: a complete Hugging Face-layout model directory from a seed, nothing downloaded.
//
//   make-tiny-model --out /tmp/tiny                       (llama, 4 layers, hidden 256, 8/2 heads)
//   make-tiny-model --out /tmp/q --model-type qwen2 --rope-scaling llama3 --dtype bf16 --seed 7
//
// tokenizer.json is a byte-level BPE trained on --corpus (the repository's sample corpus by
// default) with <|begin_of_text|> (id 0, BOS) and <|end_of_text|> (id 1, EOS).
#include <iostream>
#include <string>

#include <CLI/CLI.hpp>

#include "services/engine/tiny_model.h"

int main(int argc, char** argv) {
  using ragserve::engine::TinyModelOptions;
  TinyModelOptions o;
  std::string out_dir, corpus = "data/corpus/passages.jsonl", dtype = "f32";
  bool no_tokenizer = false;
  CLI::App app{"Write a random-weight Llama/Mistral/Qwen2 model directory (HF layout)"};
  app.add_option("--out", out_dir, "Output directory (created)")->required();
  app.add_option("--corpus", corpus, "JSONL corpus (\"text\" field) to train the tokenizer on");
  app.add_flag("--no-tokenizer", no_tokenizer, "Skip tokenizer.json (weights and config only)");
  app.add_option("--model-type", o.model_type, "llama | mistral | qwen2")
      ->check(CLI::IsMember({"llama", "mistral", "qwen2"}));
  app.add_option("--layers", o.num_layers, "Transformer layers")->check(CLI::Range(1, 1024));
  app.add_option("--hidden", o.hidden_size, "Hidden size")->check(CLI::Range(2, 1 << 16));
  app.add_option("--heads", o.num_heads, "Attention heads")->check(CLI::Range(1, 1024));
  app.add_option("--kv-heads", o.num_kv_heads, "Key/value heads (divides --heads)")
      ->check(CLI::Range(1, 1024));
  app.add_option("--head-dim", o.head_dim, "Head dim (0: hidden / heads)")
      ->check(CLI::Range(0, 1024));
  app.add_option("--intermediate", o.intermediate_size, "MLP intermediate size")
      ->check(CLI::Range(1, 1 << 18));
  app.add_option("--vocab", o.vocab_size, "Vocabulary size (tokenizer and embedding)")
      ->check(CLI::Range(2, 1 << 20));
  app.add_option("--rope-theta", o.rope_theta, "Rotary base");
  app.add_option("--rope-scaling", o.rope_scaling, "none | linear | llama3")
      ->check(CLI::IsMember({"none", "linear", "llama3"}));
  app.add_option("--rope-factor", o.rope_factor, "Rotary scaling factor (linear, llama3)");
  app.add_option("--rope-original-max", o.rope_original_max_position,
                 "llama3: original_max_position_embeddings");
  app.add_option("--max-positions", o.max_position_embeddings, "max_position_embeddings");
  app.add_option("--sliding-window", o.sliding_window, "mistral sliding window (0: none)");
  app.add_flag("--attention-bias", o.attention_bias, "llama/mistral: q/k/v/o biases");
  app.add_flag("--tie-word-embeddings", o.tie_word_embeddings, "LM head shares the embedding");
  app.add_option("--dtype", dtype, "Weight dtype: f32 | f16 | bf16")
      ->check(CLI::IsMember({"f32", "f16", "bf16"}));
  app.add_option("--seed", o.seed, "Random seed (same seed -> same bytes)");
  CLI11_PARSE(app, argc, argv);
  o.dtype = dtype == "f32"   ? ragserve::kernels::DType::kF32
            : dtype == "f16" ? ragserve::kernels::DType::kF16
                             : ragserve::kernels::DType::kBF16;

  std::vector<std::string> texts;
  if (!no_tokenizer) {
    auto t = ragserve::engine::ReadCorpusTexts(corpus);
    if (!t.ok()) {
      std::cerr << "make-tiny-model: " << t.status().ToString() << "\n";
      return 1;
    }
    texts = std::move(t).value();
    if (texts.empty()) {
      std::cerr << "make-tiny-model: corpus " << corpus << " has no texts\n";
      return 1;
    }
  }
  const ragserve::Status s = ragserve::engine::WriteTinyModel(o, texts, out_dir);
  if (!s.ok()) {
    std::cerr << "make-tiny-model: " << s.ToString() << "\n";
    return 1;
  }
  std::cout << "wrote " << out_dir << " (" << o.model_type << ", "
            << ragserve::engine::TinyModelParams(o) << " parameters, " << dtype << ")\n";
  return 0;
}
