#include "services/engine/tiny_bert.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "nlohmann/json.hpp"
#include "services/engine/safetensors.h"

namespace ragserve::engine {
namespace {

TensorToWrite F32Tensor(std::string name, std::vector<int64_t> shape, std::mt19937_64* rng,
                        float mean, float stddev) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  std::normal_distribution<float> dist(mean, stddev);
  std::vector<float> v(n);
  for (float& x : v) x = dist(*rng);
  TensorToWrite t{std::move(name), DType::kF32, std::move(shape), {}};
  t.bytes.resize(n * sizeof(float));
  std::memcpy(t.bytes.data(), v.data(), t.bytes.size());
  return t;
}

Status WriteText(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary);
  f << text;
  return f.good() ? OkStatus() : Internal(StrCat("cannot write ", path));
}

}  // namespace

Status WriteTinyBert(const TinyBertOptions& o, const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return Internal(StrCat("cannot create ", dir, ": ", ec.message()));
  nlohmann::ordered_json vocab = nlohmann::ordered_json::object();
  auto add = [&](const std::string& t) {
    if (!vocab.contains(t)) vocab[t] = static_cast<int>(vocab.size());
  };
  for (const char* s : {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"}) add(s);
  for (char c = 'a'; c <= 'z'; ++c) add(std::string(1, c));
  for (char c = '0'; c <= '9'; ++c) add(std::string(1, c));
  for (char c = 'a'; c <= 'z'; ++c) add("##" + std::string(1, c));
  for (char c = '0'; c <= '9'; ++c) add("##" + std::string(1, c));
  for (const std::string& w : o.words) add(w);
  const int vocab_size = static_cast<int>(vocab.size());

  nlohmann::ordered_json config = {{"architectures", {"BertModel"}},
                                   {"model_type", "bert"},
                                   {"vocab_size", vocab_size},
                                   {"hidden_size", o.hidden_size},
                                   {"num_hidden_layers", o.num_layers},
                                   {"num_attention_heads", o.num_heads},
                                   {"intermediate_size", o.intermediate_size},
                                   {"hidden_act", "gelu"},
                                   {"max_position_embeddings", o.max_position_embeddings},
                                   {"type_vocab_size", 2},
                                   {"layer_norm_eps", 1e-12}};
  RS_RETURN_IF_ERROR(WriteText((fs::path(dir) / "config.json").string(), config.dump(2)));

  nlohmann::ordered_json tok = {{"version", "1.0"},
                                {"normalizer",
                                 {{"type", "BertNormalizer"},
                                  {"clean_text", true},
                                  {"handle_chinese_chars", true},
                                  {"strip_accents", nullptr},
                                  {"lowercase", true}}},
                                {"pre_tokenizer", {{"type", "BertPreTokenizer"}}},
                                {"model",
                                 {{"type", "WordPiece"},
                                  {"unk_token", "[UNK]"},
                                  {"continuing_subword_prefix", "##"},
                                  {"max_input_chars_per_word", 100},
                                  {"vocab", vocab}}}};
  RS_RETURN_IF_ERROR(WriteText((fs::path(dir) / "tokenizer.json").string(), tok.dump()));

  if (!o.pooling_file.empty()) {
    fs::create_directories(fs::path(dir) / "1_Pooling", ec);
    nlohmann::json pool = {{"word_embedding_dimension", o.hidden_size},
                           {"pooling_mode_cls_token", o.pooling_file == "cls"},
                           {"pooling_mode_mean_tokens", o.pooling_file == "mean"}};
    RS_RETURN_IF_ERROR(
        WriteText((fs::path(dir) / "1_Pooling" / "config.json").string(), pool.dump()));
  }

  std::mt19937_64 rng(o.seed);
  const int64_t h = o.hidden_size, ff = o.intermediate_size;
  std::vector<TensorToWrite> t;
  t.push_back(F32Tensor("embeddings.word_embeddings.weight", {vocab_size, h}, &rng, 0, 1));
  t.push_back(F32Tensor("embeddings.position_embeddings.weight", {o.max_position_embeddings, h},
                        &rng, 0, 0.5f));
  t.push_back(F32Tensor("embeddings.token_type_embeddings.weight", {2, h}, &rng, 0, 0.5f));
  t.push_back(F32Tensor("embeddings.LayerNorm.weight", {h}, &rng, 1, 0.1f));
  t.push_back(F32Tensor("embeddings.LayerNorm.bias", {h}, &rng, 0, 0.1f));
  for (int l = 0; l < o.num_layers; ++l) {
    const std::string p = StrCat("encoder.layer.", l, ".");
    const float sh = 1.0f / std::sqrt(static_cast<float>(h));
    const float sf = 1.0f / std::sqrt(static_cast<float>(ff));
    for (const char* n : {"attention.self.query", "attention.self.key", "attention.self.value",
                          "attention.output.dense"}) {
      t.push_back(F32Tensor(p + n + ".weight", {h, h}, &rng, 0, sh));
      t.push_back(F32Tensor(p + n + ".bias", {h}, &rng, 0, 0.1f));
    }
    t.push_back(F32Tensor(p + "intermediate.dense.weight", {ff, h}, &rng, 0, sh));
    t.push_back(F32Tensor(p + "intermediate.dense.bias", {ff}, &rng, 0, 0.1f));
    t.push_back(F32Tensor(p + "output.dense.weight", {h, ff}, &rng, 0, sf));
    t.push_back(F32Tensor(p + "output.dense.bias", {h}, &rng, 0, 0.1f));
    for (const char* n : {"attention.output.LayerNorm", "output.LayerNorm"}) {
      t.push_back(F32Tensor(p + n + ".weight", {h}, &rng, 1, 0.1f));
      t.push_back(F32Tensor(p + n + ".bias", {h}, &rng, 0, 0.1f));
    }
  }
  return WriteSafetensors((fs::path(dir) / "model.safetensors").string(), t);
}

}  // namespace ragserve::engine
