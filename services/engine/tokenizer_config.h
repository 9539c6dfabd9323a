// The chat-formatting part of a Hugging Face model directory.
//
// tokenizer_config.json carries `chat_template` (a string, or a list of {"name", "template"}
// objects whose "default" entry is the template used) and `bos_token` / `eos_token` (a string,
// null, or an AddedToken object {"content": ...}). Newer transformers save the template as
// chat_template.jinja beside it instead; that file, when present, takes precedence (as in
// transformers). Every other field is ignored.
//
// How to: the decoder (or an HTTP layer) formats a conversation with the model's own template:
//   StatusOr<std::shared_ptr<const ChatTemplate>> t = LoadChatTemplate(model_dir);
//   if (t.ok() && *t) prompt = (*t)->Render(messages, /*add_generation_prompt=*/true);
// A null template means the model has none (keep the prompt format it was trained on).
#pragma once

#include <map>
#include <memory>
#include <string>
#include <string_view>

#include "services/common/status.h"
#include "services/engine/chat_template.h"
#include "services/engine/gguf.h"

namespace ragserve::engine {

struct TokenizerConfig {
  std::string bos_token;      // "" when absent or null
  std::string eos_token;      // "" when absent or null
  std::string chat_template;  // the default template; "" when the model has none
  // Every template of the list form by name ("default", "tool_use", "rag", ...); empty for the
  // string form.
  std::map<std::string, std::string> named_chat_templates;
};

// Parses tokenizer_config.json text. InvalidArgument naming the field when the document is not a
// JSON object or chat_template / bos_token / eos_token has an unexpected type.
StatusOr<TokenizerConfig> ParseTokenizerConfig(std::string_view json_text);

// Reads <model_dir>/tokenizer_config.json and <model_dir>/chat_template.jinja (either may be
// missing; the .jinja file overrides chat_template). NotFound when both are missing.
StatusOr<TokenizerConfig> LoadTokenizerConfig(const std::string& model_dir);

// The model's default chat template compiled with its bos/eos token strings; nullptr when the
// directory has no tokenizer_config.json or chat_template.jinja, or they define no template.
// InvalidArgument (with the file name) when a file is malformed or the template uses a construct
// outside the supported subset.
StatusOr<std::shared_ptr<const ChatTemplate>> LoadChatTemplate(const std::string& model_dir,
                                                               ChatTemplateLimits limits = {});

// The chat template a GGUF file carries (tokenizer.chat_template) compiled with the spellings of
// its bos/eos tokens (tokenizer.ggml.bos_token_id / eos_token_id); nullptr when it has none.
// InvalidArgument for a template the renderer does not accept.
StatusOr<std::shared_ptr<const ChatTemplate>> GgufChatTemplate(const GgufHeader& h);

}  // namespace ragserve::engine
