#include "services/engine/config.h"

#include <cmath>
#include <fstream>
#include <sstream>

#include "nlohmann/json.hpp"
#include "services/engine/config_json.h"

namespace ragserve::engine {
namespace {

using nlohmann::json;

StatusOr<double> GetNum(const json& j, const char* key, double def) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return def;
  if (!it->is_number()) {
    return InvalidArgument(StrCat("config.json: \"", key, "\" must be a number, got ", it->dump()));
  }
  const double v = it->get<double>();
  if (!std::isfinite(v)) return InvalidArgument(StrCat("config.json: \"", key, "\" is not finite"));
  return v;
}

StatusOr<bool> GetBool(const json& j, const char* key, bool def) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return def;
  if (!it->is_boolean()) {
    return InvalidArgument(
        StrCat("config.json: \"", key, "\" must be a boolean, got ", it->dump()));
  }
  return it->get<bool>();
}

StatusOr<ModelConfig> ParseJson(const json& j) {
  if (!j.is_object()) return InvalidArgument("config.json: top level is not an object");
  ModelConfig c;
  auto mt = j.find("model_type");
  if (mt == j.end() || !mt->is_string()) {
    return InvalidArgument("config.json: missing string \"model_type\"");
  }
  c.model_type = mt->get<std::string>();
  if (c.model_type != "llama" && c.model_type != "mistral" && c.model_type != "qwen2") {
    return InvalidArgument(StrCat("config.json: unsupported model_type \"", c.model_type,
                                  "\" (supported: llama, mistral, qwen2)"));
  }
  auto act = j.find("hidden_act");
  if (act != j.end() && !(act->is_string() && act->get<std::string>() == "silu")) {
    return InvalidArgument(
        StrCat("config.json: unsupported hidden_act ", act->dump(), " (only silu)"));
  }
  RS_ASSIGN_OR_RETURN(c.vocab_size, GetConfigInt(j, "vocab_size", true, 0, 1, 1 << 24));
  RS_ASSIGN_OR_RETURN(c.hidden_size, GetConfigInt(j, "hidden_size", true, 0, 1, 1 << 20));
  RS_ASSIGN_OR_RETURN(c.intermediate_size,
                      GetConfigInt(j, "intermediate_size", true, 0, 1, 1 << 22));
  RS_ASSIGN_OR_RETURN(c.num_layers, GetConfigInt(j, "num_hidden_layers", true, 0, 1, 4096));
  RS_ASSIGN_OR_RETURN(c.num_heads, GetConfigInt(j, "num_attention_heads", true, 0, 1, 4096));
  RS_ASSIGN_OR_RETURN(c.num_kv_heads,
                      GetConfigInt(j, "num_key_value_heads", false, c.num_heads, 1, 4096));
  if (c.num_heads % c.num_kv_heads != 0) {
    return InvalidArgument(StrCat("config.json: num_attention_heads ", c.num_heads,
                                  " is not a multiple of num_key_value_heads ", c.num_kv_heads));
  }
  const int default_hd = c.hidden_size / c.num_heads;
  RS_ASSIGN_OR_RETURN(c.head_dim, GetConfigInt(j, "head_dim", false, default_hd, 2, 4096));
  if (c.head_dim < 2 || c.head_dim % 2 != 0) {
    return InvalidArgument(StrCat("config.json: head_dim must be even and >= 2, got ", c.head_dim,
                                  " (hidden_size ", c.hidden_size, " / heads ", c.num_heads, ")"));
  }
  RS_ASSIGN_OR_RETURN(c.max_position_embeddings,
                      GetConfigInt(j, "max_position_embeddings", false, 4096, 1));
  RS_ASSIGN_OR_RETURN(double eps, GetNum(j, "rms_norm_eps", 1e-6));
  if (eps <= 0) return InvalidArgument(StrCat("config.json: rms_norm_eps must be > 0, got ", eps));
  c.rms_norm_eps = static_cast<float>(eps);
  RS_ASSIGN_OR_RETURN(c.rope_theta, GetNum(j, "rope_theta", 10000.0));
  if (c.rope_theta <= 1.0) {
    return InvalidArgument(StrCat("config.json: rope_theta must be > 1, got ", c.rope_theta));
  }
  RS_ASSIGN_OR_RETURN(c.tie_word_embeddings, GetBool(j, "tie_word_embeddings", false));
  if (c.model_type == "qwen2") {
    c.qkv_bias = true;
  } else {
    RS_ASSIGN_OR_RETURN(bool ab, GetBool(j, "attention_bias", false));
    c.qkv_bias = c.o_bias = ab;
  }
  if (c.model_type == "mistral") {
    RS_ASSIGN_OR_RETURN(c.sliding_window, GetConfigInt(j, "sliding_window", false, 0, 0));
  }
  auto rs = j.find("rope_scaling");
  if (rs != j.end() && !rs->is_null()) {
    if (!rs->is_object()) return InvalidArgument("config.json: rope_scaling must be an object");
    std::string type;
    for (const char* key : {"rope_type", "type"}) {
      auto t = rs->find(key);
      if (t != rs->end() && t->is_string()) {
        type = t->get<std::string>();
        break;
      }
    }
    RS_ASSIGN_OR_RETURN(c.rope_factor, GetNum(*rs, "factor", 1.0));
    if (c.rope_factor <= 0) {
      return InvalidArgument(
          StrCat("config.json: rope_scaling.factor must be > 0, got ", c.rope_factor));
    }
    if (type == "linear") {
      c.rope_scaling = RopeScaling::kLinear;
    } else if (type == "llama3") {
      c.rope_scaling = RopeScaling::kLlama3;
      RS_ASSIGN_OR_RETURN(c.rope_low_freq_factor, GetNum(*rs, "low_freq_factor", 1.0));
      RS_ASSIGN_OR_RETURN(c.rope_high_freq_factor, GetNum(*rs, "high_freq_factor", 4.0));
      RS_ASSIGN_OR_RETURN(c.rope_original_max_position,
                          GetConfigInt(*rs, "original_max_position_embeddings", false, 8192, 1));
      if (c.rope_high_freq_factor <= c.rope_low_freq_factor) {
        return InvalidArgument(StrCat("config.json: rope_scaling high_freq_factor ",
                                      c.rope_high_freq_factor, " must exceed low_freq_factor ",
                                      c.rope_low_freq_factor));
      }
    } else if (type == "default" || type.empty()) {
      c.rope_scaling = RopeScaling::kNone;
    } else {
      return InvalidArgument(StrCat("config.json: unsupported rope_scaling type \"", type,
                                    "\" (supported: linear, llama3)"));
    }
  }
  auto bos = j.find("bos_token_id");
  if (bos != j.end() && bos->is_number_integer()) c.bos_token_id = bos->get<int32_t>();
  auto eos = j.find("eos_token_id");
  if (eos != j.end()) {
    if (eos->is_number_integer()) {
      c.eos_token_ids.push_back(eos->get<int32_t>());
    } else if (eos->is_array()) {
      for (const auto& e : *eos) {
        if (!e.is_number_integer()) {
          return InvalidArgument(
              StrCat("config.json: eos_token_id entry ", e.dump(), " is not an integer"));
        }
        c.eos_token_ids.push_back(e.get<int32_t>());
      }
    }
  }
  c.canonical_json = j.dump();  // nlohmann objects are key-sorted: a canonical form
  return c;
}

}  // namespace

std::vector<float> ModelConfig::RopeInvFreq() const {
  const int half = head_dim / 2;
  std::vector<float> out(static_cast<size_t>(half));
  constexpr double kPi = 3.14159265358979323846;
  for (int i = 0; i < half; ++i) {
    double f = 1.0 / std::pow(rope_theta, (2.0 * i) / head_dim);
    if (rope_scaling == RopeScaling::kLinear) {
      f /= rope_factor;
    } else if (rope_scaling == RopeScaling::kLlama3) {
      const double low_wavelen = rope_original_max_position / rope_low_freq_factor;
      const double high_wavelen = rope_original_max_position / rope_high_freq_factor;
      const double wavelen = 2.0 * kPi / f;
      if (wavelen > low_wavelen) {
        f /= rope_factor;
      } else if (wavelen >= high_wavelen) {
        const double smooth = (rope_original_max_position / wavelen - rope_low_freq_factor) /
                              (rope_high_freq_factor - rope_low_freq_factor);
        f = (1.0 - smooth) * f / rope_factor + smooth * f;
      }
    }
    if (static_cast<size_t>(i) < rope_freq_factors.size()) f /= rope_freq_factors[i];
    out[i] = static_cast<float>(f);
  }
  return out;
}

StatusOr<ModelConfig> ParseModelConfig(const std::string& json_text) {
  json j = json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return InvalidArgument("config.json: not valid JSON");
  return ParseJson(j);
}

StatusOr<ModelConfig> LoadModelConfig(const std::string& model_dir) {
  const std::string path = model_dir + "/config.json";
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFound(StrCat("cannot open ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ParseModelConfig(ss.str());
}

}  // namespace ragserve::engine
