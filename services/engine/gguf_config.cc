// GgufModelConfig: a GGUF file's hyper-parameters as the config.json the engine parses.
#include <cmath>

#include "nlohmann/json.hpp"
#include "services/engine/gguf_model.h"

namespace ragserve::engine {
namespace {

using nlohmann::json;

StatusOr<int64_t> PositiveInt(const GgufHeader& h, const std::string& key,
                              std::optional<int64_t> dflt = std::nullopt) {
  RS_ASSIGN_OR_RETURN(int64_t v, h.GetInt(key, dflt));
  if (v < 1 || v > (int64_t{1} << 30)) {
    return InvalidArgument(StrCat("gguf: metadata \"", key, "\" out of range: ", v));
  }
  return v;
}

StatusOr<double> FiniteFloat(const GgufHeader& h, const std::string& key,
                             std::optional<double> dflt = std::nullopt) {
  RS_ASSIGN_OR_RETURN(double v, h.GetFloat(key, dflt));
  if (!std::isfinite(v))
    return InvalidArgument(StrCat("gguf: metadata \"", key, "\" is not finite"));
  return v;
}

StatusOr<int64_t> TokenId(const GgufHeader& h, const std::string& key) {
  RS_ASSIGN_OR_RETURN(int64_t v, h.GetInt(key));
  if (v < 0 || v >= (int64_t{1} << 24)) {
    return InvalidArgument(StrCat("gguf: metadata \"", key, "\" out of range: ", v));
  }
  return v;
}

// Rows of the token embedding (ne[1]) when the file has one: the vocabulary size.
std::optional<int64_t> EmbeddingRows(const GgufHeader& h) {
  const GgufTensorInfo* t = h.FindTensor("token_embd.weight");
  if (t == nullptr || t->ne.size() != 2) return std::nullopt;
  return t->ne[1];
}

// rope.scaling.type: none / linear map onto config.json's rope_scaling; others are refused.
Status AddRopeScaling(const GgufHeader& h, const std::string& arch, json* j) {
  RS_ASSIGN_OR_RETURN(std::string type, h.GetString(arch + ".rope.scaling.type", "none"));
  if (type == "none") return OkStatus();
  if (type != "linear") {
    return InvalidArgument(StrCat("gguf: unsupported ", arch, ".rope.scaling.type \"", type,
                                  "\" (supported: none, linear)"));
  }
  RS_ASSIGN_OR_RETURN(double factor, FiniteFloat(h, arch + ".rope.scaling.factor"));
  (*j)["rope_scaling"] = {{"type", "linear"}, {"factor", factor}};
  return OkStatus();
}

Status AddSpecialIds(const GgufHeader& h, json* j) {
  RS_ASSIGN_OR_RETURN(std::string tok_model, h.GetString("tokenizer.ggml.model", ""));
  RS_ASSIGN_OR_RETURN(bool add_bos,
                      h.GetBool("tokenizer.ggml.add_bos_token", tok_model == "llama"));
  if (add_bos && h.Find("tokenizer.ggml.bos_token_id") != nullptr) {
    RS_ASSIGN_OR_RETURN((*j)["bos_token_id"], TokenId(h, "tokenizer.ggml.bos_token_id"));
  }
  if (h.Find("tokenizer.ggml.eos_token_id") != nullptr) {
    RS_ASSIGN_OR_RETURN((*j)["eos_token_id"], TokenId(h, "tokenizer.ggml.eos_token_id"));
  }
  return OkStatus();
}

}  // namespace

StatusOr<ModelConfig> GgufModelConfig(const GgufHeader& h) {
  RS_ASSIGN_OR_RETURN(std::string arch, h.GetString("general.architecture"));
  if (arch != "llama" && arch != "mistral" && arch != "qwen2") {
    return InvalidArgument(StrCat("gguf: unsupported general.architecture \"", arch,
                                  "\" (supported: llama, mistral, qwen2)"));
  }
  const std::string a = arch + ".";
  json j = {{"model_type", arch}, {"hidden_act", "silu"}};
  RS_ASSIGN_OR_RETURN(j["hidden_size"], PositiveInt(h, a + "embedding_length"));
  RS_ASSIGN_OR_RETURN(j["intermediate_size"], PositiveInt(h, a + "feed_forward_length"));
  RS_ASSIGN_OR_RETURN(j["num_hidden_layers"], PositiveInt(h, a + "block_count"));
  RS_ASSIGN_OR_RETURN(int64_t heads, PositiveInt(h, a + "attention.head_count"));
  j["num_attention_heads"] = heads;
  RS_ASSIGN_OR_RETURN(j["num_key_value_heads"],
                      PositiveInt(h, a + "attention.head_count_kv", heads));
  if (h.Find(a + "attention.key_length") != nullptr) {
    RS_ASSIGN_OR_RETURN(int64_t hd, PositiveInt(h, a + "attention.key_length"));
    RS_ASSIGN_OR_RETURN(int64_t vd, PositiveInt(h, a + "attention.value_length", hd));
    if (vd != hd) {
      return InvalidArgument(StrCat("gguf: ", a, "attention.value_length ", vd,
                                    " differs from key_length ", hd, " (not supported)"));
    }
    j["head_dim"] = hd;
  }
  RS_ASSIGN_OR_RETURN(j["max_position_embeddings"], PositiveInt(h, a + "context_length", 4096));
  RS_ASSIGN_OR_RETURN(j["rms_norm_eps"], FiniteFloat(h, a + "attention.layer_norm_rms_epsilon"));
  RS_ASSIGN_OR_RETURN(j["rope_theta"], FiniteFloat(h, a + "rope.freq_base", 10000.0));
  RS_RETURN_IF_ERROR(AddRopeScaling(h, arch, &j));
  const std::optional<int64_t> rows = EmbeddingRows(h);
  if (h.Find(a + "vocab_size") != nullptr || !rows) {
    RS_ASSIGN_OR_RETURN(j["vocab_size"], PositiveInt(h, a + "vocab_size"));
  } else {
    j["vocab_size"] = *rows;
  }
  j["tie_word_embeddings"] = h.FindTensor("output.weight") == nullptr;
  if (arch != "qwen2") j["attention_bias"] = h.FindTensor("blk.0.attn_q.bias") != nullptr;
  RS_RETURN_IF_ERROR(AddSpecialIds(h, &j));
  j["gguf_version"] = h.version;  // part of the fingerprint: a GGUF twin is another model file
  auto c = ParseModelConfig(j.dump());
  if (!c.ok()) return Annotate(c.status(), "gguf metadata");
  return c;
}

}  // namespace ragserve::engine
