#include "services/engine/tiny_model.h"

#include <xxhash.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "nlohmann/json.hpp"
#include "services/engine/bpe_trainer.h"
#include "services/engine/config.h"
#include "services/engine/safetensors.h"

namespace ragserve::engine {
namespace {

// splitmix64: a tiny, portable generator (std::*_distribution differ between standard libraries).
struct SplitMix {
  uint64_t s;
  uint64_t Next() {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  // Uniform in [-1, 1).
  float Sym() { return static_cast<float>(static_cast<double>(Next() >> 11) * 0x1.0p-52 - 1.0); }
};

// Values drawn uniformly with the given mean and standard deviation, seeded by (seed, name) so
// that one tensor does not depend on the others.
TensorToWrite MakeTensor(const std::string& name, std::vector<int64_t> shape, kernels::DType dtype,
                         uint64_t seed, float mean, float stddev) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  SplitMix rng{XXH64(name.data(), name.size(), seed)};
  const float a = stddev * std::sqrt(3.0f);
  std::vector<float> f(static_cast<size_t>(n));
  for (float& x : f) x = mean + a * rng.Sym();
  TensorToWrite t;
  t.name = name;
  t.dtype = dtype;
  t.shape = std::move(shape);
  t.bytes.resize(static_cast<size_t>(n) * kernels::DTypeSize(dtype));
  kernels::ConvertFromF32(f.data(), dtype, n, t.bytes.data());
  return t;
}

Status Validate(const TinyModelOptions& o) {
  RS_CHECK_ARG(o.model_type == "llama" || o.model_type == "mistral" || o.model_type == "qwen2",
               "model_type must be llama, mistral or qwen2, got \"", o.model_type, "\"");
  RS_CHECK_ARG(o.num_layers >= 1, "num_layers must be >= 1, got ", o.num_layers);
  RS_CHECK_ARG(o.hidden_size >= 2, "hidden_size must be >= 2, got ", o.hidden_size);
  RS_CHECK_ARG(o.num_heads >= 1, "num_heads must be >= 1, got ", o.num_heads);
  RS_CHECK_ARG(o.num_kv_heads >= 1 && o.num_heads % o.num_kv_heads == 0, "num_kv_heads ",
               o.num_kv_heads, " must divide num_heads ", o.num_heads);
  const int hd = o.head_dim > 0 ? o.head_dim : o.hidden_size / o.num_heads;
  RS_CHECK_ARG(hd >= 2 && hd % 2 == 0, "head_dim must be even and >= 2, got ", hd);
  RS_CHECK_ARG(o.intermediate_size >= 1, "intermediate_size must be >= 1, got ",
               o.intermediate_size);
  RS_CHECK_ARG(o.vocab_size >= 2, "vocab_size must be >= 2, got ", o.vocab_size);
  RS_CHECK_ARG(o.rope_scaling == "none" || o.rope_scaling == "linear" || o.rope_scaling == "llama3",
               "rope_scaling must be none, linear or llama3, got \"", o.rope_scaling, "\"");
  RS_CHECK_ARG(o.special_tokens.size() >= 2, "need at least 2 special tokens (BOS, EOS), got ",
               o.special_tokens.size());
  return OkStatus();
}

}  // namespace

StatusOr<std::vector<std::string>> ReadCorpusTexts(const std::string& jsonl_path) {
  std::ifstream in(jsonl_path, std::ios::binary);
  if (!in) return NotFound(StrCat("cannot open corpus ", jsonl_path));
  std::vector<std::string> texts;
  std::string line;
  int lineno = 0;
  while (std::getline(in, line)) {
    ++lineno;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object() || !j.contains("text") || !j["text"].is_string()) {
      return InvalidArgument(
          StrCat(jsonl_path, ":", lineno, ": not a JSON object with a string \"text\""));
    }
    texts.push_back(j["text"].get<std::string>());
  }
  return texts;
}

int64_t TinyModelParams(const TinyModelOptions& o) {
  const int64_t H = o.hidden_size, I = o.intermediate_size, V = o.vocab_size;
  const int64_t hd = o.head_dim > 0 ? o.head_dim : H / o.num_heads;
  const int64_t QD = hd * o.num_heads, KD = hd * o.num_kv_heads;
  const bool qkv_bias = o.model_type == "qwen2" || o.attention_bias;
  int64_t layer = QD * H + 2 * KD * H + H * QD + 3 * I * H + 2 * H;
  if (qkv_bias) layer += QD + 2 * KD;
  if (o.attention_bias && o.model_type != "qwen2") layer += H;
  return V * H * (o.tie_word_embeddings ? 1 : 2) + H + o.num_layers * layer;
}

Status WriteTinyModel(const TinyModelOptions& o, const std::vector<std::string>& corpus_texts,
                      const std::string& out_dir) {
  RS_RETURN_IF_ERROR(Validate(o));
  std::error_code ec;
  std::filesystem::create_directories(out_dir, ec);
  if (ec) return Internal(StrCat("cannot create ", out_dir, ": ", ec.message()));

  if (!corpus_texts.empty()) {
    RS_ASSIGN_OR_RETURN(std::string tok,
                        TrainByteLevelBpe(corpus_texts, o.vocab_size, o.special_tokens));
    std::ofstream out(out_dir + "/tokenizer.json", std::ios::binary | std::ios::trunc);
    out << tok;
    out.close();
    if (!out) return Internal(StrCat("cannot write ", out_dir, "/tokenizer.json"));
  }

  const int hd = o.head_dim > 0 ? o.head_dim : o.hidden_size / o.num_heads;
  nlohmann::json c = {
      {"architectures",
       {o.model_type == "qwen2"     ? "Qwen2ForCausalLM"
        : o.model_type == "mistral" ? "MistralForCausalLM"
                                    : "LlamaForCausalLM"}},
      {"model_type", o.model_type},
      {"hidden_act", "silu"},
      {"hidden_size", o.hidden_size},
      {"intermediate_size", o.intermediate_size},
      {"num_hidden_layers", o.num_layers},
      {"num_attention_heads", o.num_heads},
      {"num_key_value_heads", o.num_kv_heads},
      {"vocab_size", o.vocab_size},
      {"max_position_embeddings", o.max_position_embeddings},
      {"rms_norm_eps", o.rms_norm_eps},
      {"rope_theta", o.rope_theta},
      {"tie_word_embeddings", o.tie_word_embeddings},
      {"bos_token_id", 0},
      {"eos_token_id", 1},
      {"torch_dtype", o.dtype == kernels::DType::kF32   ? "float32"
                      : o.dtype == kernels::DType::kF16 ? "float16"
                                                        : "bfloat16"},
  };
  if (hd * o.num_heads != o.hidden_size) c["head_dim"] = hd;
  if (o.model_type != "qwen2") c["attention_bias"] = o.attention_bias;
  if (o.model_type == "mistral") {
    c["sliding_window"] = o.sliding_window > 0 ? nlohmann::json(o.sliding_window) : nullptr;
  }
  if (o.rope_scaling == "linear") {
    c["rope_scaling"] = {{"rope_type", "linear"}, {"factor", o.rope_factor}};
  } else if (o.rope_scaling == "llama3") {
    c["rope_scaling"] = {{"rope_type", "llama3"},
                         {"factor", o.rope_factor},
                         {"low_freq_factor", 1.0},
                         {"high_freq_factor", 4.0},
                         {"original_max_position_embeddings", o.rope_original_max_position}};
  }
  const std::string config_text = c.dump(2);
  // The written config must load (catches option combinations the runtime rejects).
  RS_RETURN_IF_ERROR(ParseModelConfig(config_text).status());
  {
    std::ofstream out(out_dir + "/config.json", std::ios::binary | std::ios::trunc);
    out << config_text << "\n";
    out.close();
    if (!out) return Internal(StrCat("cannot write ", out_dir, "/config.json"));
  }

  const int64_t H = o.hidden_size, I = o.intermediate_size, V = o.vocab_size;
  const int64_t QD = int64_t{hd} * o.num_heads, KD = int64_t{hd} * o.num_kv_heads;
  const kernels::DType dt = o.dtype;
  const uint64_t s = o.seed;
  auto lin = [&](int64_t fan_in) { return 1.0f / std::sqrt(static_cast<float>(fan_in)); };
  std::vector<TensorToWrite> ts;
  ts.push_back(MakeTensor("model.embed_tokens.weight", {V, H}, dt, s, 0.0f, 1.0f));
  ts.push_back(MakeTensor("model.norm.weight", {H}, dt, s, 1.0f, 0.2f / std::sqrt(3.0f)));
  if (!o.tie_word_embeddings) {
    ts.push_back(MakeTensor("lm_head.weight", {V, H}, dt, s, 0.0f, lin(H)));
  }
  const bool qkv_bias = o.model_type == "qwen2" || o.attention_bias;
  const bool o_bias = o.model_type != "qwen2" && o.attention_bias;
  for (int l = 0; l < o.num_layers; ++l) {
    const std::string p = StrCat("model.layers.", l, ".");
    ts.push_back(
        MakeTensor(p + "input_layernorm.weight", {H}, dt, s, 1.0f, 0.2f / std::sqrt(3.0f)));
    ts.push_back(MakeTensor(p + "post_attention_layernorm.weight", {H}, dt, s, 1.0f,
                            0.2f / std::sqrt(3.0f)));
    ts.push_back(MakeTensor(p + "self_attn.q_proj.weight", {QD, H}, dt, s, 0.0f, lin(H)));
    ts.push_back(MakeTensor(p + "self_attn.k_proj.weight", {KD, H}, dt, s, 0.0f, lin(H)));
    ts.push_back(MakeTensor(p + "self_attn.v_proj.weight", {KD, H}, dt, s, 0.0f, lin(H)));
    ts.push_back(MakeTensor(p + "self_attn.o_proj.weight", {H, QD}, dt, s, 0.0f, lin(QD)));
    if (qkv_bias) {
      ts.push_back(MakeTensor(p + "self_attn.q_proj.bias", {QD}, dt, s, 0.0f, 0.1f));
      ts.push_back(MakeTensor(p + "self_attn.k_proj.bias", {KD}, dt, s, 0.0f, 0.1f));
      ts.push_back(MakeTensor(p + "self_attn.v_proj.bias", {KD}, dt, s, 0.0f, 0.1f));
    }
    if (o_bias) ts.push_back(MakeTensor(p + "self_attn.o_proj.bias", {H}, dt, s, 0.0f, 0.1f));
    ts.push_back(MakeTensor(p + "mlp.gate_proj.weight", {I, H}, dt, s, 0.0f, lin(H)));
    ts.push_back(MakeTensor(p + "mlp.up_proj.weight", {I, H}, dt, s, 0.0f, lin(H)));
    ts.push_back(MakeTensor(p + "mlp.down_proj.weight", {H, I}, dt, s, 0.0f, lin(I)));
  }
  return WriteSafetensors(out_dir + "/model.safetensors", ts,
                          {{"format", "pt"}, {"generator", "ragserve make-tiny-model"}});
}

}  // namespace ragserve::engine
