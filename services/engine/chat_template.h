// Hugging Face chat templates (the `chat_template` of tokenizer_config.json) rendered in C++.
//
// A template is the Jinja2 subset real chat templates use, rendered the way transformers'
// apply_chat_template does (ImmutableSandboxedEnvironment with trim_blocks and lstrip_blocks, a
// `raise_exception` global, a `tojson` filter that is json.dumps(ensure_ascii=False)), so the
// output is byte-for-byte what Python jinja2 produces (tests/engine/chat_template_jinja2_test.py
// checks that on real templates).
//
// Supported: {{ }}, {% %}, {# #}, whitespace control (- and +); for (tuple targets, inline `if`,
// else, loop.index/index0/revindex/revindex0/first/last/length/previtem/nextitem/cycle),
// break/continue, if/elif/else, set (also `ns.attr`, tuple targets and {% set x %}..{% endset %}),
// namespace(), range(), dict(), raise_exception(), strftime_now(); literals (strings with Python
// escapes, numbers, true/false/none, lists, dicts, tuples); operators and/or/not, in/not in,
// == != < <= > >=, + - * / // % **, ~, unary -, ternary `a if c else b`; subscripts and slices,
// attribute access; filters abs, capitalize, count, d/default, first, float, int, items, join,
// last, length, list, lower, map, reject, rejectattr, replace, safe, select, selectattr, string,
// title, tojson, trim, upper; tests boolean, callable, defined, divisibleby, eq/equalto/==, even,
// false, float, ge/>=, gt/>, in, integer, iterable, le/<=, lt/<, mapping, ne/!=, none, number,
// odd, sequence, string, true, undefined; string methods capitalize, count, endswith, find, join,
// lower, lstrip, replace, rsplit, rstrip, split, startswith, strip, title, upper; dict methods
// get, items, keys, values.
// Anything else (macro, call, filter blocks, include/extends, raw, an unknown filter or test, a
// method not listed) is InvalidArgument naming the construct and its line and column, at
// Create() when the parser can see it, else at Render(). Case mapping (upper, lower, title,
// capitalize) of non-ASCII text is refused rather than done differently from Python.
//
// Values are JSON (nlohmann::ordered_json: Python dicts keep insertion order, which tojson and
// items() show). They print like Python's str(): None, True, False, 1.0, ['a', 1], {'k': 'v'},
// (1, 2); one known difference: a tuple inside a list (dict.items() printed whole) prints as a
// list. Columns in error messages count characters.
//
// Abuse limits (ChatTemplateLimits): template size, block/expression nesting, total loop
// iterations per render and the size of any string made (output included); exceeding one is an
// InvalidArgument that says which limit, never a crash.
//
// Thread-safety: a ChatTemplate is immutable after Create; Render may run concurrently.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "services/common/status.h"

namespace ragserve::engine {

struct ChatTemplateLimits {
  int64_t max_template_bytes = int64_t{1} << 20;   // template source
  int max_nesting = 100;                           // blocks inside blocks, expression depth
  int64_t max_loop_iterations = int64_t{1} << 20;  // all for-loop iterations of one render
  int64_t max_output_bytes = int64_t{64} << 20;    // the output and any string made on the way
};

struct ChatTemplateProgram;  // the parsed template (internal)

class ChatTemplate {
 public:
  // Parses `source`. bos_token / eos_token are the strings the template sees as bos_token and
  // eos_token. InvalidArgument "chat template line L, column C: ..." for a syntax error or an
  // unsupported construct; InvalidArgument when the source exceeds limits.max_template_bytes.
  static StatusOr<std::unique_ptr<ChatTemplate>> Create(std::string_view source,
                                                        std::string bos_token,
                                                        std::string eos_token,
                                                        ChatTemplateLimits limits = {});
  ~ChatTemplate();

  // Renders `messages` (a JSON array of {"role": ..., "content": ...} objects; content may be any
  // JSON). The template also sees add_generation_prompt, bos_token, eos_token, tools = none and
  // documents = none (as transformers passes them), then every key of `extra` (an object; it may
  // override bos_token, eos_token, tools and documents). InvalidArgument when messages is not an
  // array, extra is not an object or names messages / add_generation_prompt, the template calls
  // raise_exception(msg) (message "chat template raised: " + msg), an operation fails (undefined
  // attribute, type mismatch; with line and column) or a limit is exceeded.
  StatusOr<std::string> Render(
      const nlohmann::ordered_json& messages, bool add_generation_prompt,
      const nlohmann::ordered_json& extra = nlohmann::ordered_json::object()) const;

  const std::string& source() const { return source_; }
  const std::string& bos_token() const { return bos_token_; }
  const std::string& eos_token() const { return eos_token_; }

 private:
  ChatTemplate() = default;
  std::string source_;
  std::string bos_token_;
  std::string eos_token_;
  ChatTemplateLimits limits_;
  std::unique_ptr<const ChatTemplateProgram> program_;
};

// The prefix of the error message Render returns when the template calls raise_exception.
inline constexpr std::string_view kChatTemplateRaisedPrefix = "chat template raised: ";

}  // namespace ragserve::engine
