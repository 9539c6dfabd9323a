#include "services/engine/tokenizer_config.h"

#include <filesystem>
#include <fstream>
#include <sstream>
#include <utility>

#include <nlohmann/json.hpp>

namespace ragserve::engine {
namespace {

using Json = nlohmann::json;

// A special token field: a string, null/absent, or an AddedToken object with "content".
StatusOr<std::string> TokenString(const Json& doc, const char* field) {
  auto it = doc.find(field);
  if (it == doc.end() || it->is_null()) return std::string();
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object()) {
    auto c = it->find("content");
    if (c != it->end() && c->is_string()) return c->get<std::string>();
  }
  return InvalidArgument(StrCat("tokenizer_config.json: ", field,
                                " must be a string, null or an object with a string \"content\""));
}

// Reads a whole file; nullopt when it does not exist.
StatusOr<std::optional<std::string>> ReadIfExists(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return std::optional<std::string>();
  std::ifstream in(path, std::ios::binary);
  if (!in) return Internal(StrCat("cannot read ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return std::optional<std::string>(ss.str());
}

}  // namespace

StatusOr<TokenizerConfig> ParseTokenizerConfig(std::string_view json_text) {
  Json doc = Json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded() || !doc.is_object()) {
    return InvalidArgument("tokenizer_config.json: not a JSON object");
  }
  TokenizerConfig cfg;
  RS_ASSIGN_OR_RETURN(cfg.bos_token, TokenString(doc, "bos_token"));
  RS_ASSIGN_OR_RETURN(cfg.eos_token, TokenString(doc, "eos_token"));
  auto it = doc.find("chat_template");
  if (it == doc.end() || it->is_null()) return cfg;
  if (it->is_string()) {
    cfg.chat_template = it->get<std::string>();
    return cfg;
  }
  if (!it->is_array()) {
    return InvalidArgument(
        "tokenizer_config.json: chat_template must be a string or a list of {name, template}");
  }
  for (const Json& entry : *it) {
    auto name = entry.is_object() ? entry.find("name") : entry.end();
    auto tmpl = entry.is_object() ? entry.find("template") : entry.end();
    if (!entry.is_object() || name == entry.end() || !name->is_string() || tmpl == entry.end() ||
        !tmpl->is_string()) {
      return InvalidArgument(
          "tokenizer_config.json: each chat_template entry needs a string name and template");
    }
    cfg.named_chat_templates[name->get<std::string>()] = tmpl->get<std::string>();
  }
  auto def = cfg.named_chat_templates.find("default");
  if (def != cfg.named_chat_templates.end()) cfg.chat_template = def->second;
  return cfg;
}

StatusOr<TokenizerConfig> LoadTokenizerConfig(const std::string& model_dir) {
  RS_ASSIGN_OR_RETURN(std::optional<std::string> json_text,
                      ReadIfExists(model_dir + "/tokenizer_config.json"));
  RS_ASSIGN_OR_RETURN(std::optional<std::string> jinja,
                      ReadIfExists(model_dir + "/chat_template.jinja"));
  if (!json_text && !jinja) {
    return NotFound(StrCat(model_dir, ": no tokenizer_config.json or chat_template.jinja"));
  }
  TokenizerConfig cfg;
  if (json_text) {
    auto parsed = ParseTokenizerConfig(*json_text);
    if (!parsed.ok()) {
      return Status(parsed.status().code(), StrCat(model_dir, "/", parsed.status().message()));
    }
    cfg = std::move(parsed).value();
  }
  if (jinja) cfg.chat_template = std::move(*jinja);
  return cfg;
}

StatusOr<std::shared_ptr<const ChatTemplate>> LoadChatTemplate(const std::string& model_dir,
                                                               ChatTemplateLimits limits) {
  auto cfg = LoadTokenizerConfig(model_dir);
  if (!cfg.ok()) {
    if (cfg.status().code() == StatusCode::kNotFound) {
      return std::shared_ptr<const ChatTemplate>();
    }
    return cfg.status();
  }
  if (cfg->chat_template.empty()) return std::shared_ptr<const ChatTemplate>();
  auto t = ChatTemplate::Create(cfg->chat_template, cfg->bos_token, cfg->eos_token, limits);
  if (!t.ok()) {
    return Status(t.status().code(), StrCat(model_dir, ": chat_template: ", t.status().message()));
  }
  return std::shared_ptr<const ChatTemplate>(std::move(t).value());
}

StatusOr<std::shared_ptr<const ChatTemplate>> GgufChatTemplate(const GgufHeader& h) {
  RS_ASSIGN_OR_RETURN(std::string source, h.GetString("tokenizer.chat_template", ""));
  if (source.empty()) return std::shared_ptr<const ChatTemplate>();
  RS_ASSIGN_OR_RETURN(const GgufValue* tokens,
                      h.GetArray("tokenizer.ggml.tokens", GgufValueType::kString));
  auto spelling = [&](const char* key) -> StatusOr<std::string> {
    if (tokens == nullptr || h.Find(key) == nullptr) return std::string();
    RS_ASSIGN_OR_RETURN(int64_t id, h.GetInt(key));
    if (id < 0 || static_cast<uint64_t>(id) >= tokens->count) {
      return InvalidArgument(StrCat("gguf: ", key, " ", id, " is not a token"));
    }
    return std::string(tokens->strings[id]);
  };
  RS_ASSIGN_OR_RETURN(std::string bos, spelling("tokenizer.ggml.bos_token_id"));
  RS_ASSIGN_OR_RETURN(std::string eos, spelling("tokenizer.ggml.eos_token_id"));
  auto t = ChatTemplate::Create(source, bos, eos);
  if (!t.ok()) return Annotate(t.status(), "gguf: tokenizer.chat_template");
  return std::shared_ptr<const ChatTemplate>(std::move(t).value());
}

}  // namespace ragserve::engine
