// tokenizer_config.json / chat_template.jinja loading (services/engine/tokenizer_config.h).
#include "services/engine/tokenizer_config.h"

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "gtest/gtest.h"
#include "tests/support/process.h"

namespace ragserve::engine {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::ordered_json;

using ragserve::testing::ReadFileOrEmpty;
using ragserve::testing::SourceDir;

void WriteFile(const fs::path& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

class ModelDir {
 public:
  ModelDir() {
    path_ = fs::temp_directory_path() /
            ("ragserve_tokcfg_" + std::to_string(::getpid()) + "_" + std::to_string(counter_++));
    fs::create_directories(path_);
  }
  ~ModelDir() { fs::remove_all(path_); }
  std::string str() const { return path_.string(); }
  fs::path operator/(const char* name) const { return path_ / name; }

 private:
  static inline int counter_ = 0;
  fs::path path_;
};

TEST(TokenizerConfigTest, ReadsTheRealConfigsOfTheVerifiedModels) {
  const std::string dir = SourceDir() + "/tests/engine/chat_templates/";
  auto llama = ParseTokenizerConfig(ReadFileOrEmpty(dir + "llama3-instruct.json"));
  ASSERT_TRUE(llama.ok()) << llama.status().ToString();
  EXPECT_EQ(llama->bos_token, "<|begin_of_text|>");
  EXPECT_EQ(llama->eos_token, "<|eot_id|>");
  EXPECT_EQ(llama->chat_template.rfind("{% set loop_messages = messages %}", 0), 0u);
  EXPECT_TRUE(llama->named_chat_templates.empty());

  auto qwen = ParseTokenizerConfig(ReadFileOrEmpty(dir + "qwen2.5-instruct.json"));
  ASSERT_TRUE(qwen.ok()) << qwen.status().ToString();
  EXPECT_EQ(qwen->bos_token, "");  // null in Qwen's config
  EXPECT_EQ(qwen->eos_token, "<|im_end|>");
  EXPECT_NE(qwen->chat_template.find("<|im_start|>"), std::string::npos);
}

TEST(TokenizerConfigTest, AcceptsAddedTokenObjectsAndNamedTemplates) {
  auto cfg = ParseTokenizerConfig(R"({
    "bos_token": {"__type": "AddedToken", "content": "<s>", "lstrip": false},
    "eos_token": {"content": "</s>"},
    "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}],
    "model_max_length": 4096})");
  ASSERT_TRUE(cfg.ok()) << cfg.status().ToString();
  EXPECT_EQ(cfg->bos_token, "<s>");
  EXPECT_EQ(cfg->eos_token, "</s>");
  EXPECT_EQ(cfg->chat_template, "D");
  EXPECT_EQ(cfg->named_chat_templates.at("tool_use"), "T");

  auto none = ParseTokenizerConfig(R"({"tokenizer_class": "LlamaTokenizer"})");
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(none->chat_template, "");
}

TEST(TokenizerConfigTest, MalformedFieldsAreNamed) {
  for (const char* doc : {"[1]", "not json", R"({"chat_template": 3})",
                          R"({"chat_template": [{"name": "default"}]})", R"({"bos_token": 1})"}) {
    auto cfg = ParseTokenizerConfig(doc);
    ASSERT_FALSE(cfg.ok()) << doc;
    EXPECT_EQ(cfg.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(cfg.status().message().find("tokenizer_config.json"), std::string::npos);
  }
  EXPECT_NE(ParseTokenizerConfig(R"({"bos_token": 1})").status().message().find("bos_token"),
            std::string::npos);
}

TEST(TokenizerConfigTest, LoadChatTemplateFromAModelDirectory) {
  {
    ModelDir empty;  // no tokenizer_config.json: the model has no template
    auto t = LoadChatTemplate(empty.str());
    ASSERT_TRUE(t.ok()) << t.status().ToString();
    EXPECT_EQ(*t, nullptr);
    EXPECT_EQ(LoadTokenizerConfig(empty.str()).status().code(), StatusCode::kNotFound);
  }
  {
    ModelDir no_template;
    WriteFile(no_template / "tokenizer_config.json", R"({"bos_token": "<s>"})");
    auto t = LoadChatTemplate(no_template.str());
    ASSERT_TRUE(t.ok());
    EXPECT_EQ(*t, nullptr);
  }
  {
    ModelDir mistral;
    fs::copy_file(SourceDir() + "/tests/engine/chat_templates/mistral-7b-instruct-v0.2.json",
                  mistral / "tokenizer_config.json");
    auto t = LoadChatTemplate(mistral.str());
    ASSERT_TRUE(t.ok()) << t.status().ToString();
    ASSERT_NE(*t, nullptr);
    EXPECT_EQ((*t)->bos_token(), "<s>");
    EXPECT_EQ((*t)->eos_token(), "</s>");
    Json conv = Json::array(
        {{{"role", "user"}, {"content", "Hi"}}, {{"role", "assistant"}, {"content", "Yo"}}});
    EXPECT_EQ((*t)->Render(conv, true).value(), "<s>[INST] Hi [/INST]Yo</s>");

    // chat_template.jinja beside it wins, with the config's tokens.
    WriteFile(mistral / "chat_template.jinja", "{{ bos_token }}J{{ messages | length }}\n");
    auto j = LoadChatTemplate(mistral.str());
    ASSERT_TRUE(j.ok()) << j.status().ToString();
    EXPECT_EQ((*j)->Render(conv, true).value(), "<s>J2");
  }
  {
    ModelDir bad;
    WriteFile(bad / "tokenizer_config.json",
              R"({"chat_template": "{% macro m() %}{% endmacro %}"})");
    auto t = LoadChatTemplate(bad.str());
    ASSERT_FALSE(t.ok());
    EXPECT_EQ(t.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(t.status().message().find(bad.str()), std::string::npos);
    EXPECT_NE(t.status().message().find("unsupported tag 'macro'"), std::string::npos)
        << t.status().message();
  }
  {
    ModelDir garbage;
    WriteFile(garbage / "tokenizer_config.json", "{oops");
    auto t = LoadChatTemplate(garbage.str());
    ASSERT_FALSE(t.ok());
    EXPECT_EQ(t.status().code(), StatusCode::kInvalidArgument);
  }
}

}  // namespace
}  // namespace ragserve::engine
