// ChatTemplate (services/engine/chat_template.h): the Jinja subset, its errors and its limits.
// Byte-for-byte agreement with python3-jinja2 on real model templates is checked by
// chat_template_jinja2_test.py (ctest engine_chat_template_jinja2); these tests pin facts that
// need no oracle: known renderings, the clear errors for unsupported constructs and the abuse
// limits.
#include "services/engine/chat_template.h"

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "tests/support/process.h"

namespace ragserve::engine {
namespace {

using Json = nlohmann::ordered_json;

using ragserve::testing::SourceDir;

Json Msgs(std::initializer_list<std::pair<const char*, const char*>> turns) {
  Json m = Json::array();
  for (const auto& [role, content] : turns) m.push_back({{"role", role}, {"content", content}});
  return m;
}

// Renders `tmpl` with the default two-turn conversation; returns the output or "ERROR: msg".
std::string R(const std::string& tmpl,
              const Json& messages = Msgs({{"user", "Hi"}, {"assistant", "Hello"}}),
              bool agp = false, const Json& extra = Json::object()) {
  auto t = ChatTemplate::Create(tmpl, "<s>", "</s>");
  if (!t.ok()) return "ERROR: " + t.status().message();
  auto out = (*t)->Render(messages, agp, extra);
  if (!out.ok()) return "ERROR: " + out.status().message();
  return *out;
}

Json RealConfig(const std::string& name) {
  std::ifstream in(SourceDir() + "/tests/engine/chat_templates/" + name + ".json");
  std::stringstream ss;
  ss << in.rdbuf();
  return Json::parse(ss.str());
}

std::string RenderReal(const std::string& name, const Json& messages, bool agp) {
  Json cfg = RealConfig(name);
  auto t =
      ChatTemplate::Create(cfg["chat_template"].get<std::string>(),
                           cfg["bos_token"].is_string() ? cfg["bos_token"].get<std::string>() : "",
                           cfg["eos_token"].get<std::string>());
  if (!t.ok()) return "ERROR: " + t.status().message();
  auto out = (*t)->Render(messages, agp);
  return out.ok() ? *out : "ERROR: " + out.status().message();
}

TEST(ChatTemplateTest, ChatMlRendersTurnsAndGenerationPrompt) {
  const std::string chatml =
      "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
      "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
      "{{ '<|im_start|>assistant\\n' }}{% endif %}";
  EXPECT_EQ(R(chatml, Msgs({{"user", "Hi"}}), true),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(R(chatml, Msgs({{"user", "Hi"}}), false), "<|im_start|>user\nHi<|im_end|>\n");
}

// Expected strings as published for these models' templates (transformers' apply_chat_template
// on user "Hello", assistant "Hi there", user "Who are you", assistant "   I am an assistant   ",
// user "Another question", add_generation_prompt=True).
TEST(ChatTemplateTest, RealTemplatesGivePublishedRenderings) {
  const Json conv = Msgs({{"user", "Hello"},
                          {"assistant", "Hi there"},
                          {"user", "Who are you"},
                          {"assistant", "   I am an assistant   "},
                          {"user", "Another question"}});
  EXPECT_EQ(RenderReal("mistral-7b-instruct-v0.2", conv, true),
            "<s>[INST] Hello [/INST]Hi there</s>[INST] Who are you [/INST]   I am an assistant   "
            "</s>[INST] Another question [/INST]");
  EXPECT_EQ(RenderReal("gemma-7b-it", conv, true),
            "<bos><start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\nHi "
            "there<end_of_turn>\n<start_of_turn>user\nWho are you<end_of_turn>\n<start_of_turn>"
            "model\nI am an assistant<end_of_turn>\n<start_of_turn>user\nAnother "
            "question<end_of_turn>\n<start_of_turn>model\n");
  EXPECT_EQ(RenderReal("llama3-instruct", Msgs({{"system", "S"}, {"user", " Q "}}), true),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nQ<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

TEST(ChatTemplateTest, MistralRaisesOnBrokenAlternation) {
  auto out = RenderReal("mistral-7b-instruct-v0.2", Msgs({{"user", "a"}, {"user", "b"}}), true);
  EXPECT_EQ(out,
            "ERROR: chat template raised: Conversation roles must alternate "
            "user/assistant/user/assistant/...");
}

TEST(ChatTemplateTest, WhitespaceControlFollowsTrimAndLstripBlocks) {
  EXPECT_EQ(R("{% if true %}\nyes\n{% endif %}\nafter"), "yes\nafter");
  EXPECT_EQ(R("a\n    {% if true %}\n    b\n    {% endif %}\nc"), "a\n    b\nc");
  EXPECT_EQ(R("a  {%- if true -%}  b  {%- endif -%}  c"), "abc");
  EXPECT_EQ(R("  {{ 'v' }}  "), "  v  ");  // lstrip_blocks leaves {{ }} alone
  EXPECT_EQ(R("x\n  {%+ if true %}k{% endif %}"), "x\n  k");
  EXPECT_EQ(R("a {# c #}\nb"), "a b");
  EXPECT_EQ(R("text\n"), "text");  // one trailing newline dropped
}

TEST(ChatTemplateTest, ValuesPrintLikePython) {
  EXPECT_EQ(R("{{ none }} {{ true }} {{ 1.0 }} {{ 1e16 }} {{ 2.5e-7 }} {{ [1, 'a', none] }}"),
            "None True 1.0 1e+16 2.5e-07 [1, 'a', None]");
  EXPECT_EQ(R("{{ {'k': \"it's\"} }} {{ (1,) }} {{ undefined_thing }}|"), "{'k': \"it's\"} (1,) |");
}

TEST(ChatTemplateTest, LoopVariablesAndScoping) {
  EXPECT_EQ(R("{% for m in messages %}{{ loop.index }}{{ loop.first }}{{ loop.last }}"
              "{{ loop.length }};{% endfor %}"),
            "1TrueFalse2;2FalseTrue2;");
  EXPECT_EQ(
      R("{% set x = 1 %}{% for m in messages %}{% set x = x + 1 %}{{ x }}{% endfor %}{{ x }}"),
      "221");
  EXPECT_EQ(R("{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}"
              "{% endfor %}{{ ns.n }}"),
            "2");
  EXPECT_EQ(R("{% for i in range(9) %}{% if i > 2 %}{% break %}{% endif %}{{ i }}{% endfor %}"),
            "012");
}

TEST(ChatTemplateTest, FiltersTestsAndMethods) {
  EXPECT_EQ(R("{{ '  a  ' | trim }}|{{ messages | length }}|{{ 'x' | upper }}"), "a|2|X");
  EXPECT_EQ(R("{{ {'b': 1, 'a': 'é'} | tojson }}|{{ [1] | tojson(indent=2) }}"),
            "{\"b\": 1, \"a\": \"é\"}|[\n  1\n]");
  EXPECT_EQ(R("{{ messages | selectattr('role', 'equalto', 'user') | map(attribute='content') "
              "| join(',') }}"),
            "Hi");
  EXPECT_EQ(R("{{ x is defined }} {{ none is none }} {{ {} is mapping }} {{ 'a' is string }}"),
            "False True True True");
  EXPECT_EQ(R("{{ ' a '.strip() }}{{ 'ab'.startswith('a') }}{{ 'a b'.split() }}{{ 'x'.title() }}"),
            "aTrue['a', 'b']X");
}

TEST(ChatTemplateTest, ExtraVariablesAndTokens) {
  EXPECT_EQ(R("{{ bos_token }}{{ eos_token }}{{ tools }}{{ date }}", Msgs({}), false,
              Json{{"date", "26 Jul 2024"}}),
            "<s></s>None26 Jul 2024");
  EXPECT_EQ(R("{{ bos_token }}", Msgs({}), false, Json{{"bos_token", "<B>"}}), "<B>");
  auto t = ChatTemplate::Create("x", "", "");
  ASSERT_TRUE(t.ok());
  EXPECT_EQ((*t)->Render(Json::object(), false).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ((*t)->Render(Json::array(), false, Json{{"messages", 1}}).status().code(),
            StatusCode::kInvalidArgument);
}

// Unsupported constructs fail at Create with their name and position, never render wrongly.
TEST(ChatTemplateTest, UnsupportedConstructsAreClearErrorsWithPosition) {
  auto macro = ChatTemplate::Create("line one\n   {% macro f(x) %}{{ x }}{% endmacro %}", "", "");
  ASSERT_FALSE(macro.ok());
  EXPECT_EQ(macro.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(macro.status().message().find("unsupported tag 'macro'"), std::string::npos)
      << macro.status().message();
  EXPECT_NE(macro.status().message().find("line 2, column 7"), std::string::npos)
      << macro.status().message();

  auto filter = ChatTemplate::Create("{{ messages | wordcount }}", "", "");
  ASSERT_FALSE(filter.ok());
  EXPECT_NE(filter.status().message().find("unknown filter 'wordcount'"), std::string::npos);
  EXPECT_NE(filter.status().message().find("line 1, column 15"), std::string::npos)
      << filter.status().message();

  auto test = ChatTemplate::Create("{% if x is sameas y %}{% endif %}", "", "");
  ASSERT_FALSE(test.ok());
  EXPECT_NE(test.status().message().find("unknown test 'sameas'"), std::string::npos);

  for (const char* tag : {"include", "extends", "call", "filter", "raw", "with", "import"}) {
    auto s = ChatTemplate::Create(std::string("{% ") + tag + " x %}", "", "");
    ASSERT_FALSE(s.ok()) << tag;
    EXPECT_NE(s.status().message().find(std::string("unsupported tag '") + tag + "'"),
              std::string::npos)
        << s.status().message();
  }

  // A method outside the subset is found at render time, still with its position.
  EXPECT_EQ(R("{{ 'a{}'.format(1) }}"),
            "ERROR: chat template line 1, column 10: unsupported method 'str.format'");
  // Case mapping of non-ASCII text is refused rather than done differently from Python.
  EXPECT_EQ(R("{{ 'é' | upper }}"),
            "ERROR: chat template line 1, column 10: unsupported: upper "
            "of non-ASCII text");
}

TEST(ChatTemplateTest, SyntaxErrorsNamePosition) {
  for (const char* bad : {"{% for x in y %}", "{% if %}{% endif %}", "{{ 'unterminated }}",
                          "{{ (1 }}", "{% endif %}", "{{ 1 +* 2 }}", "{# open", "{{ a b }}"}) {
    auto t = ChatTemplate::Create(bad, "", "");
    ASSERT_FALSE(t.ok()) << bad;
    EXPECT_EQ(t.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(t.status().message().find("chat template line 1, column "), std::string::npos)
        << t.status().message();
  }
}

TEST(ChatTemplateTest, LimitsAreErrorsNotCrashes) {
  ChatTemplateLimits small;
  small.max_output_bytes = 1000;
  small.max_loop_iterations = 50;
  small.max_nesting = 20;
  small.max_template_bytes = 4000;

  auto many = ChatTemplate::Create("{% for i in range(100) %}{{ i }}{% endfor %}", "", "", small);
  ASSERT_TRUE(many.ok());
  auto r1 = (*many)->Render(Json::array(), false);
  ASSERT_FALSE(r1.ok());
  EXPECT_NE(r1.status().message().find("loop iterations"), std::string::npos)
      << r1.status().message();

  auto doubling = ChatTemplate::Create(
      "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}"
      "{% endfor %}{{ ns.s }}",
      "", "", small);
  ASSERT_TRUE(doubling.ok());
  auto r2 = (*doubling)->Render(Json::array(), false);
  ASSERT_FALSE(r2.ok());
  EXPECT_NE(r2.status().message().find("exceeds the limit of 1000 bytes"), std::string::npos)
      << r2.status().message();

  auto big_out =
      ChatTemplate::Create("{% for i in range(20) %}{{ 'x' * 100 }}{% endfor %}", "", "", small);
  ASSERT_TRUE(big_out.ok());
  auto r3 = (*big_out)->Render(Json::array(), false);
  ASSERT_FALSE(r3.ok());
  EXPECT_NE(r3.status().message().find("exceeds the limit of 1000 bytes"), std::string::npos);
  EXPECT_FALSE(ChatTemplate::Create(std::string(5000, 'x'), "", "", small).ok());
  // Deep nesting of every kind: parentheses, blocks, left-deep chains, `not`.
  std::string parens = "{{ " + std::string(500, '(') + "1" + std::string(500, ')') + " }}";
  std::string blocks;
  for (int i = 0; i < 500; ++i) blocks += "{% if true %}";
  for (int i = 0; i < 500; ++i) blocks += "{% endif %}";
  std::string chain = "{{ 1";
  for (int i = 0; i < 100000; ++i) chain += "+1";
  chain += " }}";
  std::string attrs = "{{ x" + [] {
    std::string s;
    for (int i = 0; i < 100000; ++i) s += ".a";
    return s;
  }() + " }}";
  std::string nots = "{{ " + [] {
    std::string s;
    for (int i = 0; i < 100000; ++i) s += "not ";
    return s;
  }() + "1 }}";
  for (const std::string* src : {&parens, &blocks, &chain, &attrs, &nots}) {
    auto t = ChatTemplate::Create(*src, "", "");
    ASSERT_FALSE(t.ok()) << src->substr(0, 40);
    EXPECT_NE(t.status().message().find("deeper than the limit"), std::string::npos)
        << t.status().message();
  }

  // A deeply nested message value is refused before anything walks it recursively.
  Json deep = "leaf";
  for (int i = 0; i < 100000; ++i) {
    Json outer = Json::array();
    outer.push_back(std::move(deep));
    deep = std::move(outer);
  }
  Json msgs = Json::array();
  msgs.push_back(Json{{"role", "user"}});
  msgs[0]["content"] = std::move(deep);
  EXPECT_NE(R("{{ messages[0].content | tojson }}", msgs).find("nest deeper than"),
            std::string::npos);
  Json ok_depth = "leaf";
  for (int i = 0; i < 100; ++i) ok_depth = Json::array({ok_depth});
  EXPECT_EQ(R("{{ messages[0].content | tojson | length }}",
              Json::array({Json{{"role", "user"}, {"content", ok_depth}}})),
            "206");
  EXPECT_NE(R("{{ range(1000000) | length }}").find("range too big"), std::string::npos);
  EXPECT_NE(R("{% set ns = namespace(x=1) %}{% for i in range(5000) %}{% set ns.x = [ns.x] %}"
              "{% endfor %}{{ ns.x }}")
                .find("would nest deeper than 256 levels"),
            std::string::npos);
}

TEST(ChatTemplateTest, RenderIsSafeToCallConcurrently) {
  Json cfg = RealConfig("qwen2.5-instruct");
  auto t = ChatTemplate::Create(cfg["chat_template"].get<std::string>(), "", "<|im_end|>");
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  const Json conv = Msgs({{"system", "S"}, {"user", "U"}});
  const std::string want = *(*t)->Render(conv, true);
  std::vector<std::thread> threads;
  std::vector<int> ok(4, 0);
  for (int k = 0; k < 4; ++k) {
    threads.emplace_back([&, k] {
      for (int i = 0; i < 200; ++i) ok[k] += (*t)->Render(conv, true).value() == want;
    });
  }
  for (auto& th : threads) th.join();
  for (int k = 0; k < 4; ++k) EXPECT_EQ(ok[k], 200);
}

}  // namespace
}  // namespace ragserve::engine
