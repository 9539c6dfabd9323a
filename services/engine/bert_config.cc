#include "services/engine/bert_config.h"

#include <cmath>
#include <exception>

#include "nlohmann/json.hpp"
#include "services/engine/config_json.h"

namespace ragserve::engine {
namespace {

using nlohmann::json;

std::string GetString(const json& j, const char* key, const std::string& def) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_string()) return def;
  return it->get<std::string>();
}

}  // namespace

StatusOr<BertConfig> ParseBertConfig(std::string_view json_text) {
  json j = json::parse(json_text.begin(), json_text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return InvalidArgument("config.json: not a JSON object");
  }
  try {
    const std::string type = GetString(j, "model_type", "bert");
    if (type != "bert") {
      return InvalidArgument(
          StrCat("config.json: model_type \"", type, "\" is not a BERT encoder (supported: bert)"));
    }
    const std::string act = GetString(j, "hidden_act", "gelu");
    if (act != "gelu") {
      return InvalidArgument(
          StrCat("config.json: hidden_act \"", act, "\" is not supported (supported: gelu)"));
    }
    const std::string pos = GetString(j, "position_embedding_type", "absolute");
    if (pos != "absolute") {
      return InvalidArgument(StrCat("config.json: position_embedding_type \"", pos,
                                    "\" is not supported (supported: absolute)"));
    }
    BertConfig c;
    RS_ASSIGN_OR_RETURN(c.vocab_size, GetConfigInt(j, "vocab_size", true, 0, 1, int64_t{1} << 24));
    RS_ASSIGN_OR_RETURN(c.hidden_size, GetConfigInt(j, "hidden_size", true, 0, 1, 16384));
    RS_ASSIGN_OR_RETURN(c.num_layers, GetConfigInt(j, "num_hidden_layers", true, 0, 1, 256));
    RS_ASSIGN_OR_RETURN(c.num_heads, GetConfigInt(j, "num_attention_heads", true, 0, 1, 1024));
    RS_ASSIGN_OR_RETURN(c.intermediate_size,
                        GetConfigInt(j, "intermediate_size", true, 0, 1, 131072));
    RS_ASSIGN_OR_RETURN(c.max_position_embeddings,
                        GetConfigInt(j, "max_position_embeddings", true, 0, 2, 65536));
    RS_ASSIGN_OR_RETURN(c.type_vocab_size, GetConfigInt(j, "type_vocab_size", false, 2, 1, 1024));
    if (c.hidden_size % c.num_heads != 0) {
      return InvalidArgument(StrCat("config.json: hidden_size ", c.hidden_size,
                                    " is not a multiple of num_attention_heads ", c.num_heads));
    }
    c.head_dim = c.hidden_size / c.num_heads;
    auto eps = j.find("layer_norm_eps");
    if (eps != j.end() && !eps->is_null()) {
      if (!eps->is_number() || !std::isfinite(eps->get<double>()) || eps->get<double>() <= 0 ||
          eps->get<double>() > 1) {
        return InvalidArgument(StrCat(
            "config.json: \"layer_norm_eps\" must be a number in (0, 1], got ", eps->dump()));
      }
      c.layer_norm_eps = eps->get<double>();
    }
    return c;
  } catch (const std::exception& e) {
    return InvalidArgument(StrCat("config.json: ", e.what()));
  }
}

StatusOr<Pooling> ParsePoolingName(std::string_view name) {
  if (name == "mean") return Pooling::kMean;
  if (name == "cls") return Pooling::kCls;
  return InvalidArgument(StrCat("pooling '", name, "' is not supported (supported: mean, cls)"));
}

StatusOr<Pooling> ParsePoolingConfig(std::string_view json_text) {
  json j = json::parse(json_text.begin(), json_text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return InvalidArgument("1_Pooling/config.json: not a JSON object");
  }
  auto flag = [&](const char* key) {
    auto it = j.find(key);
    return it != j.end() && it->is_boolean() && it->get<bool>();
  };
  const bool cls = flag("pooling_mode_cls_token"), mean = flag("pooling_mode_mean_tokens");
  for (const char* other : {"pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens",
                            "pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken"}) {
    if (flag(other)) {
      return InvalidArgument(StrCat("1_Pooling/config.json: ", other,
                                    " is not supported (supported: cls_token, mean_tokens)"));
    }
  }
  if (cls == mean) {
    return InvalidArgument(
        "1_Pooling/config.json: exactly one of pooling_mode_cls_token and "
        "pooling_mode_mean_tokens must be true");
  }
  return cls ? Pooling::kCls : Pooling::kMean;
}

}  // namespace ragserve::engine
